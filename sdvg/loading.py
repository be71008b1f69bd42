"""Build the models a run needs: the embedded world by default, or real checkpoints from local paths.

Kept apart from the CLI so notebooks and the benchmark assemble pipelines the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdvg.config import DEFAULT_TAU, DEFAULT_TAUS, CacheConfig, SamplerConfig, VideoConfig, dit_preset
from sdvg.pipeline import SDVGPipeline
from sdvg.routers import build_router, needs_scorer, router_names
from sdvg.sampler import BlockModel

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


@dataclass
class ModelSet:
    """Everything loaded once per process; pipelines over it are cheap to make."""

    drafter: Any  # WanDiT or None
    target: Any  # WanDiT or None
    decoder: Any  # StreamingDecoder
    text_encoder: Any
    scorer: Any | None
    evaluator: Any | None
    video: VideoConfig
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    default_taus: tuple[float, ...] = DEFAULT_TAUS
    default_tau: float = DEFAULT_TAU
    name: str = "custom"
    device: torch.device = torch.device("cpu")
    aux_device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    prompts: tuple[str, ...] = ()  # a default prompt set (the embedded world ships one; `sdvg bench` runs it)
    # Per-model settings from the model presets (None: the shared `sampler` / `cache` above), and the decoder rule
    # of the emitted video (None: the decoder's own, upstream Wan).
    drafter_sampler: SamplerConfig | None = None
    target_sampler: SamplerConfig | None = None
    drafter_cache: CacheConfig | None = None
    target_cache: CacheConfig | None = None
    decoder_rule: str | None = None
    info: dict = field(default_factory=dict)  # what the set's files say about it (the world: its world.json metrics)

    def pipeline(self, *, router: str | None = None, tau: float | None = None, accept_rate: float = 0.5,
                 q: float = 0.1, seed: int = 0, lazy_commit: bool = True,
                 cache: CacheConfig | None = None, prefix_blocks: int = 1, delta: float = 0.3,
                 margin: float = 0.2, window: int = 2) -> SDVGPipeline:
        """A fresh pipeline (fresh KV caches, decode state and router state) over the loaded models. `router`: a name
        from `router_names()`; None is "threshold" when the set has a scorer, else no router (the single-model modes
        still run). A router that scores drafts fails here, early, when the set has no scorer. `cache` replaces the
        cache policy of both models (default: each model's own, else the set's `cache`)."""
        decoder = self.decoder.fork(rule=self.decoder_rule) if hasattr(self.decoder, "fork") else self.decoder
        anchor = reencoder(decoder)

        def block_model(dit, sampler, own_cache):
            if dit is None:
                return None
            c = cache or own_cache or self.cache
            return BlockModel(dit, self.video, sampler or self.sampler, c, device=self.device, dtype=self.dtype,
                              lazy=lazy_commit, anchor_fn=anchor if c.anchor == "reencode" else None)

        tau = self.default_tau if tau is None else tau
        if router is None:
            router = "threshold" if self.scorer is not None else None
        if router is not None and self.scorer is None and needs_scorer(router):
            free = ", ".join(n for n in router_names() if not needs_scorer(n))
            raise ValueError(f"router {router!r} scores drafts, and this model set has no scorer: load one "
                             f"(--scorer imagereward --scorer-path ImageReward.pt) or use a router that needs none "
                             f"({free})")
        r = None if router is None else build_router(
            router, scorer=self.scorer, tau=tau, accept_rate=accept_rate, q=q, seed=seed, prefix_blocks=prefix_blocks,
            delta=delta, margin=margin, window=window)
        return SDVGPipeline(drafter=block_model(self.drafter, self.drafter_sampler, self.drafter_cache),
                            target=block_model(self.target, self.target_sampler, self.target_cache), decoder=decoder,
                            text_encoder=self.text_encoder, router=r, video=self.video, aux_device=self.aux_device)


def reencoder(decoder):
    """Krea's anchor: one decoded frame [1, 3, H, W] -> its latent [1, C, 1, h, w], encoded alone as a video's
    first frame by the VAE encoder (None when the decoder has no encoder). Both models of a pipeline share it, and
    it remembers the last frame, so a frame both caches hold is encoded once."""
    if not hasattr(decoder, "encoder"):
        return None
    enc, last = decoder.encoder(), []

    def encode(frame: torch.Tensor) -> torch.Tensor:
        if last and last[0].data_ptr() == frame.data_ptr() and last[0].shape == frame.shape:
            return last[1]
        enc.reset()
        z = enc.encode(frame)
        last[:] = [frame, z]
        return z

    return encode


def load_world_models(device: str = "cpu", dtype: str | torch.dtype = "float32",
                      num_blocks: int | None = None) -> ModelSet:
    """The embedded default world (no network, no files outside the package; `sdvg.world.load_world`)."""
    from sdvg.world import load_world

    return load_world(device=device, dtype=parse_dtype(dtype), num_blocks=num_blocks)


def load_checkpoint_models(*, drafter: str | None, target: str | None, vae: str, text_encoder: str,
                           drafter_preset: str = "wan2.1-1.3b", target_preset: str = "wan2.1-14b",
                           scorer: str = "imagereward", scorer_path: str | None = None,
                           scorer_heads: int | None = None,
                           med_config: str | None = None, tokenizer_dir: str | None = None,
                           height: int = 480, width: int = 832, num_blocks: int = 9,
                           cache: dict | None = None, decoder_rule: str | None = None,
                           device: str = "cuda", aux_device: str | None = None, dtype: str = "bfloat16",
                           ema: bool = True) -> ModelSet:
    """Real checkpoints from local paths (see README, "Checkpoints"). The presets (`MODEL_PRESETS`) give each model
    its shape, schedule and, for Krea, cache policy and decoder rule; `cache` (`resolve_cache` keywords: policy,
    recompute_frames, anchor, window_frames, sink_frames) overrides both models' where given."""
    from sdvg.checkpoints import load_dit
    from sdvg.config import model_preset, resolve_cache
    from sdvg.evaluators import ScorerEvaluator
    from sdvg.scorers import build_scorer
    from sdvg.text import PrecomputedTextEncoder, UMT5TextEncoder
    from sdvg.vae import load_wan_vae

    dt = parse_dtype(dtype)
    aux = aux_device or device
    video = VideoConfig(height=height, width=width, num_blocks=num_blocks)
    for p, what in ((vae, "--vae"), (text_encoder, "--text-encoder")):
        if not p:
            raise ValueError(f"{what} is required with real checkpoints (or pass no checkpoints to use the built-in world)")
        if not Path(p).exists():
            raise FileNotFoundError(f"{what} {p} does not exist")
    dp, tp = model_preset(drafter_preset), model_preset(target_preset)
    d = load_dit(drafter, dit_preset(dp.dit), device=device, dtype=dt, ema=ema) if drafter else None
    t = load_dit(target, dit_preset(tp.dit), device=device, dtype=dt, ema=ema) if target else None
    rule = decoder_rule or (tp.decoder_rule if target else dp.decoder_rule) or "wan"
    dec = load_wan_vae(vae, device=aux, dtype=dt, rule=rule)
    text_len = (t or d).cfg.text_len
    te = (PrecomputedTextEncoder(text_encoder, text_len=text_len) if Path(text_encoder).is_file()
          else UMT5TextEncoder.from_pretrained(text_encoder, device=aux, dtype=dt, text_len=text_len))
    sc = None
    if scorer and scorer != "none":
        sc = build_scorer(scorer, path=scorer_path, med_config=med_config, tokenizer_dir=tokenizer_dir,
                          vision_heads=scorer_heads,
                          device=aux, dtype=dt)
    # Quality for the benchmark: the mean scorer (ImageReward) over every 4th frame; for the paper's VisionReward,
    # set `models.evaluator = VisionRewardEvaluator.from_files(...)` in Python.
    ev = ScorerEvaluator(sc, how="mean", stride=4) if sc is not None else None
    caches = [resolve_cache(p.cache or CacheConfig(), **(cache or {})) for p in (dp, tp)]
    return ModelSet(drafter=d, target=t, decoder=dec, text_encoder=te, scorer=sc, evaluator=ev, video=video,
                    cache=caches[1] if target else caches[0], drafter_sampler=dp.sampler, target_sampler=tp.sampler,
                    drafter_cache=caches[0], target_cache=caches[1], decoder_rule=rule,
                    name="checkpoints", device=torch.device(device), aux_device=torch.device(aux), dtype=dt)


