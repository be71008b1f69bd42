"""Engine costs measured side by side in one run (ratios, not wall-clock asserts).

1. lazy vs eager target commits: SDVG videos with identical routing, target forwards and wall time;
2. the VAE decode-cache snapshot: bytes a snapshot holds new (O(1)) vs a deep copy of the cache;
3. streaming decode (a block per call, sdvg.vae.fast_modules) vs diffusers' own frame-by-frame decode;
4. cascade vs full min-threshold routing: frames scored and decisions.

    python benchmarks/bench_engine.py            # the built-in world
    python benchmarks/bench_engine.py --models tiny
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from sdvg.loading import load_tiny_models, load_world_models
from sdvg.routers import CascadeRouter, ThresholdRouter


def _bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(_bytes(o) for o in obj)
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", choices=("world", "tiny"), default="world")
    ap.add_argument("--videos", type=int, default=3)
    args = ap.parse_args()
    m = load_world_models() if args.models == "world" else load_tiny_models(num_blocks=9)
    prompts = list(m.prompts)[: args.videos] or ["a red circle"]

    print("== 1. lazy vs eager target commits (same routing: random 0.7, seeded)")
    pipes = {lazy: m.pipeline(router="random", accept_rate=0.7, seed=0, lazy_commit=lazy) for lazy in (True, False)}
    rows = {lazy: [0.0, 0, []] for lazy in pipes}
    for lazy, pipe in pipes.items():
        pipe(prompts[0], seed=0)  # warm-up
    for i, p in enumerate(prompts):  # interleaved, so machine noise hits both alike
        for lazy, pipe in pipes.items():
            out = pipe(p, seed=i)
            rows[lazy][0] += out.trace.wall_s
            rows[lazy][1] += out.trace.target_forwards
            rows[lazy][2].append(out.frames)
    (tl, fl, al), (te, fe, ae) = rows[True], rows[False]
    same = all(torch.equal(a, b) for a, b in zip(al, ae))
    print(f"lazy : {tl:.2f}s  target forwards {fl}\neager: {te:.2f}s  target forwards {fe}\n"
          f"ratio: {te / tl:.2f}x time, {fe / max(fl, 1):.2f}x target forwards; videos bit-identical: {same}")

    print("== 2. decode-cache snapshot (O(1): shares the cached tensors)")
    dec = m.decoder
    dec.reset()
    out = m.pipeline()(prompts[0], mode="draft", seed=0)
    dec.reset()
    dec.decode(out.latents[:, :, :3])
    snap = dec.snapshot()
    t0 = time.perf_counter()
    deep = copy.deepcopy(snap.cache)
    t_deep = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(1000):
        dec.snapshot()
    t_snap = (time.perf_counter() - t0) / 1000
    print(f"cache tensors {_bytes(snap.cache) / 2**20:.2f} MiB; snapshot copies 0 B in {t_snap * 1e6:.1f} us, "
          f"deep copy {_bytes(deep) / 2**20:.2f} MiB in {t_deep * 1e3:.2f} ms ({t_deep / t_snap:.0f}x slower)")

    print("== 3. streaming decode vs diffusers' AutoencoderKLWan.decode (same latents, same weights)")
    plain = copy.deepcopy(dec.vae)
    for mod in plain.modules():  # undo fast_modules: back to diffusers' own classes
        if type(mod).__module__ == "sdvg.vae":
            mod.__class__ = type(mod).__mro__[1]
    z = out.latents.float() * dec._std + dec._mean
    best = {"sdvg": float("inf"), "diffusers": float("inf")}
    for _ in range(3):  # interleaved, best of 3
        t0 = time.perf_counter()
        dec.reset()
        ours = torch.cat([dec.decode(out.latents[:, :, 3 * b:3 * b + 3]) for b in range(m.video.num_blocks)])
        best["sdvg"] = min(best["sdvg"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            ref = plain.decode(z).sample
        best["diffusers"] = min(best["diffusers"], time.perf_counter() - t0)
    ref = (ref.clamp(-1, 1)[0].permute(1, 0, 2, 3) + 1) / 2
    print(f"sdvg {best['sdvg'] * 1e3:.0f} ms, diffusers {best['diffusers'] * 1e3:.0f} ms per video "
          f"({best['diffusers'] / best['sdvg']:.1f}x); max difference {(ours - ref).abs().max().item():.1e}")

    print("== 4. cascade vs full min-threshold routing")
    if m.scorer is None:
        print("no scorer in this model set")
        return
    dec.reset()
    frames = [dec.decode(out.latents[:, :, 3 * b:3 * b + 3]) for b in range(m.video.num_blocks)]
    s = torch.cat([m.scorer.score(f, prompts[0]) for f in frames])
    taus = torch.quantile(s, torch.tensor([0.1, 0.3, 0.5])).tolist()
    for tau in taus:
        class Count:
            n = 0

            def score(self, f, p):
                Count.n += f.shape[0]
                return m.scorer.score(f, p)
        full = [ThresholdRouter(m.scorer, tau).decide(b, f, prompts[0]).accept for b, f in enumerate(frames)]
        casc = [CascadeRouter(Count(), tau).decide(b, f, prompts[0]).accept for b, f in enumerate(frames)]
        total = sum(f.shape[0] for f in frames)
        print(f"tau {tau:+.3f}: same decisions {full == casc}; frames scored {Count.n}/{total} "
              f"({total / max(Count.n, 1):.2f}x fewer)")


if __name__ == "__main__":
    main()
