"""What SDVG costs on a GPU at the real sizes, with random weights (speed does not depend on the values).

Builds the Wan2.1-1.3B drafter and the 14B target (Wan DiT shapes), the Wan2.1 VAE at 480x832 and ImageReward at
full size, then prints, side by side in one run:
  1. per-block ms of each stage (target 4 steps, its commit, drafter, decode, score) and peak memory;
  2. eager vs --compile (`sdvg.wan.compile_dit`: each block's cache-free parts, dynamic shapes: no recompile per block);
  3. SDVG with random routing (ImageReward still scores every draft) at accept rates 0.5 / 0.73 / 0.9, sequential vs overlapped (the drafter on its own
     CUDA stream), as speed-up over target-only, against the paper's 1.59x at 73% accepted;
  4. ImageReward frames/s, one batched call per block vs one frame per call.

    python benchmarks/gpu_costs.py                 # CUDA, bf16 (H100/H200-class: the 14B target needs ~30 GB)
    python benchmarks/gpu_costs.py --compile
    python benchmarks/gpu_costs.py --tiny          # CPU, tiny shapes, seconds: keeps the script from rotting (CI)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

PAPER_SPEEDUP, PAPER_ACCEPT = 1.59, 0.73


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(tiny: bool, device: torch.device, dtype: torch.dtype, num_blocks: int):
    from diffusers import AutoencoderKLWan

    from sdvg.config import VideoConfig, dit_preset
    from sdvg.loading import HashTextEncoder, ModelSet
    from sdvg.scorers.imagereward import ImageRewardConfig, ImageRewardModel, ImageRewardScorer, load_tokenizer
    from sdvg.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, StreamingDecoder
    from sdvg.wan import WanDiT

    torch.manual_seed(0)
    dits = []
    for name in (("tiny-drafter", "tiny") if tiny else ("wan2.1-1.3b", "wan2.1-14b")):
        with torch.device(device):
            m = WanDiT(dit_preset(name))
        dits.append(m.to(dtype).eval().requires_grad_(False))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if tiny:
        vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        stats = ([0.0] * 4, [1.0] * 4)
        video = VideoConfig(height=32, width=32, num_blocks=num_blocks)
        ir_cfg = ImageRewardConfig(image_size=32, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2,
                                   vocab_size=30524, hidden_size=16, text_layers=2, text_heads=2,
                                   intermediate_size=32, max_position_embeddings=40, embed_dim=8)
    else:
        vae = AutoencoderKLWan()  # the Wan2.1 VAE configuration
        stats = (list(WAN21_LATENTS_MEAN), list(WAN21_LATENTS_STD))
        video = VideoConfig(height=480, width=832, num_blocks=num_blocks)
        ir_cfg = ImageRewardConfig()
    vae = vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
    decoder = StreamingDecoder(vae, *stats)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "vocab.txt").write_text("\n".join(["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]",
                                   "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30522 - 104)]))
    with torch.device("meta"):
        ir = ImageRewardModel(ir_cfg)
    ir = ir.to_empty(device="cpu")
    for p in ir.parameters():
        torch.nn.init.normal_(p, std=0.02)
    ir.blip.text_encoder.embeddings.position_ids = torch.arange(ir_cfg.max_position_embeddings)[None]
    scorer = ImageRewardScorer(ir, load_tokenizer(tmp), device=device, dtype=dtype)
    cfg = dits[1].cfg
    models = ModelSet(drafter=dits[0], target=dits[1], decoder=decoder,
                      text_encoder=HashTextEncoder(cfg.text_len, cfg.text_dim), scorer=scorer, evaluator=None,
                      video=video, name="random", device=device, aux_device=device, dtype=dtype)
    return models


class ScoredRandom:
    """Random routing at a fixed accept rate that still pays for ImageReward on every draft (as SDVG does)."""

    def __init__(self, router, scorer) -> None:
        self.router, self.scorer, self.name = router, scorer, "random+scored"

    def reset(self, seed: int) -> None:
        self.router.reset(seed)

    def decide(self, block: int, frames: torch.Tensor, prompt: str):
        self.scorer.score(frames, prompt)
        return self.router.decide(block, frames, prompt)


def stage_ms(trace, key: str) -> float:
    vals = [b.ms[key] for b in trace.blocks[1:] if key in b.ms]
    return statistics.mean(vals) if vals else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (seconds)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd DiT blocks")
    ap.add_argument("--blocks", type=int, default=9)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not a.tiny else "cpu"))
    from sdvg.loading import parse_dtype

    dtype = parse_dtype(a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.perf_counter()
    models = build(a.tiny, device, dtype, a.blocks)
    print(f"built {'tiny' if a.tiny else 'Wan2.1-1.3B + 14B, Wan VAE 480x832, ImageReward'} on {device} "
          f"({str(dtype).removeprefix('torch.')}) in {time.perf_counter() - t0:.0f}s")
    prompt = "a red fox running through snow"

    def run(mode="sdvg", rate=0.73, overlap=False):
        pipe = models.pipeline(router="random", accept_rate=rate, seed=1)
        pipe.router = ScoredRandom(pipe.router, models.scorer)
        sync(device)
        t = time.perf_counter()
        out = pipe(prompt, mode=mode, seed=0, overlap=overlap)
        sync(device)
        return time.perf_counter() - t, out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run("target")  # warm-up (kernels, allocator)
    run("sdvg", 0.5)
    walls = {}
    for rep in range(a.reps):
        walls.setdefault("target", []).append(run("target")[0])
    tgt_wall = min(walls["target"])
    _, tgt = run("target")
    _, sd = run("sdvg", 0.5)
    print("\n1. per block (ms, blocks 1..):")
    print(f"   target 4 steps {stage_ms(tgt.trace, 'target'):.1f} + commit {stage_ms(tgt.trace, 'commit'):.1f}; "
          f"drafter {stage_ms(sd.trace, 'draft'):.1f}; decode {stage_ms(tgt.trace, 'decode'):.1f}; "
          f"ImageReward {stage_ms(sd.trace, 'score'):.1f}")
    t_block = stage_ms(tgt.trace, "target") + stage_ms(tgt.trace, "commit")
    judge = stage_ms(tgt.trace, "decode") + stage_ms(sd.trace, "score")
    print(f"   target / (decode + score) {t_block / max(judge, 1e-9):.1f}x; drafter / target "
          f"{stage_ms(sd.trace, 'draft') / max(t_block, 1e-9):.2f}")
    if device.type == "cuda":
        print(f"   peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")

    if a.compile:
        eager = t_block
        from sdvg.wan import compile_dit

        for m in (models.drafter, models.target):
            compile_dit(m)
        t = time.perf_counter()
        run("target")
        first = time.perf_counter() - t
        _, ctgt = run("target")
        comp = stage_ms(ctgt.trace, "target") + stage_ms(ctgt.trace, "commit")
        print(f"\n2. compile: target block eager {eager:.1f} ms, compiled {comp:.1f} ms ({eager / comp:.2f}x); "
              f"first compiled video {first:.1f}s")
        _, tgt = run("target")
        tgt_wall = min(run("target")[0] for _ in range(a.reps))
    else:
        print("\n2. compile: not timed (pass --compile)")

    print(f"\n3. SDVG, random routing, speed-up over target-only ({tgt_wall:.2f}s per {a.blocks}-block video):")
    for rate in (0.5, PAPER_ACCEPT, 0.9):
        seq = min(run("sdvg", rate)[0] for _ in range(a.reps))
        ovl = min(run("sdvg", rate, overlap=True)[0] for _ in range(a.reps))
        print(f"   accept {rate:.2f}: sequential {tgt_wall / seq:.2f}x, overlapped {tgt_wall / ovl:.2f}x"
              + (f"   (paper: {PAPER_SPEEDUP}x at {PAPER_ACCEPT:.0%} accepted, 2 GPUs)" if rate == PAPER_ACCEPT else ""))

    frames = tgt.frames[9:21].to(device)
    sc = models.scorer
    for mb, label in ((None, "one call per block"), (1, "one frame per call")):
        sc.max_batch = mb
        sc.score(frames, prompt)
        sync(device)
        t = time.perf_counter()
        for _ in range(a.reps):
            sc.score(frames, prompt)
        sync(device)
        print(f"\n4. ImageReward {label}: {a.reps * len(frames) / (time.perf_counter() - t):.1f} frames/s", end="")
    print()


if __name__ == "__main__":
    main()
