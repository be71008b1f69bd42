"""Does the world's text encoder mark which object each word belongs to?

Two-object prompts need it: the target must put object 1 (the first one named) in its lane and object 2 in the other,
each with its own colour, shape, size and motion. UMT5 has relative positions only, so a word's object is readable
from its embedding only if the encoder learnt it. This fits a linear probe (logistic regression) per kind of word
(colour, shape, size, motion) on the encoder's outputs to tell object 1's words from object 2's, on random two-object
prompts, and prints its accuracy on prompts it did not fit (chance: 0.5). The model card quotes it.

    python benchmarks/world_text_binding.py [--text-encoder DIR] [--prompts 3000]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from sdvg.world.grammar import random_scene
from sdvg.world.text import ROLES, token_roles

KINDS = ("colour", "shape", "size", "motion")


def examples(encoder, prompts: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per kind: (embeddings [N, d] of the words of that kind, their object [N]: 0 or 1), the words' kinds and objects
    as the training probe reads them (`sdvg.world.text.token_roles`; motion: the whole motion phrase)."""
    emb, roles = encoder.encode(prompts), token_roles(prompts)
    out: dict[str, tuple[list, list]] = {k: ([], []) for k in KINDS}
    for i, j in (roles >= 0).nonzero().tolist():
        kind, _, obj = ROLES[roles[i, j]].partition(" ")
        if kind in KINDS and obj:
            out[kind][0].append(emb[i, j])
            out[kind][1].append(int(obj) - 1)
    return {k: (torch.stack(x), torch.tensor(y)) for k, (x, y) in out.items() if x}


def probe_accuracy(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   steps: int = 800) -> float:
    x, y = train
    mean, std = x.mean(0), x.std(0) + 1e-6
    lin = torch.nn.Linear(x.shape[1], 2)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(lin((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (lin((test[0] - mean) / std).argmax(1) == test[1]).float().mean().item()


def main() -> None:
    from sdvg.world import WEIGHTS_DIR
    from sdvg.world.text import WorldTextEncoder

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--text-encoder", type=Path, default=WEIGHTS_DIR / "text_encoder")
    ap.add_argument("--prompts", type=int, default=3000, help="two-object prompts to fit on (and a sixth as many to test)")
    ap.add_argument("--steps", type=int, default=800)
    a = ap.parse_args()
    torch.manual_seed(0)
    rng = random.Random(0)
    draw = lambda n: [random_scene(rng, None, p_two=1.0).prompt for _ in range(n)]  # noqa: E731
    enc = WorldTextEncoder.from_pretrained(a.text_encoder)
    train, test = examples(enc, draw(a.prompts)), examples(enc, draw(max(a.prompts // 6, 8)))
    print(f"linear probe: which object a word belongs to ({a.text_encoder}; chance 0.50)")
    for kind in KINDS:
        if kind in train and kind in test:
            print(f"  {kind:7s} {probe_accuracy(train[kind], test[kind], a.steps):.2f}  ({len(test[kind][1])} test words)")


if __name__ == "__main__":
    main()
