"""A built-in-world bench run split by kind of prompt: one object or two.

Both of the world's models fail its two-object prompts (model card), and there the target is no better than the
drafter, so pooled figures mix two regimes. This reads a finished `sdvg bench --out OUT` on the world's prompts and
prints, for each kind, the bench's own summary (quality, retention, speed-up, accept rate against that kind's
target-only videos) and its paired SDVG-minus-baseline differences.

    python benchmarks/world_bench_by_kind.py OUT
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sdvg.bench import merge_results, paired, summarise
from sdvg.world.measure import KINDS, prompt_kind


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the --out folder of a finished `sdvg bench` on the world's prompts")
    a = ap.parse_args()
    found = any(a.out.glob("results*.jsonl"))  # merge_results writes a results.jsonl: only into a bench's folder
    rows = [r for r in merge_results(a.out) if r.get("quality") is not None] if found else []
    if not rows:
        ap.error(f"{a.out} holds no finished bench rows: run `sdvg bench --out {a.out}` first")
    for kind in KINDS:
        mine = [r for r in rows if prompt_kind(r["prompt"]) == kind]
        if not mine:
            continue
        videos = len({(r["prompt_index"], r["sample"]) for r in mine})
        print(f"== {kind} object{'s' if kind != 'one' else ''}: {videos} videos")
        for s in summarise(mine):
            ret = "–" if s["retention_pct"] is None else f"{s['retention_pct']:.1f}%"
            spd = "–" if s["speedup"] is None else f"{s['speedup']:.2f}x"
            acc = "" if s["accept_rate"] is None else f"  accept {s['accept_rate']:.2f}"
            print(f"  {s['run']:22s} quality {s['quality']:.3f}  retention {ret:>6s}  speed-up {spd:>6s}{acc}")
        for d in paired(mine):
            print(f"  SDVG - {d['baseline']} at tau {d['tau']:g}: {d['mean_diff']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                  f" ({d['videos']} videos)")


if __name__ == "__main__":
    main()
