"""The speculative block loop (SDVG) and its output/trace dataclasses.

One video = B blocks. Per block the drafter proposes (`BlockModel.denoise`), the streaming VAE decodes the proposal
after a snapshot of its cache, a router judges the frames, and either the draft is committed to the target (lazily)
or the decode cache is restored and the target regenerates the block from the same noise. `SDVGPipeline.stream`
is that loop; `__call__` collects it into an `SDVGOutput`.
"""
from __future__ import annotations

import resource
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Literal

import torch

from sdvg.config import CacheConfig, DiTConfig, VideoConfig
from sdvg.exact import speculative_sample
from sdvg.live import PromptSchedule, StreamControl
from sdvg.proposer import Proposer
from sdvg.routers import Decision, Router
from sdvg.sampler import BlockModel, add_noise, block_noise, handoff_step
from sdvg.settings import check_prompt, check_run, check_seed

Mode = Literal["sdvg", "target", "draft", "stitch", "exact"]


class PipelineBusyError(RuntimeError):
    """A second stream on a pipeline that is still generating another video (they would share its caches)."""


class NonFiniteError(FloatingPointError):
    """Latents or frames became NaN/Inf; raised with the block index so a bad checkpoint/dtype is easy to find."""


@dataclass
class BlockTrace:
    index: int
    source: str  # "draft" | "target" | "stitch": whose latents were emitted
    accepted: bool | None  # None: no routing happened for this block (forced, or a non-speculative mode)
    score: float | None
    threshold: float | None
    frame_scores: list[float]
    drafter_forwards: int
    target_forwards: int
    ms: dict[str, float]  # draft, decode, score, target, commit; block: the block's critical path
    skipped: str | None = None  # "draft": not drafted, the target made it; "score": accepted unscored (router vvs)
    steps_accepted: int | None = None  # mode "exact": drafter transitions the target accepted (of num_steps - 1)


@dataclass
class VideoTrace:
    prompt: str
    seed: int
    mode: str
    tau: float | None
    router: str | None
    cache_policy: str
    stitch_steps: int
    force_reject_first: bool
    drafter_context: str
    overlap: bool = False  # pipelined speculation ran (False also when it was asked for but fell back)
    blocks: list[BlockTrace] = field(default_factory=list)
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0

    @property
    def routed(self) -> list[BlockTrace]:
        return [b for b in self.blocks if b.accepted is not None]

    @property
    def accept_rate(self) -> float | None:
        """Accepted / routed blocks (block 0 when forced is not routed, so it is excluded)."""
        r = self.routed
        return sum(b.accepted for b in r) / len(r) if r else None

    @property
    def drafter_forwards(self) -> int:
        return sum(b.drafter_forwards for b in self.blocks)

    @property
    def target_forwards(self) -> int:
        return sum(b.target_forwards for b in self.blocks)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(accept_rate=self.accept_rate, drafter_forwards=self.drafter_forwards,
                 target_forwards=self.target_forwards, accepted=[b.accepted for b in self.blocks])
        return d

    @property
    def marks(self) -> str:
        """One letter per block: A accepted draft, R rejected (the target regenerated it), - not routed."""
        return "".join({True: "A", False: "R", None: "-"}[b.accepted] for b in self.blocks)

    def summary(self) -> str:
        acc = "n/a" if self.accept_rate is None else f"{self.accept_rate:.0%}"
        return (f"{self.mode}: blocks {self.marks}  accept {acc}  forwards drafter {self.drafter_forwards} "
                f"target {self.target_forwards}  {self.wall_s:.2f}s")


@dataclass
class BlockOutput:
    """What `stream` yields: one block's final frames as soon as they are decided."""

    index: int
    frames: torch.Tensor  # [T, 3, H, W] in [0, 1]
    latents: torch.Tensor  # [1, C, f, h, w]
    trace: BlockTrace
    prompt: str = ""  # the prompt this block was made for (it changes when a `StreamControl` switches it)


@dataclass
class SDVGOutput:
    frames: torch.Tensor  # [T, 3, H, W] float in [0, 1]
    latents: torch.Tensor  # [1, C, F, h, w]
    trace: VideoTrace


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class TooLargeError(ValueError):
    """A video that cannot fit in memory, refused before any work (the message states the memory it needs)."""


