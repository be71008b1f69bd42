import math

import pytest
import torch

from sdvg.routers import (CascadeRouter, ConstantRouter, PercentileRouter, RandomRouter, ThresholdRouter,
                          acceptance_by_position, build_router)
from sdvg.scorers import SharpnessScorer


class CountingScorer:
    """A real weight-free scorer that also counts how many frames it was shown."""

    def __init__(self):
        self.inner, self.frames = SharpnessScorer(), 0

    def score(self, frames, prompt):
        self.frames += frames.shape[0]
        return self.inner.score(frames, prompt)


def _frames(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, 3, 16, 16, generator=g)
    f[n // 2] = 0.5  # one flat (blurry) frame: the worst frame
    return f


def test_threshold_min_uses_the_worst_frame():
    f = _frames()
    s = SharpnessScorer().score(f, "x")
    lo, hi = float(s.min()), float(s.mean())
    r = ThresholdRouter(SharpnessScorer(), tau=(lo + hi) / 2)
    d = r.decide(1, f, "x")
    assert not d.accept and d.score == pytest.approx(lo) and d.frames_scored == 12
    assert ThresholdRouter(SharpnessScorer(), tau=(lo + hi) / 2, how="mean").decide(1, f, "x").accept


@pytest.mark.parametrize("tau_q", [0.0, 0.3, 0.7, 1.0])
def test_cascade_matches_min_threshold_with_fewer_frames(tau_q):
    f = _frames(1)
    s = SharpnessScorer().score(f, "x")
    tau = float(s.min() + tau_q * (s.max() - s.min()))
    c = CountingScorer()
    d = CascadeRouter(c, tau).decide(1, f, "x")
    assert d.accept == ThresholdRouter(SharpnessScorer(), tau).decide(1, f, "x").accept
    if not d.accept and float(s[::4].min()) < tau:
        assert c.frames == 3  # rejected on the subset alone


def test_random_router_rate_and_determinism():
    r = RandomRouter(0.3, seed=1)
    f = _frames()
    picks = []
    for v in range(200):
        r.reset(v)
        picks += [r.decide(b, f, "x").accept for b in range(1, 9)]
    assert 0.25 < sum(picks) / len(picks) < 0.35
    r.reset(7)
    a = [r.decide(b, f, "x").accept for b in range(9)]
    r.reset(7)
    assert a == [r.decide(b, f, "x").accept for b in range(9)]


def test_percentile_router_tracks_target_rate():
    r = PercentileRouter(SharpnessScorer(), accept_rate=0.25, warmup=8)
    amps = torch.rand(200, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    acc = [r.decide(1, 0.5 + (torch.rand(4, 3, 16, 16, generator=g) - 0.5) * a, "x").accept for a in amps]
    assert 0.15 < sum(acc[50:]) / 150 < 0.35


def test_constant_and_factory_errors():
    assert ConstantRouter(True).decide(1, _frames(), "x").accept
    assert not build_router("reject-all").decide(1, _frames(), "x").accept
    pre = build_router("prefix", prefix_blocks=3)
    assert [pre.decide(b, _frames(), "x").accept for b in range(1, 6)] == [False, False, True, True, True]
    with pytest.raises(ValueError, match="needs a scorer"):
        build_router("threshold")
    with pytest.raises(ValueError, match="unknown router"):
        build_router("best", scorer=SharpnessScorer())
    with pytest.raises(ValueError, match="tau must be a number"):
        build_router("threshold", scorer=SharpnessScorer(), tau=math.nan)


def test_nan_scores_are_an_error():
    class NaNScorer:
        def score(self, frames, prompt):
            return torch.full((frames.shape[0],), math.nan)
    with pytest.raises(FloatingPointError):
        ThresholdRouter(NaNScorer(), 0.0).decide(1, _frames(), "x")


def test_acceptance_by_position():
    assert acceptance_by_position([[None, True, False], [None, True, True]]) == [None, 1.0, 0.5]


def _sharp_frames(levels: list[float]) -> torch.Tensor:
    """Frames whose SharpnessScorer scores grow with `levels` (noise amplitude): a real scorer with known order."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(1, 3, 16, 16, generator=g) - 0.5
    return torch.stack([(0.5 + a * base[0]).clamp(0, 1) for a in levels])


def test_cascade_delta_accepts_early_on_the_proxy_and_otherwise_matches_the_safe_cascade():
    from sdvg.routers import CascadeRouter
    from sdvg.scorers import SharpnessScorer

    sc = SharpnessScorer()
    frames = _sharp_frames([1.0, 0.1, 0.1, 0.1, 1.0, 0.1, 0.1, 0.1])  # the proxy (frames 0, 4) is sharp, the rest not
    proxy = float(sc.score(frames[[0, 4]], "").min())
    tau = float(sc.score(frames, "").min()) * 2  # above the full minimum: the safe cascade rejects
    safe = CascadeRouter(sc, tau).decide(1, frames, "")
    assert not safe.accept and safe.frames_scored == len(frames)
    early = CascadeRouter(sc, tau, delta=proxy - tau - 1e-9).decide(1, frames, "")
    assert early.accept and early.frames_scored == 2  # the unsafe early accept, on 2 of 8 frames
    late = CascadeRouter(sc, tau, delta=proxy - tau + 1.0).decide(1, frames, "")
    assert not late.accept and late.frames_scored == len(frames)


def test_percentile_prior_and_relative_threshold():
    from statistics import NormalDist

    from sdvg.loading import load_tiny_models
    from sdvg.routers import IMAGEREWARD_PRIOR, build_router
    from sdvg.scorers import SharpnessScorer

    r = build_router("percentile-prior", scorer=SharpnessScorer(), accept_rate=0.72)
    assert r.threshold() == pytest.approx(NormalDist(*IMAGEREWARD_PRIOR).inv_cdf(0.28))
    models = load_tiny_models(seed=0, num_blocks=4)
    pipe = models.pipeline(router="relative", tau=-0.001)
    out = pipe("a red circle", seed=2)
    ref = float(models.scorer.score(out.frames[:9], "a red circle").min())  # the target's block 0, as emitted
    assert [b.threshold for b in out.trace.blocks[1:]] == [pytest.approx(ref - 0.001)] * 3


def test_vvs_skips_scoring_on_a_high_margin_and_drafting_on_a_low_one():
    from sdvg.loading import load_tiny_models

    models = load_tiny_models(seed=0, num_blocks=8)
    acc = models.pipeline(router="vvs", tau=-math.inf)("a red circle", seed=1)
    assert [b.skipped for b in acc.trace.blocks] == [None, None, None, "score", "score", None, "score", "score"]
    assert all(b.accepted for b in acc.trace.blocks[1:]) and acc.trace.blocks[3].frame_scores == []
    rej = models.pipeline(router="vvs", tau=math.inf)("a red circle", seed=1)
    assert [b.skipped for b in rej.trace.blocks] == [None, None, None, "draft", "draft", None, "draft", "draft"]
    assert [b.accepted for b in rej.trace.blocks[1:]] == [False] * 7
    assert all(b.ms.get("draft") is None for b in rej.trace.blocks if b.skipped == "draft")
    target = models.pipeline()("a red circle", seed=1, mode="target")
    assert torch.equal(rej.frames, target.frames)  # every block is the target's, skipped or not
    assert rej.trace.drafter_forwards < models.pipeline(tau=math.inf)("a red circle", seed=1).trace.drafter_forwards
