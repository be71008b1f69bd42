"""`sdvg serve`: the protocol with real clients (the ASGI test client, and websockets over loopback), robustness,
a bounded load test, and the page in headless Chromium (Playwright)."""
from __future__ import annotations

import asyncio
import json
import math
import shutil
import socket
import threading
import time

import pytest
import torch

from sdvg.loading import load_tiny_models
from sdvg.serve import create_app, encode_frames, unpack_block

starlette = pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def models():
    return load_tiny_models(seed=0, num_blocks=3)


def blocks(ws, n: int) -> list[tuple[dict, list[bytes]]]:
    """The next n block messages (text messages in between are returned as headers with their type)."""
    out = []
    while len(out) < n:
        msg = ws.receive()
        if msg.get("bytes") is not None:
            out.append(unpack_block(msg["bytes"]))
        else:
            m = json.loads(msg["text"])
            assert m["type"] in ("ack", "started"), m
    return out


def test_stream_equals_the_pipeline_bit_for_bit(models):
    """With the raw format, the frames on the wire are the pipeline's own frames (as bytes) and decisions."""
    ref = models.pipeline(tau=0.001, seed=4)(PROMPT, seed=4)
    with TestClient(create_app(models, fmt="raw")) as c, c.websocket_connect("/ws") as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["height"] == 32
        ws.send_text(json.dumps({"type": "start", "prompt": PROMPT, "seed": 4, "tau": 0.001, "num_blocks": 3}))
        assert ws.receive_json()["type"] == "started"
        got = blocks(ws, 3)
        assert ws.receive_json() == {"type": "done", "blocks": 3, "stopped": False}
    assert [h["index"] for h, _ in got] == [0, 1, 2]
    assert [h["decision"] for h, _ in got] == ["forced"] + ["accepted" if b.accepted else "rejected"
                                                           for b in ref.trace.blocks[1:]]
    wire = torch.cat([torch.frombuffer(bytearray(f), dtype=torch.uint8).view(32, 32, 3).permute(2, 0, 1)[None]
                      for _, fs in got for f in fs])
    assert torch.equal(wire, (ref.frames.clamp(0, 1) * 255).round().byte())
    h = got[1][0]
    assert {"draft", "decode", "score"} <= set(h["ms"]) and h["ttb_ms"] > 0 and h["prompt"] == PROMPT


def test_prompt_switch_tau_and_stop_live(models):
    with TestClient(create_app(models)) as c, c.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(json.dumps({"type": "start", "prompt": PROMPT, "tau": -1e9}))  # until stopped
        first = blocks(ws, 2)
        ws.send_text(json.dumps({"type": "prompt", "prompt": "a blue square", "blend_blocks": 1,
                                 "interp": "slerp"}))
        ws.send_text(json.dumps({"type": "tau", "tau": 1e9}))
        later = blocks(ws, 8)
        ws.send_text(json.dumps({"type": "stop"}))
        while (m := ws.receive()).get("text") is None or json.loads(m["text"])["type"] != "stopped":
            pass
        assert c.get("/healthz").json()["sessions"] == 1
    seen = first + later
    assert [h["index"] for h, _ in seen] == list(range(10))  # none lost, none reordered
    assert seen[-1][0]["prompt"] == "a blue square" and seen[-1][0]["decision"] == "rejected"
    assert seen[1][0]["decision"] == "accepted"
    assert all(len(fs) == (9 if h["index"] == 0 else 12) and fs[0][:2] == b"\xff\xd8" for h, fs in seen)  # JPEG


@pytest.mark.parametrize("message, error", [
    ("not json", "Expecting value"),
    ('{"type": "dance"}', "unknown message type"),
    ('[1, 2]', "JSON object"),
    ('{"type": "start", "prompt": ""}', "empty prompt"),
    ('{"type": "start", "prompt": "x", "colour": 1}', "unknown fields"),
    ('{"type": "start", "prompt": "x", "num_blocks": 0}', "num_blocks"),
    ('{"type": "start", "prompt": "x", "mode": "fast"}', "unknown mode"),
    ('{"type": "prompt", "prompt": "x"}', "send start first"),
    ("x" * 20000, "at most"),
])
def test_bad_messages_get_an_error_reply_and_the_socket_stays_usable(models, message, error):
    with TestClient(create_app(models)) as c, c.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_text(message)
        m = ws.receive_json()
        assert m["type"] == "error" and error in m["error"]
        ws.send_text(json.dumps({"type": "start", "prompt": PROMPT, "num_blocks": 1}))
        assert ws.receive_json()["type"] == "started" and len(blocks(ws, 1)) == 1


