"""Time one `sdvg generate` with the embedded world (SDVG mode, 9 blocks) on the CPU; target: < 60 s on 2 cores.

    python benchmarks/bench_generate_world.py [--threads 2] [--prompt "..."] [--mode sdvg]

Prints load time, generate wall time, the block trace and the evaluator's quality.
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", default="a small red triangle moving left on a white background")
    p.add_argument("--mode", default="sdvg", choices=("sdvg", "target", "draft"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=float, default=60.0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from sdvg.loading import load_world_models

    t0 = time.perf_counter()
    models = load_world_models()
    t_load = time.perf_counter() - t0
    pipe = models.pipeline()
    t0 = time.perf_counter()
    out = pipe(args.prompt, mode=args.mode, seed=args.seed)
    t_gen = time.perf_counter() - t0
    q = models.evaluator.evaluate(out.frames, args.prompt)["quality"]
    print(f"world load {t_load:.2f}s; generate ({args.mode}, {models.video.num_blocks} blocks, "
          f"{out.frames.shape[0]} frames {models.video.width}x{models.video.height}) {t_gen:.2f}s "
          f"with {torch.get_num_threads()} threads; evaluator quality {q:.3f}")
    print(out.trace.summary())
    status = "OK" if t_gen < args.limit else "SLOW"
    print(f"{status}: {t_gen:.2f}s vs limit {args.limit:.0f}s")


if __name__ == "__main__":
    main()
