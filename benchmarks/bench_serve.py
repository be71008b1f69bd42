"""`sdvg serve` on the built-in world, measured over real loopback sockets:

1. bytes per block on the wire for each frame format (raw RGB, JPEG, WebP);
2. one session streaming until stopped: process RSS after 10 blocks vs after --long blocks (flat memory);
3. --sessions concurrent sessions x --blocks blocks: time-to-block p50 / p95, and no block lost or reordered;
4. --screenshot PATH: the page in headless Chromium (Debian's chromium + playwright) after a short stream.

    python benchmarks/bench_serve.py [--long 120] [--sessions 4] [--blocks 20] [--screenshot docs/serve.png]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import socket
import threading
import time

import torch


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_server(models, max_sessions: int):
    import uvicorn

    from sdvg.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(models, max_sessions=max_sessions), host="127.0.0.1", port=port,
                                        log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    return srv, f"127.0.0.1:{port}"


async def session(addr: str, prompt: str, seed: int, blocks: int | None, on_block=None, stop_after: int | None = None):
    import websockets

    from sdvg.serve import unpack_block

    got = []
    async with websockets.connect(f"ws://{addr}/ws", max_size=2**26) as ws:
        json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "start", "prompt": prompt, "seed": seed, "num_blocks": blocks}))
        while True:
            m = await ws.recv()
            if isinstance(m, bytes):
                h, _ = unpack_block(m)
                got.append(h)
                if on_block:
                    on_block(h)
                if stop_after and len(got) == stop_after:
                    await ws.send(json.dumps({"type": "stop"}))
            elif json.loads(m)["type"] in ("done", "stopped", "error"):
                return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--long", type=int, default=120)
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--screenshot", default=None)
    a = ap.parse_args()
    if a.screenshot and not shutil.which("chromium"):  # before minutes of measuring, not after
        ap.error("--screenshot drives Debian's chromium, and none is on PATH: install it (apt install chromium) or "
                 "leave out --screenshot to measure only")

    from sdvg.loading import load_world_models
    from sdvg.serve import encode_frames
    from sdvg.world.measure import STRIP_PROMPT

    models = load_world_models()
    out = models.pipeline()(STRIP_PROMPT, seed=0)
    block = out.frames[9:21]
    print("bytes per 12-frame block (64x64):",
          {fmt: sum(map(len, encode_frames(block, fmt))) for fmt in ("raw", "jpeg", "webp")})

    srv, addr = start_server(models, max_sessions=max(a.sessions, 1))
    marks = {}
    asyncio.run(session(addr, STRIP_PROMPT, 0, None, on_block=lambda h: marks.setdefault(h["index"], rss_mb()),
                        stop_after=a.long))
    print(f"one session until stopped: RSS after block 10 {marks[10]:.0f} MB, after block {a.long - 1} "
          f"{marks[a.long - 1]:.0f} MB ({marks[a.long - 1] - marks[10]:+.0f} MB over {a.long - 11} blocks)")

    async def load():
        return await asyncio.gather(*(session(addr, f"{STRIP_PROMPT}", i, a.blocks) for i in range(a.sessions)))

    t0 = time.perf_counter()
    runs = asyncio.run(load())
    wall = time.perf_counter() - t0
    ok = all([h["index"] for h in r] == list(range(a.blocks)) for r in runs)
    ttb = sorted(h["ttb_ms"] for r in runs for h in r)
    print(f"{a.sessions} sessions x {a.blocks} blocks in {wall:.1f}s ({a.sessions * a.blocks / wall:.1f} blocks/s): "
          f"time-to-block p50 {ttb[len(ttb) // 2]:.0f} ms, p95 {ttb[int(0.95 * len(ttb))]:.0f} ms; "
          f"all blocks in order: {ok}; torch threads {torch.get_num_threads()}")

    if a.screenshot:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = b.new_page(viewport={"width": 1000, "height": 560})
            page.goto(f"http://{addr}/")
            page.fill("#blocks", "18")
            page.click("#start")
            page.wait_for_function("document.getElementById('status').textContent === 'done'", timeout=60000)
            time.sleep(0.5)
            page.screenshot(path=a.screenshot)
            b.close()
        print(f"screenshot: {a.screenshot}")
    srv.should_exit = True


if __name__ == "__main__":
    main()
