"""Peak memory of long videos on the built-in world: 9 (the trained length), 50 and 200 blocks side by side.

Each length runs in its own process (peak RSS is per process). The KV caches hold at most 27 latent frames (they
roll past that, `CacheConfig.max_frames`), so the generation state is flat in the length; `stream()` hands each
block out and keeps nothing, while `__call__` returns the whole video, whose frames grow with the length.

    python benchmarks/bench_long_video.py                 # 9, 50, 200 blocks
    python benchmarks/bench_long_video.py --blocks 9 50   # a quicker look
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(blocks: int, how: str) -> dict:
    import torch

    from sdvg.loading import load_world_models

    torch.set_num_threads(1)
    models = load_world_models(num_blocks=blocks)
    pipe = models.pipeline(tau=models.default_tau, seed=0)
    prompt = models.prompts[0]
    base = _rss_mb()
    peak, t0 = base, time.perf_counter()
    if how == "stream":
        for _ in pipe.stream(prompt, seed=0):  # frames handed out and dropped, as a server or a writer would
            peak = max(peak, _rss_mb())
    else:
        out = pipe(prompt, seed=0)
        peak = max(peak, _rss_mb())
        del out
    kv = sum(m.kv.nbytes for m in (pipe.drafter, pipe.target) if m is not None and m.kv is not None)
    return dict(blocks=blocks, how=how, seconds=round(time.perf_counter() - t0, 1), rss_after_load_mb=round(base),
                peak_rss_mb=round(peak), growth_mb=round(peak - base, 1), kv_cache_mb=round(kv / 2**20, 2),
                ru_maxrss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[9, 50, 200])
    ap.add_argument("--how", choices=("stream", "call"), nargs="+", default=["stream", "call"])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(int(a.child[0]), a.child[1])))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = []
    for how in a.how:
        for n in a.blocks:
            r = subprocess.run([sys.executable, __file__, "--child", str(n), how], capture_output=True, text=True,
                               env=env, check=True)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    print("| blocks | API | KV caches (MB) | RSS after load (MB) | peak RSS (MB) | growth during the video (MB) | s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['blocks']} | {r['how']} | {r['kv_cache_mb']} | {r['rss_after_load_mb']} | {r['peak_rss_mb']} "
              f"| {r['growth_mb']} | {r['seconds']} |")


if __name__ == "__main__":
    main()
