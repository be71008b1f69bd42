"""Pipelined speculation on the built-in world: sequential vs overlapped SDVG, measured side by side in one run.

For each prompt (same seed), target-only, SDVG sequential and SDVG overlapped (`overlap=True`: the drafter drafts
block b+1 while block b's draft is decoded and scored on a second thread) run back to back, interleaved, so
machine noise hits all three alike. Printed: wall time ratios, and the speed-up the per-stage times allow (cost
model: drafting hidden behind decoding, scoring and regeneration: max(all drafting, all the rest)).

    python benchmarks/bench_overlap.py [--prompts 6] [--reps 3] [--threads 1] [--tau TAU]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def ideal_overlapped_ms(trace) -> float:
    """The overlapped loop's cost from the sequential trace's stage times, if drafting hid perfectly behind the
    rest: max(all drafting, all other work), where drafting can start only after block 0."""
    drafts = sum(b.ms.get("draft", 0.0) for b in trace.blocks)
    rest = sum(sum(v for k, v in b.ms.items() if k not in ("draft", "block")) for b in trace.blocks)
    first = trace.blocks[0].ms
    head = sum(v for k, v in first.items() if k not in ("draft", "block")) if trace.blocks[0].accepted is None else 0.0
    return head + max(drafts, rest - head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per torch call (2 cores: 1)")
    ap.add_argument("--tau", type=float, default=None, help="default: the world's default τ")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from sdvg.loading import load_world_models

    models = load_world_models()
    prompts = list(models.prompts)[: a.prompts]
    pipe = models.pipeline(tau=a.tau)
    pipe(prompts[0], seed=0)  # warm-up
    walls = {"target": [], "sequential": [], "overlapped": []}
    ideal, accept = [], []
    for r in range(a.reps):
        for i, p in enumerate(prompts):
            t0 = time.perf_counter()
            pipe(p, seed=i, mode="target")
            walls["target"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            seq = pipe(p, seed=i)
            walls["sequential"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ovl = pipe(p, seed=i, overlap=True)
            walls["overlapped"].append(time.perf_counter() - t0)
            assert torch.equal(seq.frames, ovl.frames), "overlap changed the video"
            if r == 0:
                ideal.append(ideal_overlapped_ms(seq.trace) / 1000)
                accept.append(seq.trace.accept_rate)
    t, s, o = (sum(walls[k]) / a.reps for k in ("target", "sequential", "overlapped"))
    print(f"built-in world, {len(prompts)} prompts x {a.reps} reps, tau {pipe.router.tau}, accept rate "
          f"{statistics.mean(accept):.2f}, {a.threads} intra-op thread(s), {torch.get_num_threads()} set")
    print(f"wall per video: target-only {1000 * t / len(prompts):.0f} ms, SDVG sequential {1000 * s / len(prompts):.0f} "
          f"ms, SDVG overlapped {1000 * o / len(prompts):.0f} ms")
    print(f"overlapped / sequential wall: {o / s:.2f}   (ideal from stage times: {sum(ideal) / s:.2f})")
    print(f"speed-up over target-only: sequential {t / s:.2f}x, overlapped {t / o:.2f}x, ideal overlapped "
          f"{t / sum(ideal):.2f}x; measured / ideal {(t / o) / (t / sum(ideal)):.2f}")


if __name__ == "__main__":
    main()