def memory_needed(dits: list[DiTConfig | None], video: VideoConfig, cache: CacheConfig, dtype: torch.dtype,
                  keep_frames: bool = True) -> tuple[int, int]:
    """(DiT-device bytes, host bytes) a video needs beyond the weights: the KV caches, bounded by the cache's
    capacity whatever the length, and, when the whole video is returned (`__call__`, not `stream`), its float32
    frames and latents on the host, which grow with the length."""
    elt = torch.empty((), dtype=dtype).element_size()
    cap = cache.capacity(video.latent_frames, video.frames_per_block)
    kv = sum(2 * c.num_layers * (cap * video.tokens_per_frame + c.text_len) * c.dim * elt for c in dits if c)
    host = 0
    if keep_frames:
        h, w = video.latent_hw
        c_in = next(c.in_dim for c in dits if c)
        host = 4 * (video.num_frames * 3 * video.height * video.width + video.latent_frames * c_in * h * w)
    return kv, host


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes on a device (CUDA: free memory; CPU: MemAvailable), None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for ln in f:
                if ln.startswith("MemAvailable:"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(dits: list[DiTConfig | None], video: VideoConfig, cache: CacheConfig, dtype: torch.dtype,
                 device: torch.device | str, keep_frames: bool = True) -> None:
    """Refuse up front (TooLargeError) a video whose caches or frames cannot fit, stating what it needs."""
    kv, host = memory_needed(dits, video, cache, dtype, keep_frames)
    device = torch.device(device)
    need = {device.type: kv}
    need["cpu"] = need.get("cpu", 0) + host
    gb = 2**30
    for dev, n in need.items():
        free = available_memory(device if dev == device.type else "cpu")
        if free is not None and n > free:
            raise TooLargeError(
                f"this video needs at least {n / gb:.1f} GiB of {dev} memory ({video.num_blocks} blocks of "
                f"{video.width}x{video.height}: KV caches {kv / gb:.1f} GiB, returned frames {host / gb:.1f} GiB) "
                f"but {free / gb:.1f} GiB is free; use fewer --num-blocks, a smaller --height/--width or "
                f"--window-frames")


def _check_finite(x: torch.Tensor, block: int, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise NonFiniteError(f"block {block}: {what} contain NaN/Inf (try --dtype float32, or check the checkpoint)")
    return x


class SDVGPipeline:
    """Drafter + target + streaming decoder + router.

    Any of drafter/target/router may be None when the chosen mode does not need it (target-only needs no drafter).
    `text_encoder.encode([prompt])` gives the context both DiTs see; the decoder, text encoder and scorer may live on
    an auxiliary device (the paper's two-GPU split); latents move there for decoding.

    A pipeline holds one video's mutable state (KV caches, decode cache, router state), so it runs one stream at a
    time: a second `stream()` started while another is open raises `PipelineBusyError`. For concurrent videos (a
    server's sessions) make one pipeline each with `ModelSet.pipeline()`: each has its own caches and decode state
    over the shared weights.
    """

    def __init__(self, *, drafter: BlockModel | None, target: BlockModel | None, decoder, text_encoder,
                 router: Router | None = None, video: VideoConfig | None = None,
                 aux_device: torch.device | str | None = None) -> None:
        if drafter is None and target is None:
            raise ValueError("a pipeline needs at least a drafter or a target")
        self.drafter, self.target = drafter, target
        self.decoder = decoder.fork() if hasattr(decoder, "fork") else decoder  # own decode state per pipeline
        self._busy = threading.Lock()
        self.text_encoder, self.router = text_encoder, router
        self.video = video or (target or drafter).video
        self.device = torch.device((target or drafter).device)
        self.aux_device = torch.device(aux_device) if aux_device is not None else self.device
        self.lookahead = 2  # overlap: blocks the drafter may run ahead of the verifier

    # --- the loop -------------------------------------------------------------------------------------------------
    def stream(self, prompt: str, *, mode: Mode = "sdvg", seed: int = 0, force_reject_first: bool = True,
               drafter_context: Literal["own", "emitted"] = "own", stitch_steps: int = 0,
               trace: VideoTrace | None = None, control: StreamControl | None = None,
               overlap: bool = False) -> Iterator[BlockOutput]:
        """Yield each block's frames as soon as they are final (see module docstring for the algorithm).
        `control` (`sdvg.live.StreamControl`): prompt switches, τ changes and stop requests from another thread,
        applied before the next block. `overlap`: pipelined speculation (`sdvg.proposer`: the drafter drafts up
        to `self.lookahead` blocks ahead on its own thread; see `overlap_blocker`); the video is bit for bit the
        sequential one."""
        if not self._busy.acquire(blocking=False):
            raise PipelineBusyError(
                "this pipeline is already generating a video (another stream() is open): finish or close() that "
                "stream first, or make one pipeline per concurrent video with models.pipeline()")
        proposer: Proposer | None = None  # overlap: the drafter's thread, started at the first drafted block
        try:
            d, t, dec = self.drafter, self.target, self.decoder
            self._check_args(prompt, mode, seed, stitch_steps, drafter_context)
            self.check_memory(keep_frames=False)
            context = self.text_encoder.encode([prompt]).to(self.device)
            for m in (d, t):
                if m is not None:
                    m.set_context(context)
            dec.reset()
            if self.router is not None:
                self.router.reset(seed)
            self._scorer_call("reset")
            prompts = PromptSchedule(prompt, context)
            why = self.overlap_blocker(mode, drafter_context, control) if overlap else None
            if why:
                warnings.warn(f"overlap falls back to the sequential loop: {why}", stacklevel=2)
            use_proposer = overlap and why is None
            for b in range(self.video.num_blocks):
                if control is not None:
                    if control.stopped:
                        break
                    prompt = self._apply(control, prompts)
                t_block = time.perf_counter()
                ms: dict[str, float] = {}
                fwd0 = (d.forwards if d else 0, t.forwards if t else 0)
                drafter_fwd: int | None = None  # a proposer's block: its count (d.forwards moves on its thread)
                noise, step_noises = block_noise(seed, b, self._block_shape(), self._num_steps, device=self.device)
                decision: Decision | None = None
                frames = draft = draft_frames = skipped = steps_ok = None
                if mode == "draft":
                    with _timed(ms, "draft", self.device):
                        x = draft = d.denoise(b, noise, step_noises)
                    src = "draft"
                elif mode == "target" or (mode == "sdvg" and b == 0 and force_reject_first):
                    # Block 0 fixes the scene: the target makes it and no draft is wasted on it; the drafter is
                    # conditioned on the target's block 0 (see README, "Block 0").
                    with _timed(ms, "commit", self.device):
                        t.flush()
                    with _timed(ms, "target", self.device):
                        x = t.denoise(b, noise, step_noises)
                    src = "target"
                elif mode == "stitch":
                    with _timed(ms, "draft", self.device):
                        x_k, states = d.trajectory(b, noise, step_noises, stop_step=stitch_steps)
                    with _timed(ms, "commit", self.device):
                        t.flush()
                    with _timed(ms, "target", self.device):
                        x = self._finish_stitch(b, stitch_steps, x_k, states[stitch_steps - 1][1], noise,
                                                step_noises)
                    src = "stitch"
                elif mode == "exact":  # exact speculative sampling of the drafter's trajectory (sdvg.exact)
                    with _timed(ms, "draft", self.device):
                        _, states = d.trajectory(b, noise, step_noises)  # the drafter keeps the emitted blocks
                    with _timed(ms, "target", self.device):
                        x, steps_ok = speculative_sample(d, t, b, noise, step_noises, states, seed)
                    src = "exact"
                elif hasattr(self.router, "skip_draft") and self.router.skip_draft(b):  # draft skipping (vvs)
                    with _timed(ms, "commit", self.device):
                        t.flush()
                    with _timed(ms, "target", self.device):
                        x = t.denoise(b, noise, step_noises)
                    src, skipped = "target", "draft"
                else:  # sdvg: draft (or take the proposer's), decode after a snapshot, route
                    if use_proposer and proposer is None:
                        proposer = Proposer(d, seed, self._block_shape(), self._num_steps, b, self.video.num_blocks,
                                            self.lookahead)
                    if proposer is not None:
                        p = proposer.take(b)
                        draft, states, ms["draft"], drafter_fwd = p.draft, p.states, p.ms, p.forwards
                    else:
                        with _timed(ms, "draft", self.device):
                            draft, states = d.trajectory(b, noise, step_noises)
                    _check_finite(draft, b, "draft latents")
                    snap = dec.snapshot()
                    frames = draft_frames = self._decode(draft, ms)
                    with _timed(ms, "score", self.aux_device):
                        decision = self.router.decide(b, frames, prompt)
                    if decision.skipped:
                        skipped = "score"
                    if decision.accept:
                        x, src = draft, "draft"
                    else:
                        dec.restore(snap)
                        frames = None
                        with _timed(ms, "commit", self.device):
                            t.flush()
                        k = stitch_steps
                        with _timed(ms, "target", self.device):
                            x = (self._finish_stitch(b, k, states[k][0], states[k - 1][1], noise, step_noises) if k
                                 else t.denoise(b, noise, step_noises))
                        src = "stitch" if k else "target"
                _check_finite(x, b, "latents")
                if frames is None:
                    frames = self._decode(x, ms)
                _check_finite(frames, b, "decoded frames")
                if src == "draft":
                    draft_frames = frames
                # Commits are lazy inside BlockModel: they cost a forward only when that model next denoises. The
                # frames go with them for the recompute policy's re-encoded anchor (each model re-encodes the
                # decoded frames of what its own cache holds).
                if t is not None and mode != "draft":
                    t.commit(b, x, frames)
                if d is not None and mode != "target" and d.committed == b:  # (overlap commits drafts early)
                    # "own" (the paper): the drafter's cache keeps its own draft, accepted or not.
                    own = drafter_context == "own" and draft is not None
                    d.commit(b, draft if own else x, draft_frames if own else frames)
                bt = BlockTrace(
                    index=b, source=src, skipped=skipped, steps_accepted=steps_ok,
                    accepted=(False if skipped == "draft" else None if decision is None else bool(decision.accept)),
                    score=None if decision is None else decision.score,
                    threshold=None if decision is None else decision.threshold,
                    frame_scores=[] if decision is None else list(decision.frame_scores),
                    drafter_forwards=(drafter_fwd if drafter_fwd is not None else d.forwards - fwd0[0] if d else 0),
                    target_forwards=(t.forwards if t else 0) - fwd0[1],
                    ms=ms)
                if decision is None and skipped is None and mode == "sdvg" and hasattr(self.router, "observe"):
                    self.router.observe(b, frames, prompt)  # e.g. the per-prompt threshold reads the target's block 0
                self._scorer_call("remember", frames)  # a scorer that carries state across blocks sees the emitted
                _sync(self.device)
                ms["block"] = 1000 * (time.perf_counter() - t_block)  # the critical path of this block
                if trace is not None:
                    trace.blocks.append(bt)
                yield BlockOutput(b, frames.float().cpu(), x.float().cpu(), bt, prompt)
        finally:
            if proposer is not None:
                proposer.close()
            self._busy.release()

    def overlap_blocker(self, mode: str, drafter_context: str, control: StreamControl | None) -> str | None:
        """Why pipelined speculation cannot run for these settings (None: it can). Overlap drafts blocks b+1.. on
        the proposer's thread while block b is decoded, scored and maybe regenerated; that is exact only when the
        drafter's next block does not depend on the decision: its context is its own drafts (`own`) and it needs
        no decoded frames (not recompute with a re-encoded anchor)."""
        if mode != "sdvg":
            return f"mode {mode!r} has no routing to overlap"
        if drafter_context != "own":
            return "with 'emitted' context the drafter waits for each decision"
        if self.drafter.needs_frames:
            return "the drafter's recompute cache re-encodes decoded frames (use --anchor latent)"
        if hasattr(self.router, "skip_draft"):
            return "draft skipping (router vvs) decides whether to draft from the previous decisions"
        if control is not None:
            return "live control (prompt/τ changes) needs each block drafted after the previous decision"
        return None

    def _scorer_call(self, hook: str, *args) -> None:
        """Stateful scorers (`FlickerScorer(carry=True)`): `reset()` at each video, `remember(frames)` with each
        emitted block (after a rejection the emitted block is the target's, not the scored draft)."""
        fn = getattr(getattr(self.router, "scorer", None), hook, None)
        if callable(fn):
            fn(*args)

    def _decode(self, latents: torch.Tensor, ms: dict) -> torch.Tensor:
        with _timed(ms, "decode", self.aux_device):
            return self.decoder.decode(latents.to(self.aux_device))

    def __call__(self, prompt: str, *, mode: Mode = "sdvg", seed: int = 0, force_reject_first: bool = True,
                 drafter_context: Literal["own", "emitted"] = "own", stitch_steps: int = 0,
                 callback: Callable[[BlockOutput], None] | None = None, progress: bool = False,
                 overlap: bool = False) -> SDVGOutput:
        """Generate one video. `callback` is called after every block; `progress` shows a bar with A/R marks;
        `overlap`: pipelined speculation (the same video, see `stream`)."""
        self._check_args(prompt, mode, seed, stitch_steps, drafter_context)
        self.check_memory(keep_frames=True)
        trace = self.new_trace(prompt, mode=mode, seed=seed, force_reject_first=force_reject_first,
                               drafter_context=drafter_context, stitch_steps=stitch_steps)
        trace.overlap = overlap and self.overlap_blocker(mode, drafter_context, None) is None
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.video.num_blocks, desc=mode, unit="block", leave=False)
        t0 = time.perf_counter()
        frames, latents = [], []
        for out in self.stream(prompt, mode=mode, seed=seed, force_reject_first=force_reject_first,
                               drafter_context=drafter_context, stitch_steps=stitch_steps, trace=trace,
                               overlap=overlap):
            frames.append(out.frames)
            latents.append(out.latents)
            if callback is not None:
                callback(out)
            if bar is not None:
                bar.set_postfix_str(trace.marks)
                bar.update(1)
        _sync(self.device)
        trace.wall_s = time.perf_counter() - t0
        trace.peak_mem_mb = _peak_mem_mb(self.device)
        if bar is not None:
            bar.close()
        return SDVGOutput(torch.cat(frames), torch.cat(latents, dim=2), trace)

    # --- helpers ----------------------------------------------------------------------------------------------------
    def _apply(self, control: StreamControl, prompts: PromptSchedule) -> str:
        """Take the control's pending requests; returns the prompt the next block is scored against."""
        switch, tau = control.take()
        if switch is not None:
            prompts.switch(switch.prompt, self.text_encoder.encode([switch.prompt]).to(self.device),
                           switch.blend_blocks, switch.interp)
        context, changed = prompts.next_block()
        if changed:
            for m in (self.drafter, self.target):
                if m is not None:
                    m.update_context(context)
        if tau is not None and hasattr(self.router, "tau"):  # threshold-style routers; others have no tau
            self.router.tau = tau
        return prompts.prompt

    def new_trace(self, prompt: str, *, mode: str, seed: int, force_reject_first: bool, drafter_context: str,
                  stitch_steps: int) -> VideoTrace:
        r = self.router if mode == "sdvg" else None
        return VideoTrace(prompt=prompt, seed=seed, mode=mode, tau=getattr(r, "tau", None),
                          router=getattr(r, "name", None), cache_policy=(self.target or self.drafter).cache_policy,
                          stitch_steps=stitch_steps, force_reject_first=force_reject_first,
                          drafter_context=drafter_context)

    def check_memory(self, keep_frames: bool = True) -> None:
        """Refuse a video that cannot fit (see `check_memory`); `keep_frames`: the whole video is returned."""
        m = self.target or self.drafter
        check_memory([x.dit.cfg for x in (self.drafter, self.target) if x is not None], self.video, m.cache_cfg,
                     m.dtype, self.device, keep_frames)

    @property
    def _num_steps(self) -> int:
        """Step noises a block needs: the longer of the two schedules (noise is keyed per step, so the models share
        the steps they have in common)."""
        return max(m.num_steps for m in (self.drafter, self.target) if m is not None)

    def _finish_stitch(self, block: int, k: int, x_k: torch.Tensor, x0_prev: torch.Tensor, noise,
                       step_noises) -> torch.Tensor:
        """The target finishes a block the drafter began: `x_k` is the drafter's noisy latent after k steps and
        `x0_prev` its x0 prediction at step k - 1. The target takes over at `handoff_step`: from x_k when the
        timesteps agree, else from x0_prev re-noised to the target's timestep with the same step noise."""
        d, t = self.drafter, self.target
        j = handoff_step(d.t_list, t.t_list, k)
        if abs(float(t.t_list[j]) - float(d.t_list[k])) > 1e-4:
            x_k = add_noise(x0_prev.to(self.device), step_noises[k - 1], t.t_list[j], t.table)
        return t.denoise(block, noise, step_noises, start_step=j, x_init=x_k)

    def _block_shape(self) -> tuple[int, ...]:
        m = self.target or self.drafter
        h, w = self.video.latent_hw
        return (1, m.dit.cfg.in_dim, self.video.frames_per_block, h, w)

    def _check_args(self, prompt: str, mode: str, seed: int, stitch_steps: int, drafter_context: str) -> None:
        check_prompt(prompt)
        check_seed(seed)
        check_run(mode, stitch_steps, drafter_context, (self.drafter or self.target).num_steps)
        needs = {"sdvg": ("drafter", "target", "router"), "target": ("target",), "draft": ("drafter",),
                 "stitch": ("drafter", "target"), "exact": ("drafter", "target")}[mode]
        for name in needs:
            if getattr(self, name) is None:
                hint = " (a model set without a scorer builds none: load a scorer, or name a router that needs none)" \
                    if name == "router" else ""
                raise ValueError(f"mode {mode!r} needs a {name}{hint}")


@contextmanager
def _timed(ms: dict[str, float], key: str, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        ms[key] = ms.get(key, 0.0) + 1000 * (time.perf_counter() - t0)