def test_busy_beyond_max_sessions_and_a_disconnect_frees_its_session(models):
    with TestClient(create_app(models, max_sessions=1)) as c:
        with c.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_text(json.dumps({"type": "start", "prompt": PROMPT}))  # until stopped
            blocks(ws, 1)
            with c.websocket_connect("/ws") as other:
                m = other.receive_json()
                assert m["type"] == "error" and m["error"].startswith("busy")
        # the first client left mid-stream: its session is gone, a new one is served
        for _ in range(50):
            if c.get("/healthz").json()["sessions"] == 0:
                break
            time.sleep(0.05)
        assert c.get("/healthz").json()["sessions"] == 0
        with c.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_text(json.dumps({"type": "start", "prompt": PROMPT, "num_blocks": 2}))
            assert len(blocks(ws, 2)) == 2
        text = c.get("/metrics").text
        assert 'sdvg_blocks_total{decision="forced"}' in text and "sdvg_busy_total 1" in text
        assert 'sdvg_time_to_block_seconds_bucket{le="+Inf"}' in text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(models):
    """A real uvicorn server on loopback, in a thread."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(models, max_sessions=4), host="127.0.0.1", port=port,
                                        log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    srv.should_exit = True
    th.join(5)


def test_load_four_sessions_over_loopback(server):
    """4 concurrent sessions x 20 blocks through real sockets: every block arrives, in order; p50/p95 reported."""
    import websockets

    async def one(i: int) -> list[tuple[int, float]]:
        async with websockets.connect(f"ws://{server}/ws", max_size=2**24) as ws:
            json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "start", "prompt": f"{PROMPT} {i}", "seed": i, "num_blocks": 20}))
            got = []
            while True:
                m = await ws.recv()
                if isinstance(m, bytes):
                    h, _ = unpack_block(m)
                    got.append((h["index"], h["ttb_ms"]))
                elif json.loads(m)["type"] == "done":
                    return got

    async def main():
        return await asyncio.gather(*(one(i) for i in range(4)))

    runs = asyncio.run(main())
    for got in runs:
        assert [i for i, _ in got] == list(range(20))
    ttb = sorted(t for got in runs for _, t in got)
    p50, p95 = ttb[len(ttb) // 2], ttb[int(0.95 * len(ttb))]
    print(f"\n4 sessions x 20 blocks: time-to-block p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    assert p95 >= p50 > 0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_page_in_headless_chromium(server, tmp_path):
    """Start a stream on the page, see A/R tiles appear, switch the prompt, stop; a screenshot is kept."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"http://{server}/")
        page.fill("#prompt", PROMPT)
        page.fill("#blocks", "")
        page.click("#start")
        page.wait_for_function("document.querySelectorAll('#tiles .tile').length >= 4", timeout=30000)
        page.fill("#prompt", "a blue square moving up")
        page.click("#switch")
        page.wait_for_function("document.querySelectorAll('#tiles .tile').length >= 8", timeout=30000)
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent === 'stopped'", timeout=30000)
        classes = page.eval_on_selector_all("#tiles .tile", "ts => ts.map(t => t.className)")
        assert classes[0] == "tile F" and set(classes[1:]) <= {"tile A", "tile R"}
        assert page.text_content("#log") == ""  # no block arrived out of order
        assert page.text_content("#nblocks") == str(len(classes))
        page.screenshot(path=str(tmp_path / "serve.png"))
        browser.close()


def test_frame_formats_sizes():
    f = torch.rand(2, 3, 64, 64)
    raw, jpeg, webp = (encode_frames(f, fmt) for fmt in ("raw", "jpeg", "webp"))
    assert len(raw[0]) == 64 * 64 * 3 and jpeg[0][:2] == b"\xff\xd8" and webp[0][:4] == b"RIFF"
    assert not math.isnan(sum(map(len, jpeg)))


def test_a_client_that_stops_reading_does_not_stall_the_others(server):
    import websockets

    async def main():
        async with websockets.connect(f"ws://{server}/ws", max_size=2**24) as slow:
            json.loads(await slow.recv())
            await slow.send(json.dumps({"type": "start", "prompt": PROMPT, "seed": 1}))  # then never reads again
            async with websockets.connect(f"ws://{server}/ws", max_size=2**24) as fast:
                json.loads(await fast.recv())
                await fast.send(json.dumps({"type": "start", "prompt": PROMPT, "seed": 2, "num_blocks": 12}))
                n = 0
                while True:
                    m = await asyncio.wait_for(fast.recv(), timeout=30)
                    if isinstance(m, bytes):
                        n += 1
                    elif json.loads(m)["type"] == "done":
                        return n

    assert asyncio.run(main()) == 12
