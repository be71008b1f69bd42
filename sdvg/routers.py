"""Routers: decide, per block, whether the drafter's block is good enough to keep.

A router sees the block's decoded frames (`[F, 3, H, W]` in [0, 1]) and the prompt and returns a `Decision`. Routers
that need a reward own their scorer, so a cascade can score a few frames first and stop early.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from sdvg.config import DEFAULT_TAU
from sdvg.scorers.base import Scorer, aggregate
from sdvg.seeding import derive_seed
from sdvg.settings import check_rate, check_tau


@dataclass(frozen=True)
class Decision:
    accept: bool
    score: float | None  # the aggregated block score (None when the router scores nothing)
    threshold: float | None
    frame_scores: tuple[float, ...] = ()
    frames_scored: int = 0
    skipped: bool = False  # accepted without scoring (a verification skip)


class Router(Protocol):
    """What the pipeline needs of a router: `name` (traces), `reset`, `decide`; a threshold-style router also has a
    settable `tau` (traces record it; `StreamControl.set_tau` changes it live). Add one with `register_router`."""

    name: str

    def reset(self, seed: int) -> None:
        """Called once per video (random routers key their draws on it)."""

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision: ...


def _scores(scorer: Scorer, frames: torch.Tensor, prompt: str) -> torch.Tensor:
    s = scorer.score(frames, prompt).float().cpu()
    if s.shape != (frames.shape[0],):
        raise ValueError(f"scorer returned shape {tuple(s.shape)}, expected one score per frame ({frames.shape[0]})")
    if not torch.isfinite(s).all():
        raise FloatingPointError("scorer returned NaN/Inf scores; check the decoded frames and the scorer weights")
    return s


@dataclass
class ThresholdRouter:
    """The paper's router: accept iff aggregate(frame scores) >= tau (aggregate = min, the worst frame, by default)."""

    scorer: Scorer
    tau: float
    how: str = "min"
    q: float = 0.1
    name: str = "threshold"

    def reset(self, seed: int) -> None:
        pass

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        s = _scores(self.scorer, frames, prompt)
        score = float(aggregate(s, self.how, self.q))
        return Decision(score >= self.tau, score, self.tau, tuple(s.tolist()), len(s))


@dataclass
class CascadeRouter:
    """Min-threshold routing that scores a subset first (every `stride`-th frame).

    Safe: if the subset's minimum is already below tau, the full minimum is too, so the block is rejected without
    scoring the rest. Gives exactly the decisions of `ThresholdRouter(how="min")` with fewer scored frames.
    `delta` (the authors' later variant, router "cascade-delta"): also accept on the subset alone when its minimum
    is at least tau + delta, an unsafe early accept (an unscored frame may be worse); only a subset minimum within
    [tau, tau + delta) has the rest of the frames scored.
    """

    scorer: Scorer
    tau: float
    stride: int = 4
    name: str = "cascade"
    delta: float | None = None

    def reset(self, seed: int) -> None:
        pass

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        n = frames.shape[0]
        first = list(range(0, n, self.stride))
        s = torch.full((n,), math.nan)
        s[first] = _scores(self.scorer, frames[first], prompt)
        proxy = float(s[first].min())
        if proxy < self.tau:
            return Decision(False, proxy, self.tau, tuple(s.tolist()), len(first))
        if self.delta is not None and proxy >= self.tau + self.delta:
            return Decision(True, proxy, self.tau, tuple(s.tolist()), len(first))
        rest = [i for i in range(n) if i not in set(first)]
        if rest:
            s[rest] = _scores(self.scorer, frames[rest], prompt)
        score = float(s.min())
        return Decision(score >= self.tau, score, self.tau, tuple(s.tolist()), n)


@dataclass
class RandomRouter:
    """Accept with probability `accept_rate`, independent of content (the paper's ablation).

    Draws are keyed by (seed, video seed, block), so a video's routing does not depend on what ran before it.
    """

    accept_rate: float
    seed: int = 0
    name: str = "random"
    _video_seed: int = field(default=0, repr=False)

    def reset(self, seed: int) -> None:
        self._video_seed = seed

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        u = random.Random(derive_seed("route", self.seed, self._video_seed, block)).random()
        return Decision(u < self.accept_rate, None, None)


@dataclass
class ConstantRouter:
    """Accept-all (drafter everywhere but block 0) or reject-all (target everywhere)."""

    accept: bool
    name: str = "constant"

    def reset(self, seed: int) -> None:
        pass

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        return Decision(self.accept, None, None)


