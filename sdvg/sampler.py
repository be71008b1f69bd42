"""Few-step flow-matching block sampler, keyed noise, and `BlockModel` (one DiT + its KV cache + the sampler).

The schedule and the per-block loop mirror Self-Forcing's `CausalInferencePipeline.inference`: for each step i,
v = DiT(x_t, t_i) with the same t for every frame of the block, x0 = x_t - sigma(t_i) * v (float64, sigma looked up
in the 1000-step shifted table by nearest timestep), then x_t' = (1 - sigma') * x0 + sigma' * eps for the next step.
The last step's x0 is the block. A finished block reaches the KV cache by one of two policies:

- append (Self-Forcing): one forward at t = context_noise on the clean latents writes the block's K/V. Commits are
  lazy: queued, then flushed right before the cache is next needed, all pending blocks in ONE forward with
  block-causal attention among them (bit-identical to committing them one by one). Trailing commits never run.
- recompute (Krea Realtime): no commit pass; before each block the cache is rebuilt by one forward at
  t = context_noise over a short window of clean latent frames, at window-relative RoPE positions 0..n-1, and the
  new block is denoised at positions n.. (n = min(frames so far, recompute_frames)). As in Krea's server, the
  window is the first frame of the video plus the last `recompute_frames - 1` frames while the first frame is
  still near (or always, when `sink_frames > 0`, Krea's `keep_first_frame`); after that the window's first frame
  is an "anchor". With `anchor_fn` (the pipeline passes the VAE encoder: `CacheConfig.anchor = "reencode"`), it is
  Krea's: the model keeps the last 1 + 4(n - 1) decoded pixel frames of what it committed (`commit(..., frames=)`),
  and the oldest of them is re-encoded alone, as a video's first frame. Without it, the clean latent frame at that
  position stands in (`anchor = "latent"`: cheaper, not Krea's numbers).
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch
from torch import Tensor

from sdvg.cache import KVCache
from sdvg.config import CacheConfig, SamplerConfig, VideoConfig
from sdvg.seeding import derive_seed

__all__ = ["schedule_table", "timesteps", "sigma_of", "to_x0", "add_noise", "handoff_step", "block_noise", "BlockModel"]


# --- schedule ------------------------------------------------------------------------------------------------------
def schedule_table(cfg: SamplerConfig = SamplerConfig()) -> tuple[Tensor, Tensor]:
    """The shifted training table (timesteps, sigmas), float32 [num_train_timesteps], as FlowMatchScheduler(shift,
    sigma_min=0, extra_one_step=True).set_timesteps(N, training=True) builds it."""
    n = cfg.num_train_timesteps
    sigmas = torch.linspace(1.0, 0.0, n + 1)[:-1]
    sigmas = cfg.shift * sigmas / (1 + (cfg.shift - 1) * sigmas)
    return sigmas * n, sigmas


def timesteps(cfg: SamplerConfig = SamplerConfig()) -> Tensor:
    """Few-step timesteps, float32: with `warp`, table[N - step] over the table with a trailing 0 appended
    (1000, 937.5, 833.33, 625 for the default steps and shift 5)."""
    steps = torch.tensor(cfg.denoising_steps, dtype=torch.long)
    if not cfg.warp:
        return steps.to(torch.float32)
    t, _ = schedule_table(cfg)
    return torch.cat([t, torch.zeros(1)])[cfg.num_train_timesteps - steps]


def sigma_of(t: Tensor | float, table: tuple[Tensor, Tensor]) -> Tensor:
    """Sigma of the table entry nearest to t (a quirk kept from the reference: t = 0 maps to the last entry)."""
    ts, sig = table
    t = torch.as_tensor(t, dtype=ts.dtype).reshape(-1)
    return sig[torch.argmin((ts.unsqueeze(0) - t.unsqueeze(1)).abs(), dim=1)]


def to_x0(v: Tensor, x_t: Tensor, t: Tensor | float, table: tuple[Tensor, Tensor]) -> Tensor:
    """x0 = x_t - sigma * v in float64 (as the reference), returned in v's dtype."""
    ts, sig = table
    s = sigma_of(torch.as_tensor(t, dtype=torch.float64), (ts.double(), sig.double())).item()
    return (x_t.double() - s * v.double()).to(v.dtype)


def add_noise(x0: Tensor, noise: Tensor, t: Tensor | float, table: tuple[Tensor, Tensor]) -> Tensor:
    """(1 - sigma) * x0 + sigma * noise with a float32 sigma, returned in the noise's dtype."""
    s = sigma_of(t, table).to(x0.device)
    return ((1 - s) * x0 + s * noise).type_as(noise)


