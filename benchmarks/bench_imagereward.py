"""Batched ImageReward scoring vs one image at a time (the PyPI package's loop), same model, one run.

    python benchmarks/bench_imagereward.py                     # mid-sized random model, CPU, < 1 min
    python benchmarks/bench_imagereward.py --preset full --device cuda --dtype bfloat16   # ImageReward v1.0 sizes

Random weights (the arithmetic, not the values, sets the speed). Both paths include the Pillow-exact preprocessing
of full-resolution frames; the one-by-one path is given the same prompt cache (tokenising per image would only
make it slower).
"""
from __future__ import annotations

import argparse
import time

import torch

from sdvg.scorers.imagereward import ImageRewardConfig, ImageRewardModel, ImageRewardScorer

PRESETS = {
    "mid": ImageRewardConfig(vision_width=256, vision_layers=4, vision_heads=4, hidden_size=256, text_layers=4,
                             text_heads=4, intermediate_size=1024, vocab_size=64),
    "full": ImageRewardConfig(vocab_size=64),  # v1.0 sizes; a tiny vocabulary is enough for a timing run
}


class _Tok:
    """A fixed-length stand-in tokenizer ([CLS] w1..wn [SEP] padding) so the benchmark needs no vocab file."""

    def __call__(self, prompt, padding, truncation, max_length, return_tensors):
        ids = [2] + [5 + (hash(w) % 50) for w in prompt.split()][: max_length - 2] + [3]
        mask = [1] * len(ids) + [0] * (max_length - len(ids))
        return {"input_ids": torch.tensor([ids + [0] * (max_length - len(ids))]), "attention_mask": torch.tensor([mask])}


def _time(fn, repeats: int, sync) -> float:
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="mid")
    ap.add_argument("--frames", type=int, default=12, help="frames per block (3 latent frames decode to 12)")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = PRESETS[a.preset]
    sc = ImageRewardScorer(ImageRewardModel(cfg), _Tok(), device=a.device, dtype=getattr(torch, a.dtype))
    frames = torch.rand(a.frames, 3, a.height, a.width, device=a.device)
    prompt = "a corgi running on a beach at sunset, cinematic"
    sync = torch.cuda.synchronize if sc.device.type == "cuda" else (lambda: None)
    sc.score(frames[:2], prompt)  # warm-up (and prompt cache)
    batched = sc.score(frames, prompt)
    single = torch.cat([sc.score(f[None], prompt) for f in frames])
    tb = _time(lambda: sc.score(frames, prompt), a.repeats, sync)
    tl = _time(lambda: [sc.score(f[None], prompt) for f in frames], a.repeats, sync)
    n_par = sum(p.numel() for p in sc.model.parameters())
    print(f"ImageReward {a.preset} ({n_par / 1e6:.1f} M params), {a.frames} frames {a.width}x{a.height}, "
          f"{a.device} {a.dtype}, threads={a.threads}, best of {a.repeats}")
    print(f"  batched (one forward)  : {a.frames / tb:8.2f} frames/s  ({tb * 1e3:.1f} ms per block)")
    print(f"  one image at a time    : {a.frames / tl:8.2f} frames/s  ({tl * 1e3:.1f} ms per block)")
    print(f"  speed-up batched/loop  : {tl / tb:.2f}x   max |batched - loop| = {(batched - single).abs().max():.2e}")


if __name__ == "__main__":
    main()
