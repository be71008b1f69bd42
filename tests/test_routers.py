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