def handoff_step(drafter_t: Tensor, target_t: Tensor, k: int) -> int:
    """T-Stitch across two schedules: after the drafter's first k steps, the target takes over at its first step
    whose timestep is at or below the drafter's next one (`drafter_t[k]`). With a shared prefix (Self-Forcing's
    4 steps vs Krea's 5, which add t = 0) that is step k itself, and the drafter's state is used as is; otherwise
    the pipeline re-noises the drafter's last x0 prediction to that step's sigma (`add_noise`)."""
    later = (target_t <= drafter_t[k] + 1e-4).nonzero()
    if not len(later):
        raise ValueError(f"stitch_steps={k}: the drafter stops at t={float(drafter_t[k]):.1f}, below every step of "
                         f"the target's schedule; use fewer stitch steps")
    return int(later[0])


# --- keyed noise ---------------------------------------------------------------------------------------------------
def _randn(shape: tuple[int, ...], *key: int | str) -> Tensor:
    g = torch.Generator(device="cpu").manual_seed(derive_seed("sdvg-noise", *key))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def block_noise(seed: int, block: int, shape: tuple[int, ...], num_steps: int,
                device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, list[Tensor]]:
    """Initial noise of a block and the noises of its re-noising after steps 0..num_steps-2.

    Each tensor is drawn from its own CPU generator keyed by (seed, block, step), so a drafter and a target get the
    same noise for a block, and no block's noise depends on what ran before it.
    """
    noise = _randn(tuple(shape), seed, block, "init").to(device=device, dtype=dtype)
    steps = [_randn(tuple(shape), seed, block, "step", i).to(device=device, dtype=dtype)
             for i in range(max(num_steps - 1, 0))]
    return noise, steps


# --- one model -----------------------------------------------------------------------------------------------------
Callback = Callable[[int, Tensor, Tensor], None]


