"""The speculative block loop (SDVG) and its output/trace dataclasses.

One video = B blocks. Per block the drafter proposes (`BlockModel.denoise`), the streaming VAE decodes the proposal
after a snapshot of its cache, a router judges the frames, and either the draft is committed to the target (lazily)
or the decode cache is restored and the target regenerates the block from the same noise. `SDVGPipeline.stream`
is that loop; `__call__` collects it into an `SDVGOutput`. One `RunConfig` (sdvg.config) carries a video's settings.

Vocabulary (used the same way in code, traces and docs). *Draft*: the drafter's latents for a block, denoised from
the block's noise. *Accept*: the router finds the draft's decoded frames good enough; the draft is emitted. *Reject*:
it does not; the decode cache goes back to its snapshot and the target regenerates. *Regenerate*: the target makes
the block from the same noise (or, stitching, from the draft's k-th step). *Stitch*: the drafter runs the first
`stitch_steps` steps and the target the rest (every block in mode stitch; on a rejection in sdvg, "hybrid").
*Commit*: make a final block part of a model's KV-cache context (the target gets the emitted block, the drafter its
own draft or the emitted block); lazy: recorded at once, its forward runs when the model next denoises. *Flush*: run
a model's pending commits; timed as `commit`, right before the target denoises. *Emit*: hand a block's final frames
and latents out (`stream` yields a `BlockOutput`); routers and scorers that carry state follow the emitted block.
"""
from __future__ import annotations

import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from sdvg.config import DrafterContext, Mode, RunConfig, VideoConfig
from sdvg.memory import check_memory, peak_mem_mb
from sdvg.exact import speculative_sample
from sdvg.live import PromptSchedule, StreamControl
from sdvg.proposer import Proposer
from sdvg.routers import Decision, Router
from sdvg.sampler import BlockModel, add_noise, block_noise, handoff_step
from sdvg.settings import check_prompt, check_stitch_steps
from sdvg.trace import BlockOutput, BlockTrace, SDVGOutput, VideoTrace


class PipelineBusyError(RuntimeError):
    """A second stream on a pipeline that is still generating another video (they would share its caches)."""


class NonFiniteError(FloatingPointError):
    """Latents or frames became NaN/Inf; raised with the block index so a bad checkpoint/dtype is easy to find."""


@dataclass
class _Block:
    """One block as its kind made it, handed on to the decode, the commits, the trace and the emit."""

    latents: torch.Tensor  # what is emitted, and committed to the target
    source: str  # BlockTrace.source: "draft" | "target" | "stitch" | "exact"
    frames: torch.Tensor | None = None  # the emitted frames (None: not decoded yet)
    decision: Decision | None = None  # the router's (None: not routed)
    draft: torch.Tensor | None = None  # the drafter's own block, which an "own" drafter commits
    draft_frames: torch.Tensor | None = None  # its decoded frames
    skipped: str | None = None  # BlockTrace.skipped
    steps_ok: int | None = None  # mode exact: drafter transitions the target accepted
    drafter_fwd: int | None = None  # a proposer's draft: its forwards (the drafter's count moves on its thread)


