"""Frozen configs and named presets.

Every component takes one of these small dataclasses; presets are plain dict entries so that a new model pair
is one line. Names follow the Wan2.1 reference so a config reads like the checkpoint it loads.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class DiTConfig:
    """Wan2.1 text-to-video transformer hyper-parameters (the reference `WanModel(...)` arguments)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 (three RoPE axes)")


DIT_PRESETS: dict[str, DiTConfig] = {
    "wan2.1-1.3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Tests: same structure, a few thousand parameters.
    "tiny": DiTConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=16, text_len=8,
                      freq_dim=16),
    "tiny-drafter": DiTConfig(dim=16, ffn_dim=32, num_heads=1, num_layers=1, in_dim=4, out_dim=4, text_dim=16,
                              text_len=8, freq_dim=16),
}


def dit_preset(name: str) -> DiTConfig:
    try:
        return DIT_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(DIT_PRESETS)}") from None


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step flow-matching schedule, as Self-Forcing derives it.

    `denoising_steps` are indices into a 1000-step shifted table (warp), giving t = 1000, 937.5, 833.3, 625 for shift 5.
    """

    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    warp: bool = True
    context_noise: float = 0.0  # timestep of the commit pass that writes a final block into the KV cache


@dataclass(frozen=True)
class CacheConfig:
    """Block-causal KV-cache policy.

    append: Self-Forcing; a finished block is committed by one forward at t=context_noise on its clean latents.
    recompute: Krea Realtime; before each block the cache is rebuilt from the last `recompute_frames` clean latent
    frames, with RoPE positions relative to that window. Once the video's first frame has left the window, the
    window starts with an anchor frame: `anchor="reencode"` (Krea's) re-encodes a decoded pixel frame with the VAE
    encoder; `anchor="latent"` uses the clean latent frame instead (no encoder pass; not Krea's numbers).
    `window_frames` (-1 = all held frames) and `sink_frames` bound attention for videos longer than the training
    length. `max_frames`: the most frames the append cache holds when `window_frames` is -1 (the trained length, 9
    blocks of 3 latent frames): a longer video rolls (sinks kept, oldest frames evicted), so its memory is that of
    a 9-block video whatever the length; videos of up to 9 blocks attend to every earlier frame, as before.
    """

    policy: Literal["append", "recompute"] = "append"
    window_frames: int = -1
    sink_frames: int = 0
    recompute_frames: int = 9
    max_frames: int = 27
    anchor: Literal["reencode", "latent"] = "reencode"

    def __post_init__(self) -> None:
        from sdvg.settings import check_cache, check_int

        check_cache(self.window_frames, self.sink_frames)
        check_int(self.max_frames, "max_frames", 1)
        check_int(self.recompute_frames, "recompute_frames", 1)
        if self.policy not in ("append", "recompute"):
            raise ValueError(f"unknown cache policy {self.policy!r}; choose 'append' or 'recompute'")
        if self.anchor not in ("reencode", "latent"):
            raise ValueError(f"unknown anchor {self.anchor!r}; choose 'reencode' or 'latent'")

    def capacity(self, latent_frames: int, frames_per_block: int) -> int:
        """Frames the KV cache holds for a video of `latent_frames` (bounded, whatever the video's length)."""
        if self.policy == "recompute":
            return self.recompute_frames + frames_per_block
        return min(latent_frames, self.window_frames if self.window_frames > 0 else self.max_frames)


@dataclass(frozen=True)
class VideoConfig:
    """Output geometry. Latent sizes follow from the Wan VAE strides (4 temporal, 8 spatial)."""

    height: int = 480
    width: int = 832
    num_blocks: int = 9
    frames_per_block: int = 3  # latent frames
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    patch_size: tuple[int, int] = (2, 2)

    def __post_init__(self) -> None:
        m = self.vae_stride[1] * self.patch_size[0]
        if self.height % m or self.width % m:
            raise ValueError(f"resolution {self.width}x{self.height} must be divisible by {m} "
                             f"(VAE stride {self.vae_stride[1]} x patch {self.patch_size[0]}); try 832x480")
        if self.num_blocks < 1 or self.frames_per_block < 1:
            raise ValueError("num_blocks and frames_per_block must be >= 1")

    @property
    def latent_frames(self) -> int:
        return self.num_blocks * self.frames_per_block

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.vae_stride[1], self.width // self.vae_stride[2]

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.latent_hw
        return (h // self.patch_size[0]) * (w // self.patch_size[1])

    @property
    def num_frames(self) -> int:
        """Decoded frames: the first latent frame gives 1 frame, every other gives vae_stride[0]."""
        return 1 + (self.latent_frames - 1) * self.vae_stride[0]


@dataclass(frozen=True)
class ModelPreset:
    """What a checkpoint family needs besides its weights: the DiT's shape, its few-step schedule, and where the
    family fixes them, its KV-cache policy and the VAE decoder rule its videos were made with (None: the run's)."""

    dit: str  # a DIT_PRESETS name
    sampler: SamplerConfig = SamplerConfig()
    cache: CacheConfig | None = None
    decoder_rule: str | None = None


DECODER_RULES = ("wan", "krea")  # sdvg.vae.StreamingDecoder(rule=...): upstream Wan, or Krea Realtime's
KREA_SAMPLER = SamplerConfig(denoising_steps=(1000, 750, 500, 250, 0))  # 1000, 937.5, 833.3, 625, then t = 0

MODEL_PRESETS: dict[str, ModelPreset] = {
    **{name: ModelPreset(name) for name in DIT_PRESETS},
    # Self-Forcing / CausVid 1.3B: 4 warped steps, Self-Forcing's append cache.
    "self-forcing-1.3b": ModelPreset("wan2.1-1.3b"),
    # Krea Realtime 14B as its server runs it: 5 passes ending at t = 0, the cache recomputed from the last 3
    # latent frames each block (first frame re-encoded once it leaves the window), Krea's streaming decoder.
    "krea-realtime-14b": ModelPreset("wan2.1-14b", KREA_SAMPLER, CacheConfig(policy="recompute", recompute_frames=3),
                                     "krea"),
    # Tests: the Krea recipe on the tiny shape.
    "tiny-krea": ModelPreset("tiny", KREA_SAMPLER, CacheConfig(policy="recompute", recompute_frames=3), "krea"),
}


def resolve_cache(base: CacheConfig, *, policy: str | None = None, recompute_frames: int | None = None,
                  anchor: str | None = None, window_frames: int = -1, sink_frames: int = 0) -> CacheConfig:
    """A model's cache: its preset's (`base`) with the run's flags applied where given."""
    given = dict(policy=policy, recompute_frames=recompute_frames, anchor=anchor)
    return replace(base, window_frames=window_frames, sink_frames=sink_frames,
                   **{k: v for k, v in given.items() if v is not None})


def model_preset(name: str) -> ModelPreset:
    try:
        return MODEL_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(MODEL_PRESETS)}") from None


Mode = Literal["sdvg", "target", "draft", "stitch", "exact"]
DrafterContext = Literal["own", "emitted"]

DEFAULT_TAU = -0.7  # accept threshold on ImageReward block scores (the paper's); a model set may ship its own
DEFAULT_TAUS = (DEFAULT_TAU, -1.0, -1.5, -2.0, -2.5)  # the bench's tau sweep on that scale


@dataclass(frozen=True)
class RunConfig:
    """One video's run settings, spelled once: `SDVGPipeline.__call__` / `stream` build it from their keywords,
    `sdvg generate` from its flags, `sdvg bench` from its runs, a server from its start request; the video's trace
    records it. It checks itself when built (sdvg.settings), so a bad value fails the same way from every entry. The
    router (its kind, tau) and commit laziness are not here: they belong to the pipeline (`ModelSet.pipeline`), and
    tau may change mid-video."""

    # What makes each block: sdvg (draft, route, regenerate on reject), target or draft alone, stitch (the drafter's
    # first stitch_steps steps, the target the rest) or exact (speculative sampling of the drafter's trajectory).
    mode: Mode = "sdvg"
    seed: int = 0  # keys every block's noise and the random draws (router reset, exact mode): same seed, same video
    # sdvg: the target makes block 0 unrouted (it fixes the scene) and the drafter is conditioned on it.
    force_reject_first: bool = True
    # What the drafter's cache holds: its own drafts, accepted or not ("own", the paper's; drafts never wait for a
    # decision), or the emitted blocks ("emitted": the drafter follows the target after a rejection).
    drafter_context: DrafterContext = "own"
    # stitch: the drafter's steps before the target takes over; sdvg (hybrid): on a rejection the target keeps the
    # draft's first stitch_steps steps instead of starting from noise. 0: no stitching.
    stitch_steps: int = 0
    # Pipelined speculation: the drafter drafts ahead on a thread while earlier blocks are judged (the same video,
    # faster); settings it cannot run with fall back to the sequential loop with a warning. In a trace: it ran.
    overlap: bool = False

    def __post_init__(self) -> None:
        from sdvg.settings import check_run, check_seed

        check_seed(self.seed)
        check_run(self.mode, self.stitch_steps, self.drafter_context)


__all__ = ["DiTConfig", "DIT_PRESETS", "dit_preset", "SamplerConfig", "CacheConfig", "VideoConfig", "ModelPreset",
           "MODEL_PRESETS", "model_preset", "resolve_cache", "KREA_SAMPLER", "DECODER_RULES",
           "Mode", "DrafterContext", "DEFAULT_TAU", "DEFAULT_TAUS", "RunConfig"]