class BlockModel:
    """A DiT with its KV cache and the block sampler; the drafter and the target are two instances.

    `forwards` counts DiT calls (a batched commit or a cache rebuild counts once).
    """

    def __init__(self, dit, video: VideoConfig, sampler: SamplerConfig = SamplerConfig(),
                 cache: CacheConfig = CacheConfig(), device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, lazy: bool = True,
                 anchor_fn: Callable[[Tensor], Tensor] | None = None) -> None:
        p = next(dit.parameters())
        self.device = torch.device(device) if device is not None else p.device
        self.dtype = dtype or p.dtype
        if p.device != self.device or p.dtype != self.dtype:
            dit.to(device=self.device, dtype=self.dtype)
        self.dit, self.video, self.sampler, self.cache_cfg = dit, video, sampler, cache
        self.lazy, self.anchor_fn = lazy, anchor_fn
        self.t_list = timesteps(sampler)
        self.table = schedule_table(sampler)
        self.num_steps = len(self.t_list)
        self.fpb = video.frames_per_block
        self.forwards = 0
        self.kv: KVCache | None = None
        self.context: Tensor | None = None
        self._pending: list[tuple[int, Tensor]] = []  # append: queued commits
        self._clean: list[Tensor] = []  # recompute: clean latents of committed blocks
        self._pixels: deque[Tensor] = deque(maxlen=1 + 4 * max(cache.recompute_frames - 1, 0))  # recompute + anchor
        self._committed = 0  # blocks whose latents were given to commit()
        self._start = 0  # RoPE/cache frame position of the next block (recompute: window-relative)
        self._ready: int | None = None  # block the cache is ready to denoise

    @property
    def cache_policy(self) -> str:
        return self.cache_cfg.policy

    # --- state ---------------------------------------------------------------------------------------------------
    def _new_cache(self) -> KVCache:
        c, v = self.cache_cfg, self.video
        ph, pw = self.dit.cfg.patch_size[1:]
        h, w = v.latent_hw
        cap = c.capacity(v.latent_frames, self.fpb)
        if c.policy == "recompute":
            return KVCache(self.dit.cfg, cap, (h // ph) * (w // pw), 1, self.device, self.dtype)
        return KVCache(self.dit.cfg, cap, (h // ph) * (w // pw), 1, self.device, self.dtype,
                       window_frames=c.window_frames, sink_frames=c.sink_frames)

    def set_context(self, context: Tensor) -> None:
        """A new prompt [1, L, text_dim]: resets the KV cache, the cross-attention cache and the commits."""
        self.context = context.to(device=self.device, dtype=self.dtype)
        self.reset()

    def update_context(self, context: Tensor) -> None:
        """Switch the prompt mid-video: later forwards (and pending commits) see the new text; the video so far stays
        in the cache. The cross-attention K/V are recomputed on the next forward (`KVCache.cross_for`)."""
        if self.context is None:
            raise RuntimeError("update_context() continues a video; start one with set_context()")
        self.context = context.to(device=self.device, dtype=self.dtype)

    def reset(self) -> None:
        """Forget the video so far (cache, cross-attention K/V, commits); keep the prompt."""
        if self.kv is None:
            self.kv = self._new_cache()
        self.kv.reset()
        self._pending, self._clean, self._committed, self._start, self._ready = [], [], 0, 0, None
        self._pixels.clear()

    def _forward(self, x: Tensor, t: Tensor | float, start_frame: int, block_frames: int | None = None) -> Tensor:
        if self.context is None:
            raise RuntimeError("call set_context(prompt embeddings) before denoising")
        b, _, f = x.shape[:3]
        tt = torch.full((b, f), float(t), device=self.device, dtype=torch.float32) if not torch.is_tensor(t) \
            else t.to(self.device, torch.float32).reshape(1, 1).expand(b, f)
        self.forwards += 1
        with torch.no_grad():
            return self.dit(x.to(self.device, self.dtype), tt, self.context, cache=self.kv, start_frame=start_frame,
                            block_frames=block_frames)

    # --- commits -------------------------------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Blocks given to `commit` so far (the next block to denoise)."""
        return self._committed

    @property
    def needs_frames(self) -> bool:
        """Whether `commit` needs the block's decoded frames (recompute with a re-encoded anchor)."""
        return self.cache_policy == "recompute" and self.anchor_fn is not None

    def commit(self, block: int, latents: Tensor, frames: Tensor | None = None) -> None:
        """Make a finished block part of this model's context (blocks in order, each once). `frames`: its decoded
        frames [T, 3, H, W] in [0, 1], which the recompute policy re-encodes into its anchor (see `needs_frames`)."""
        if block != self._committed:
            raise ValueError(f"commit of block {block}, but the next block to commit is {self._committed}")
        if self.needs_frames and frames is None:
            raise ValueError("the recompute cache with a re-encoded anchor needs each committed block's decoded "
                             "frames: commit(block, latents, frames=...)")
        x = latents.detach().to(self.device, self.dtype)
        self._committed += 1
        if self.cache_policy == "recompute":
            self._clean.append(x)
            if self.needs_frames:
                self._pixels.extend(frames.split(1))
        else:
            # a long run of accepted drafts must not grow into one huge commit forward: flush the queue before it
            # would outgrow the cache (never within the trained length, so short videos keep their forward counts)
            if self._pending and (len(self._pending) + 1) * self.fpb > self.kv.capacity:
                self.flush()
            self._pending.append((block, x))
            if not self.lazy:
                self.flush()

    def flush(self) -> None:
        """Make the cache ready for the next block: run pending commits (append, one forward for all of them) or
        rebuild the cache from the recent clean frames (recompute). Idempotent."""
        if self.kv is None:
            raise RuntimeError("call set_context(prompt embeddings) first")
        nxt = self._committed
        if self.cache_policy == "append":
            if self._pending:
                x = torch.cat([p[1] for p in self._pending], dim=2)
                self._forward(x, self.sampler.context_noise, self._pending[0][0] * self.fpb, self.fpb)
                self._pending = []
            self._start = nxt * self.fpb
        elif self._ready != nxt:
            self._start = self._rebuild(nxt)
        self._ready = nxt

    def _rebuild(self, block: int) -> int:
        """Recompute policy: cache = one forward over the context window; returns the new block's position."""
        self.kv.reset(cross=False)
        cur, n, fpb = block * self.fpb, self.cache_cfg.recompute_frames, self.fpb
        if block == 0 or n < 1:
            return 0
        frames = torch.cat(self._clean[:block], dim=2)
        rest = frames[:, :, 1:]
        tail = rest[:, :, max(rest.shape[2] - (n - 1), 0):] if n > 1 else rest[:, :, :0]
        if self.cache_cfg.sink_frames > 0 or cur - fpb < n:
            first = frames[:, :, :1]
        else:
            # Krea: the oldest of the last 1 + 4(n - 1) decoded frames (the last frame of latent frame cur - n),
            # re-encoded alone; or that latent frame itself
            first = self.anchor_fn(self._pixels[0]) if self.anchor_fn is not None else frames[:, :, cur - n:cur - n + 1]
            first = first.to(self.device, self.dtype)
        window = torch.cat([first, tail], dim=2)
        self._forward(window, self.sampler.context_noise, 0, fpb)
        return min(cur, n)

    # --- denoising -----------------------------------------------------------------------------------------------
    def trajectory(self, block: int, noise: Tensor, step_noises: list[Tensor],
                   stop_step: int | None = None) -> tuple[Tensor, dict[int, tuple[Tensor, Tensor]]]:
        """`denoise`, also returning each step's (x_t it consumed, its x0 prediction), float32: what stitching and
        exact speculative sampling continue from."""
        states: dict[int, tuple[Tensor, Tensor]] = {}
        x = self.denoise(block, noise, step_noises, stop_step=stop_step,
                         callback=lambda i, xt, x0: states.__setitem__(i, (xt, x0)))
        return x, states

    def x0_batch(self, block: int, xs: list[Tensor], steps: list[int]) -> Tensor:
        """This model's x0 predictions for several candidate states of block `block` (xs[i] at step steps[i]) in ONE
        forward of batch len(xs); the cache is read, not written. [N, C, F, H, W] float32."""
        if block != self._committed:
            raise ValueError(f"x0_batch of block {block}, but {self._committed} blocks are committed")
        self.flush()
        x = torch.cat([s.to(self.device, self.dtype) for s in xs], dim=0)
        ts = [self.t_list[i] for i in steps]
        tt = torch.stack([torch.full((x.shape[2],), float(t)) for t in ts]).to(self.device, torch.float32)
        self.forwards += 1
        with torch.no_grad():
            v = self.dit(x, tt, self.context, cache=self.kv, start_frame=self._start, readonly=True)
        return torch.cat([to_x0(v[i:i + 1], x[i:i + 1], t, self.table) for i, t in enumerate(ts)]).float()

    def x0_at(self, block: int, x: Tensor, step: int) -> Tensor:
        """This model's x0 prediction for block `block` at state x of step `step` (one forward; exact
        speculative sampling verifies a drafter's states with it). float32."""
        if block != self._committed:
            raise ValueError(f"x0_at of block {block}, but {self._committed} blocks are committed")
        self.flush()
        t = self.t_list[step]
        xt = x.to(self.device, self.dtype)
        return to_x0(self._forward(xt, t, self._start), xt, t, self.table).float()

    def denoise(self, block: int, noise: Tensor, step_noises: list[Tensor], start_step: int = 0,
                x_init: Tensor | None = None, callback: Callback | None = None,
                stop_step: int | None = None) -> Tensor:
        """Denoise one block; returns its final x0 latents [B, C, F, H, W] float32.

        `start_step`/`x_init`: start from x_init as the noisy latent consumed by step `start_step` (T-Stitch: a
        drafter ran the steps before). `stop_step=k`: run steps 0..k-1 only and return the x_t that step k would
        consume. `callback(i, x_t, x0)` sees each step's input and its x0 prediction (float32).
        """
        if block != self._committed:
            raise ValueError(f"denoise of block {block}, but {self._committed} blocks are committed "
                             f"(blocks before it must be committed first)")
        if len(step_noises) < self.num_steps - 1:
            raise ValueError(f"need {self.num_steps - 1} step noises, got {len(step_noises)}")
        stop = self.num_steps if stop_step is None else stop_step
        if not 0 <= start_step <= stop <= self.num_steps or start_step >= self.num_steps:
            raise ValueError(f"need 0 <= start_step ({start_step}) <= stop_step ({stop}) <= {self.num_steps}")
        if start_step > 0 and x_init is None:
            raise ValueError("start_step > 0 needs x_init (the noisy latent of that step)")
        x = (noise if x_init is None else x_init).to(self.device, self.dtype)
        if start_step == stop:
            return x.float()
        self.flush()
        x0 = x
        for i in range(start_step, stop):
            t = self.t_list[i]
            v = self._forward(x, t, self._start)
            x0 = to_x0(v, x, t, self.table)
            if callback is not None:
                callback(i, x.float(), x0.float())
            if i < self.num_steps - 1:
                x = add_noise(x0, step_noises[i].to(self.device, self.dtype), self.t_list[i + 1], self.table)
        return x.float() if stop < self.num_steps else x0.float()