@dataclass
class PrefixRouter:
    """Reject the first `blocks` blocks (the target makes them), accept every later draft: content-blind.

    `blocks=1` is the `first` baseline (the target fixes the scene, the drafter does the rest); the bench matches
    `blocks` to the number of blocks SDVG gave the target on the same video, for a comparison at equal cost.
    """

    blocks: int = 1
    name: str = "prefix"

    def reset(self, seed: int) -> None:
        pass

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        return Decision(block >= self.blocks, None, None)


@dataclass
class PercentileRouter:
    """Running threshold aiming at a target accept rate.

    tau is the (1 - accept_rate) quantile of the last `window` block scores seen (accepted or not), across videos;
    until `warmup` scores are seen, `tau0` is used, or with a prior (the authors' later variant, router
    "percentile-prior": ImageReward block scores ~ N(0.566, 1.071^2)) the same quantile of the prior. Use it to hit
    a compute budget without tuning tau by hand.
    """

    scorer: Scorer
    accept_rate: float
    tau0: float = 0.0
    warmup: int = 8
    window: int = 256
    how: str = "min"
    name: str = "percentile"
    prior: tuple[float, float] | None = None  # (mean, sd) of block scores before any are seen
    _history: deque = field(default_factory=deque, repr=False)

    def reset(self, seed: int) -> None:
        pass

    def threshold(self) -> float:
        if len(self._history) < self.warmup:
            if self.prior is not None:
                from statistics import NormalDist

                return NormalDist(*self.prior).inv_cdf(min(max(1.0 - self.accept_rate, 1e-9), 1 - 1e-9))
            return self.tau0
        return float(torch.tensor(list(self._history)).quantile(1.0 - self.accept_rate))

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        s = _scores(self.scorer, frames, prompt)
        score = float(aggregate(s, self.how))
        tau = self.threshold()
        self._history.append(score)
        while len(self._history) > self.window:
            self._history.popleft()
        return Decision(score >= tau, score, tau, tuple(s.tolist()), len(s))


@dataclass
class RelativeRouter:
    """A per-prompt threshold: accept a draft block if its score is at least the target's own block-0 score plus
    `tau` (an offset, usually negative: "within |tau| of what the target reached"), so one setting transfers across
    prompts and models whose score scales differ. The pipeline shows it the forced block 0 (`observe`); without one
    (block 0 routed too) the first routed block's score is the reference."""

    scorer: Scorer
    tau: float
    how: str = "min"
    name: str = "relative"
    _ref: float | None = field(default=None, repr=False)

    def reset(self, seed: int) -> None:
        self._ref = None

    def observe(self, block: int, frames: torch.Tensor, prompt: str) -> None:
        if self._ref is None:
            self._ref = float(aggregate(_scores(self.scorer, frames, prompt), self.how))

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        s = _scores(self.scorer, frames, prompt)
        score = float(aggregate(s, self.how))
        if self._ref is None:
            self._ref = score
        tau = self._ref + self.tau
        return Decision(score >= tau, score, tau, tuple(s.tolist()), len(s))


@dataclass
class SkipRouter:
    """Verification and draft skipping (VVS-style) around the `threshold` router, router "vvs".

    It keeps the margins (score - tau) of the last `window` scored blocks. When all of them are >= `margin`, the
    next draft is accepted without scoring (`Decision.skipped`, no scorer call); when all are <= -`margin`, the
    next block is not drafted at all (`skip_draft`: the target makes it; no drafter, decode or scorer work). At most
    `max_skips` blocks in a row are skipped, then one is drafted and scored again, so the margins stay current.
    """

    inner: ThresholdRouter
    margin: float = 0.2
    window: int = 2
    max_skips: int = 2
    name: str = "vvs"
    _margins: list = field(default_factory=list, repr=False)
    _skips: int = field(default=0, repr=False)

    @property
    def tau(self) -> float:
        return self.inner.tau

    @tau.setter
    def tau(self, value: float) -> None:
        self.inner.tau = value

    def reset(self, seed: int) -> None:
        self.inner.reset(seed)
        self._margins, self._skips = [], 0

    def _recent(self) -> list[float] | None:
        r = self._margins[-self.window:]
        return r if len(r) == self.window and self._skips < self.max_skips else None

    def skip_draft(self, block: int) -> bool:
        r = self._recent()
        if r is not None and max(r) <= -self.margin:
            self._skips += 1
            return True
        return False

    def decide(self, block: int, frames: torch.Tensor, prompt: str) -> Decision:
        r = self._recent()
        if r is not None and min(r) >= self.margin:
            self._skips += 1
            return Decision(True, None, self.tau, skipped=True)
        self._skips = 0
        d = self.inner.decide(block, frames, prompt)
        self._margins.append(d.score - self.tau)
        return d