class HashTextEncoder:
    """A weight-free text encoder for smoke tests: each word maps to a fixed random vector (keyed by its hash).

    Same output contract as UMT5 (`[B, text_len, text_dim]`, padding rows zero), so the whole pipeline runs without
    any text-model files.
    """

    def __init__(self, text_len: int, text_dim: int) -> None:
        self.text_len, self.text_dim = text_len, text_dim

    def encode(self, prompts: list[str]) -> torch.Tensor:
        from sdvg.seeding import derive_seed

        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, p in enumerate(prompts):
            if not p.strip():
                raise ValueError("empty prompt: give a non-empty text prompt")
            for j, word in enumerate(p.lower().split()[: self.text_len]):
                g = torch.Generator().manual_seed(derive_seed("word", word))
                out[i, j] = torch.randn(self.text_dim, generator=g)
        return out


def load_tiny_models(seed: int = 0, *, num_blocks: int = 3, device: str = "cpu",
                     dtype: str | torch.dtype = "float32") -> ModelSet:
    """Random tiny drafter/target/VAE with weight-free text encoder, scorer and evaluator (tests, smoke runs).

    Videos are noise; the point is that every code path runs in well under a second per video.
    """
    from diffusers import AutoencoderKLWan

    from sdvg.config import dit_preset
    from sdvg.evaluators import FrameStatsEvaluator
    from sdvg.scorers import SharpnessScorer
    from sdvg.vae import StreamingDecoder
    from sdvg.wan import WanDiT

    dt = parse_dtype(dtype)
    torch.manual_seed(seed)
    target, drafter = WanDiT(dit_preset("tiny")), WanDiT(dit_preset("tiny-drafter"))
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    for m in (target, drafter, vae):
        if dt != torch.float32 or torch.device(device).type != "cpu":
            m.to(device=device, dtype=dt)
        m.eval().requires_grad_(False)
    cfg = target.cfg
    video = VideoConfig(height=32, width=32, num_blocks=num_blocks, frames_per_block=3)
    decoder = StreamingDecoder(vae, latents_mean=[0.0] * cfg.in_dim, latents_std=[1.0] * cfg.in_dim)
    return ModelSet(drafter=drafter, target=target, decoder=decoder,
                    text_encoder=HashTextEncoder(cfg.text_len, cfg.text_dim), scorer=SharpnessScorer(),
                    evaluator=FrameStatsEvaluator(), video=video, default_taus=(0.0, 1e-3, 1e-2),
                    default_tau=1e-3, name=f"tiny-{seed}", device=torch.device(device),
                    aux_device=torch.device(device), dtype=dt, prompts=("a red circle", "a blue square"))
