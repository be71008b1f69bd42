"""Live control of a stream: prompt switches (blended), τ changes and stop, applied at block boundaries."""
from __future__ import annotations

import math

import pytest
import torch

from sdvg.live import PromptSchedule, StreamControl, blend
from sdvg.loading import load_tiny_models

A, B = "a red circle moving right", "a blue square moving up"


@pytest.fixture(scope="module")
def models():
    return load_tiny_models(seed=0, num_blocks=5)


def test_blend_endpoints_and_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g)
    a[:, 3] = 0  # a padding row
    for how in ("linear", "slerp"):
        assert torch.equal(blend(a, b, 0.0, how), a) and torch.equal(blend(a, b, 1.0, how), b)
    torch.testing.assert_close(blend(a, b, 0.25), 0.75 * a + 0.25 * b)
    s = blend(a, b, 0.5, "slerp")
    u, v = a[0, 0] / a[0, 0].norm(), b[0, 0] / b[0, 0].norm()
    unit = blend(u.view(1, 1, -1), v.view(1, 1, -1), 0.5, "slerp")
    assert math.isclose(float(unit.norm()), 1.0, rel_tol=1e-5)  # slerp stays on the sphere
    torch.testing.assert_close(s[0, 3], 0.5 * b[0, 3])  # zero row: linear
    with pytest.raises(ValueError, match="interpolation"):
        blend(a, b, 0.5, "cubic")


def test_prompt_schedule_blends_over_n_blocks():
    a, b = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    s = PromptSchedule(A, a)
    assert s.next_block() == (a, False)
    s.switch(B, b, 3, "linear")
    ws = [float(s.next_block()[0].mean()) for _ in range(5)]
    assert ws == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]) and s.prompt == B
    assert s.next_block()[1] is False


def run(models, control_at: dict, **kw):
    """Stream A; before block k, apply control_at[k](control)."""
    pipe = models.pipeline(**kw)
    c = StreamControl()
    outs = []
    for out in pipe.stream(A, seed=3, control=c):
        outs.append(out)
        if out.index + 1 in control_at:
            control_at[out.index + 1](c)
    return outs


def test_switch_to_the_same_prompt_changes_nothing_and_a_new_prompt_applies_from_the_next_block(models):
    ref = run(models, {})
    same = run(models, {2: lambda c: c.set_prompt(A)})
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(ref, same))
    new = run(models, {2: lambda c: c.set_prompt(B, blend_blocks=1, interp="slerp")})
    assert [o.prompt for o in new] == [A, A, B, B, B]
    assert all(torch.equal(x.latents, y.latents) for x, y in zip(ref[:2], new[:2]))
    assert not torch.equal(ref[2].latents, new[2].latents)
    with pytest.raises(ValueError, match="empty prompt"):
        StreamControl().set_prompt("  ")


def test_tau_change_and_stop(models):
    outs = run(models, {2: lambda c: c.set_tau(math.inf)}, router="random", accept_rate=1.0)
    assert [o.trace.accepted for o in outs] == [None, True, True, True, True]  # random routers have no tau
    outs = run(models, {2: lambda c: c.set_tau(math.inf)}, tau=-math.inf)
    assert [o.trace.accepted for o in outs] == [None, True, False, False, False]
    outs = run(models, {3: lambda c: c.stop()})
    assert len(outs) == 3
    with pytest.raises(ValueError, match="tau"):
        StreamControl().set_tau(float("nan"))