IMAGEREWARD_PRIOR = (0.566, 1.071)  # block-score mean and sd the authors' percentile router starts from


@dataclass(frozen=True)
class RouterSpec:
    """How to build a router from the run's settings (see `register_router`)."""

    factory: Callable[..., Router]  # keywords: scorer tau accept_rate q seed prefix_blocks delta margin window name
    needs_scorer: bool


_ROUTERS: dict[str, RouterSpec] = {}


def register_router(name: str, factory: Callable[..., Router], needs_scorer: bool) -> None:
    """Make `build_router(name, ...)` call `factory(scorer=, tau=, accept_rate=, q=, seed=, prefix_blocks=, delta=,
    margin=, window=, name=)`
    (it takes what it needs and ignores the rest); the CLI's `--router` choices follow the registry."""
    _ROUTERS[name] = RouterSpec(factory, needs_scorer)


register_router("threshold", lambda scorer, tau, **_: ThresholdRouter(scorer, tau, "min"), True)
register_router("min", lambda scorer, tau, **_: ThresholdRouter(scorer, tau, "min"), True)
register_router("mean", lambda scorer, tau, q, name, **_: ThresholdRouter(scorer, tau, name, q, name=name), True)
register_router("quantile", lambda scorer, tau, q, name, **_: ThresholdRouter(scorer, tau, name, q, name=name), True)
register_router("cascade", lambda scorer, tau, **_: CascadeRouter(scorer, tau), True)
register_router("percentile", lambda scorer, tau, accept_rate, **_: PercentileRouter(scorer, accept_rate, tau0=tau),
                True)
register_router("cascade-delta", lambda scorer, tau, delta, **_: CascadeRouter(scorer, tau, name="cascade-delta",
                                                                                delta=delta), True)
register_router("percentile-prior", lambda scorer, tau, accept_rate, **_: PercentileRouter(
    scorer, accept_rate, tau0=tau, prior=IMAGEREWARD_PRIOR, name="percentile-prior"), True)
register_router("relative", lambda scorer, tau, **_: RelativeRouter(scorer, tau), True)
register_router("vvs", lambda scorer, tau, margin, window, **_: SkipRouter(ThresholdRouter(scorer, tau, "min"), margin,
                                                                          window), True)
register_router("random", lambda accept_rate, seed, **_: RandomRouter(accept_rate, seed), False)
register_router("prefix", lambda prefix_blocks, **_: PrefixRouter(prefix_blocks), False)
register_router("accept-all", lambda name, **_: ConstantRouter(True, name=name), False)
register_router("reject-all", lambda name, **_: ConstantRouter(False, name=name), False)


def router_names() -> list[str]:
    return list(_ROUTERS)


def needs_scorer(name: str) -> bool:
    return name in _ROUTERS and _ROUTERS[name].needs_scorer


def build_router(name: str, *, scorer: Scorer | None = None, tau: float = DEFAULT_TAU, accept_rate: float = 0.5,
                 q: float = 0.1, seed: int = 0, prefix_blocks: int = 1, delta: float = 0.3,
                 margin: float = 0.2, window: int = 2) -> Router:
    """Router by name (`router_names()`); score-based routers need a scorer."""
    if name not in _ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(_ROUTERS)}")
    if _ROUTERS[name].needs_scorer and scorer is None:
        raise ValueError(f"router {name!r} needs a scorer")
    check_tau(tau)
    check_rate(accept_rate)
    return _ROUTERS[name].factory(scorer=scorer, tau=tau, accept_rate=accept_rate, q=q, seed=seed,
                                  prefix_blocks=prefix_blocks, delta=delta, margin=margin, window=window,
                                  name=name)


def acceptance_by_position(decisions: Sequence[Sequence[bool | None]]) -> list[float | None]:
    """Per-block-position accept rate over many videos (None where no video routed that position)."""
    width = max((len(d) for d in decisions), default=0)
    out: list[float | None] = []
    for i in range(width):
        col = [d[i] for d in decisions if i < len(d) and d[i] is not None]
        out.append(sum(col) / len(col) if col else None)
    return out

