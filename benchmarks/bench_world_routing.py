"""How much does routing matter in the built-in world? Critic vs oracle vs random, at matched accept rates.

For each router (the world critic at three taus of its sweep; an oracle that reads the evaluator's own quality of
each draft block, at three thresholds) every held-out prompt is generated with SDVG, then again with random routing
at the accept rate that router measured on that very video. Printed side by side: quality, accept rate, and the
router's gain over random. The oracle bounds what any scorer could gain in this world.

    python benchmarks/bench_world_routing.py [--prompts 16] [--threads 2]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from sdvg.routers import Decision, RandomRouter


class OracleRouter:
    """Accept a draft block when the world evaluator's quality of it reaches tau (ground truth, not a scorer)."""

    name = "oracle"

    def __init__(self, tau: float) -> None:
        self.tau = tau

    def reset(self, seed: int) -> None:
        pass

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        from sdvg.world.evaluator import evaluate_block

        q = evaluate_block(frames, prompt, block)["quality"]
        return Decision(q >= self.tau, q, self.tau)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from sdvg.loading import load_world_models
    from sdvg.world.measure import TAU_QUANTILES

    m = load_world_models()
    prompts = list(m.prompts)[: args.prompts]
    taus = [m.default_taus[TAU_QUANTILES.index(q)] for q in (0.3, 0.5, 0.7)]  # the critic's 30/50/70 % deciles
    routers = [(f"critic tau={t}", lambda t=t: m.pipeline(tau=t).router) for t in taus]
    routers += [(f"oracle q>={t}", lambda t=t: OracleRouter(t)) for t in (0.3, 0.4, 0.5)]
    pipe = m.pipeline()
    print(f"{len(prompts)} held-out prompts, one seed each; quality = world evaluator, mean over videos")
    print(f"{'router':>18} {'accept':>7} {'quality':>8} {'random':>8} {'gain':>7}")
    for name, make in routers:
        q, qr, acc = [], [], []
        for i, p in enumerate(prompts):
            pipe.router = make()
            out = pipe(p, mode="sdvg", seed=args.seed + i)
            a = out.trace.accept_rate
            q.append(m.evaluator.evaluate(out.frames, p)["quality"])
            acc.append(a)
            pipe.router = RandomRouter(a, seed=7)
            qr.append(m.evaluator.evaluate(pipe(p, mode="sdvg", seed=args.seed + i).frames, p)["quality"])
        gain = np.mean(q) / np.mean(qr) - 1
        print(f"{name:>18} {np.mean(acc):7.2f} {np.mean(q):8.4f} {np.mean(qr):8.4f} {gain:+7.1%}")


if __name__ == "__main__":
    main()