@dataclass
class _StreamState:
    """A stream's state between blocks."""

    run: RunConfig
    prompt: str  # what blocks are scored against (live control may switch it)
    overlap: bool  # pipelined speculation runs
    proposer: Proposer | None = None  # overlap: the drafter's thread, started at the first speculative block


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
               drafter_context: DrafterContext = "own", stitch_steps: int = 0, trace: VideoTrace | None = None,
               control: StreamControl | None = None, overlap: bool = False) -> Iterator[BlockOutput]:
        """Yield each block's frames as soon as they are final (see the module docstring for the algorithm).

        prompt: the text the video follows (and the router scores drafts against).
        mode: what makes each block: "sdvg" (draft, route, regenerate on reject), "target", "draft", "stitch" or
            "exact" (see `RunConfig`).
        seed: keys the noise of every block (and the random draws): the same seed gives the same video.
        force_reject_first: sdvg: the target makes block 0 unrouted (it fixes the scene).
        drafter_context: "own": the drafter's cache keeps its own drafts (the paper's); "emitted": the emitted blocks.
        stitch_steps: stitch: the drafter's steps before the target takes over; sdvg: the same on a rejection.
        trace: a `VideoTrace` that each block's `BlockTrace` is appended to (`__call__` passes one).
        control: a `sdvg.live.StreamControl`: prompt switches, tau changes and stop requests from another thread,
            applied before the next block.
        overlap: pipelined speculation (`sdvg.proposer`: the drafter drafts up to `self.lookahead` blocks ahead on
            its own thread; see `overlap_blocker`); the video is bit for bit the sequential one.
        """
        check_prompt(prompt)
        run = RunConfig(mode=mode, seed=seed, force_reject_first=force_reject_first, drafter_context=drafter_context,
                        stitch_steps=stitch_steps, overlap=overlap)
        yield from self._stream(prompt, run, trace, control)

    def _stream(self, prompt: str, run: RunConfig, trace: VideoTrace | None,
                control: StreamControl | None) -> Iterator[BlockOutput]:
        """The loop behind `stream` and `__call__`: per block, apply live control, then make, commit and emit it."""
        if not self._busy.acquire(blocking=False):
            raise PipelineBusyError(
                "this pipeline is already generating a video (another stream() is open): finish or close() that "
                "stream first, or make one pipeline per concurrent video with models.pipeline()")
        state: _StreamState | None = None
        try:
            self._check_models(run)
            self.check_memory(keep_frames=False)
            prompts = self._begin(prompt, run.seed)
            state = _StreamState(run, prompt, self._overlaps(run, control))
            if trace is not None:  # the trace records whether pipelined speculation runs, not whether it was asked
                trace.run = replace(trace.run, overlap=state.overlap)
            for b in range(self.video.num_blocks):
                if control is not None:
                    if control.stopped:
                        break
                    state.prompt = self._apply(control, prompts)
                out = self._block(state, b)
                if trace is not None:
                    trace.blocks.append(out.trace)
                yield out
        finally:
            if state is not None and state.proposer is not None:
                state.proposer.close()
            self._busy.release()

    def _block(self, state: _StreamState, b: int) -> BlockOutput:
        """One block: made by its kind, decoded, committed, traced; `ms["block"]` is its critical path."""
        t0 = time.perf_counter()
        ms: dict[str, float] = {}
        fwd0 = self._forwards()
        res = self._make(state, b, ms)
        self._decode_emitted(b, res, ms)
        self._commit(b, state.run, res)
        bt = self._block_trace(b, res, ms, fwd0)
        self._remember(b, state, res)
        _sync(self.device)
        ms["block"] = 1000 * (time.perf_counter() - t0)
        return BlockOutput(b, res.frames.float().cpu(), res.latents.float().cpu(), bt, state.prompt)

    # --- one block, by kind ---------------------------------------------------------------------------------------
    def _make(self, state: _StreamState, b: int, ms: dict[str, float]) -> _Block:
        """Block b by the run's mode; in sdvg the target makes block 0 when it is forced (it fixes the scene and no
        draft is wasted on it; the drafter is conditioned on it, see README, "Block 0") and the blocks a draft-skipping
        router (vvs) skips."""
        run = state.run
        noise, step_noises = block_noise(run.seed, b, self._block_shape(), self._num_steps, device=self.device)
        if run.mode == "draft":
            return self._draft_block(b, noise, step_noises, ms)
        if run.mode == "target" or (run.mode == "sdvg" and b == 0 and run.force_reject_first):
            return _Block(self._target_denoise(b, noise, step_noises, ms), "target")
        if run.mode == "stitch":
            return self._stitch_block(b, run.stitch_steps, noise, step_noises, ms)
        if run.mode == "exact":
            return self._exact_block(b, run.seed, noise, step_noises, ms)
        if hasattr(self.router, "skip_draft") and self.router.skip_draft(b):
            return _Block(self._target_denoise(b, noise, step_noises, ms), "target", skipped="draft")
        return self._speculate(state, b, noise, step_noises, ms)

    def _draft_block(self, b: int, noise: torch.Tensor, step_noises: list[torch.Tensor],
                     ms: dict[str, float]) -> _Block:
        """Mode draft: the drafter's block is emitted as it is."""
        with _timed(ms, "draft", self.device):
            x = self.drafter.denoise(b, noise, step_noises)
        return _Block(x, "draft", draft=x)

    def _stitch_block(self, b: int, k: int, noise: torch.Tensor, step_noises: list[torch.Tensor],
                      ms: dict[str, float]) -> _Block:
        """Mode stitch (T-Stitch): the drafter's first k steps, the target's rest."""
        with _timed(ms, "draft", self.device):
            x_k, states = self.drafter.trajectory(b, noise, step_noises, stop_step=k)
        return _Block(self._target_denoise(b, noise, step_noises, ms, (k, x_k, states[k - 1][1])), "stitch")

    def _exact_block(self, b: int, seed: int, noise: torch.Tensor, step_noises: list[torch.Tensor],
                     ms: dict[str, float]) -> _Block:
        """Mode exact: speculative sampling of the drafter's trajectory (sdvg.exact); the target's distribution."""
        with _timed(ms, "draft", self.device):
            _, states = self.drafter.trajectory(b, noise, step_noises)  # the drafter keeps the emitted blocks
        with _timed(ms, "target", self.device):
            x, steps_ok = speculative_sample(self.drafter, self.target, b, noise, step_noises, states, seed)
        return _Block(x, "exact", steps_ok=steps_ok)

    def _speculate(self, state: _StreamState, b: int, noise: torch.Tensor, step_noises: list[torch.Tensor],
                   ms: dict[str, float]) -> _Block:
        """Mode sdvg: propose a draft, decode it after a snapshot of the decode cache, let the router decide; accept
        the draft, or restore the snapshot and regenerate (stitching from the draft with `stitch_steps`)."""
        draft, states, drafter_fwd = self._propose(state, b, noise, step_noises, ms)
        _check_finite(draft, b, "draft latents")
        snap = self.decoder.snapshot()
        frames = self._decode(draft, ms)
        with _timed(ms, "score", self.aux_device):
            decision = self.router.decide(b, frames, state.prompt)
        both = dict(decision=decision, draft=draft, draft_frames=frames, drafter_fwd=drafter_fwd,
                    skipped="score" if decision.skipped else None)  # what an accepted and a rejected block share
        if decision.accept:
            return _Block(draft, "draft", frames, **both)
        self.decoder.restore(snap)
        k = state.run.stitch_steps
        x = self._target_denoise(b, noise, step_noises, ms, (k, states[k][0], states[k - 1][1]) if k else None)
        return _Block(x, "stitch" if k else "target", **both)

    def _propose(self, state: _StreamState, b: int, noise: torch.Tensor, step_noises: list[torch.Tensor],
                 ms: dict[str, float]) -> tuple[torch.Tensor, dict, int | None]:
        """(draft, its step states, the proposer's drafter forwards or None): drafted here, or taken from the
        proposer, which starts at the first speculative block (the drafter has committed every block before it)."""
        if state.overlap and state.proposer is None:
            state.proposer = Proposer(self.drafter, state.run.seed, self._block_shape(), self._num_steps, b,
                                      self.video.num_blocks, self.lookahead)
        if state.proposer is not None:
            p = state.proposer.take(b)
            ms["draft"] = p.ms
            return p.draft, p.states, p.forwards
        with _timed(ms, "draft", self.device):
            draft, states = self.drafter.trajectory(b, noise, step_noises)
        return draft, states, None

    def _target_denoise(self, b: int, noise: torch.Tensor, step_noises: list[torch.Tensor], ms: dict[str, float],
                        handoff: tuple[int, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The target makes block b from its noise, or from a drafter's `handoff` = (k, x_k, x0 at step k - 1) (see
        `_finish_stitch`), after flushing its pending commits."""
        with _timed(ms, "commit", self.device):
            self.target.flush()
        with _timed(ms, "target", self.device):
            if handoff is None:
                return self.target.denoise(b, noise, step_noises)
            return self._finish_stitch(b, *handoff, noise, step_noises)

    # --- after a block is made ------------------------------------------------------------------------------------
    def _decode_emitted(self, b: int, res: _Block, ms: dict[str, float]) -> None:
        """The emitted frames: decoded unless the accepted draft's decode gave them; latents and frames checked."""
        _check_finite(res.latents, b, "latents")
        if res.frames is None:
            res.frames = self._decode(res.latents, ms)
        _check_finite(res.frames, b, "decoded frames")
        if res.source == "draft":
            res.draft_frames = res.frames

    def _commit(self, b: int, run: RunConfig, res: _Block) -> None:
        """Commit block b to both models. Commits are lazy inside BlockModel: they cost a forward only when that
        model next denoises. The frames go with them for the recompute policy's re-encoded anchor (each model
        re-encodes the decoded frames of what its own cache holds)."""
        d, t = self.drafter, self.target
        if t is not None and run.mode != "draft":
            t.commit(b, res.latents, res.frames)
        if d is not None and run.mode != "target" and d.committed == b:  # (overlap commits drafts early)
            # "own" (the paper): the drafter's cache keeps its own draft, accepted or not.
            own = run.drafter_context == "own" and res.draft is not None
            d.commit(b, res.draft if own else res.latents, res.draft_frames if own else res.frames)

    def _forwards(self) -> tuple[int, int]:
        """(drafter, target) forwards so far: a block's counts are the difference across it."""
        return (self.drafter.forwards if self.drafter else 0, self.target.forwards if self.target else 0)

    def _block_trace(self, b: int, res: _Block, ms: dict[str, float], fwd0: tuple[int, int]) -> BlockTrace:
        """Block b's trace; `ms` is shared, so the block's total, taken after this, lands in it too."""
        dec, fwd = res.decision, self._forwards()
        return BlockTrace(
            index=b, source=res.source, skipped=res.skipped, steps_accepted=res.steps_ok,
            accepted=(False if res.skipped == "draft" else None if dec is None else bool(dec.accept)),
            score=None if dec is None else dec.score,
            threshold=None if dec is None else dec.threshold,
            frame_scores=[] if dec is None else list(dec.frame_scores),
            drafter_forwards=res.drafter_fwd if res.drafter_fwd is not None else fwd[0] - fwd0[0],
            target_forwards=fwd[1] - fwd0[1], ms=ms)

    def _remember(self, b: int, state: _StreamState, res: _Block) -> None:
        """Routers and scorers that carry state across blocks see the emitted block: a router observes the blocks it
        did not route (e.g. the per-prompt threshold reads the target's block 0), a stateful scorer every block."""
        forced = state.run.mode == "sdvg" and res.decision is None and res.skipped is None  # the target's block 0
        if forced and hasattr(self.router, "observe"):
            self.router.observe(b, res.frames, state.prompt)
        self._scorer_call("remember", res.frames)

    def _overlaps(self, run: RunConfig, control: StreamControl | None) -> bool:
        """Whether pipelined speculation runs: asked for and possible; when asked for but not possible, says why."""
        why = self.overlap_blocker(run.mode, run.drafter_context, control) if run.overlap else None
        if why:
            warnings.warn(f"overlap falls back to the sequential loop: {why}", stacklevel=4)  # the caller's line
        return run.overlap and why is None

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
                 drafter_context: DrafterContext = "own", stitch_steps: int = 0,
                 callback: Callable[[BlockOutput], None] | None = None, progress: bool = False,
                 overlap: bool = False) -> SDVGOutput:
        """Generate one video: `stream`'s blocks collected, with the trace's wall time and peak memory.

        prompt: the text the video follows (and the router scores drafts against).
        mode: "sdvg", "target", "draft", "stitch" or "exact": what makes each block (see `stream`, `RunConfig`).
        seed: keys the noise of every block (and the random draws): the same seed gives the same video.
        force_reject_first: sdvg: the target makes block 0 unrouted (it fixes the scene).
        drafter_context: "own": the drafter's cache keeps its own drafts (the paper's); "emitted": the emitted blocks.
        stitch_steps: stitch: the drafter's steps before the target takes over; sdvg: the same on a rejection.
        callback: called with each block's `BlockOutput` as soon as it is final.
        progress: show a progress bar with the blocks' A/R marks.
        overlap: pipelined speculation (the same video, see `stream`); the trace says whether it ran.
        """
        check_prompt(prompt)
        run = RunConfig(mode=mode, seed=seed, force_reject_first=force_reject_first, drafter_context=drafter_context,
                        stitch_steps=stitch_steps, overlap=overlap)
        self._check_models(run)
        self.check_memory(keep_frames=True)
        trace = self.new_trace(prompt, run)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=self.video.num_blocks, desc=mode, unit="block", leave=False)
        t0 = time.perf_counter()
        frames, latents = [], []
        for out in self._stream(prompt, run, trace, None):
            frames.append(out.frames)
            latents.append(out.latents)
            if callback is not None:
                callback(out)
            if bar is not None:
                bar.set_postfix_str(trace.marks)
                bar.update(1)
        _sync(self.device)
        trace.wall_s = time.perf_counter() - t0
        trace.peak_mem_mb = peak_mem_mb(self.device)
        if bar is not None:
            bar.close()
        return SDVGOutput(torch.cat(frames), torch.cat(latents, dim=2), trace)

    # --- helpers ----------------------------------------------------------------------------------------------------
    def _begin(self, prompt: str, seed: int) -> PromptSchedule:
        """A video's fresh start: both models see the prompt's context; the decoder, router and scorer reset."""
        context = self.text_encoder.encode([prompt]).to(self.device)
        for m in (self.drafter, self.target):
            if m is not None:
                m.set_context(context)
        self.decoder.reset()
        if self.router is not None:
            self.router.reset(seed)
        self._scorer_call("reset")
        return PromptSchedule(prompt, context)

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

    def new_trace(self, prompt: str, run: RunConfig) -> VideoTrace:
        """An empty trace of a video made with `run` (streaming it sets `run.overlap` to whether overlap ran)."""
        r = self.router if run.mode == "sdvg" else None
        return VideoTrace(prompt=prompt, run=run, tau=getattr(r, "tau", None), router=getattr(r, "name", None),
                          cache_policy=(self.target or self.drafter).cache_policy)

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

    def _check_models(self, run: RunConfig) -> None:
        """The models `run` needs are here, and its stitch_steps fit their schedule."""
        check_stitch_steps(run.stitch_steps, (self.drafter or self.target).num_steps)
        needs = {"sdvg": ("drafter", "target", "router"), "target": ("target",), "draft": ("drafter",),
                 "stitch": ("drafter", "target"), "exact": ("drafter", "target")}[run.mode]
        for name in needs:
            if getattr(self, name) is None:
                hint = " (a model set without a scorer builds none: load a scorer, or name a router that needs none)" \
                    if name == "router" else ""
                raise ValueError(f"mode {run.mode!r} needs a {name}{hint}")


@contextmanager
def _timed(ms: dict[str, float], key: str, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _sync(device)
        ms[key] = ms.get(key, 0.0) + 1000 * (time.perf_counter() - t0)

