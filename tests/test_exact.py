"""Exact speculative sampling (mode "exact"): identical models accept every step and give target-only bit for bit;
with a different drafter the outputs are distributed as target-only's (checked statistically over many seeds)."""
from __future__ import annotations


import pytest
import torch

from sdvg.loading import load_tiny_models

PROMPT = "a red circle moving right"


def test_identical_drafter_and_target_accept_every_step():
    m = load_tiny_models(seed=0, num_blocks=3)
    m.drafter = m.target
    out = m.pipeline()(PROMPT, mode="exact", seed=4)
    ref = m.pipeline()(PROMPT, mode="target", seed=4)
    assert [b.steps_accepted for b in out.trace.blocks] == [3, 3, 3]
    # the batched verification forward rounds like a batch, not like one sample: equal to fp32 round-off
    torch.testing.assert_close(out.latents, ref.latents, atol=1e-4, rtol=1e-4)
    assert [b.target_forwards for b in out.trace.blocks] == [1, 2, 2]  # one batched verify (+ its commit)


def test_batched_verification_equals_one_state_at_a_time():
    m = load_tiny_models(seed=0, num_blocks=3)
    pipe = m.pipeline(tau=0.001)
    pipe(PROMPT, seed=2)  # a video, so the target's cache holds context
    t = pipe.target
    t.reset()
    t.set_context(m.text_encoder.encode([PROMPT]))
    t.commit(0, torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    xs = [torch.randn(1, 4, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    batch = t.x0_batch(1, xs, [0, 1, 2])
    for i, x in enumerate(xs):
        torch.testing.assert_close(batch[i:i + 1], t.x0_at(1, x, i), atol=1e-5, rtol=1e-5)


def test_outputs_are_distributed_as_target_only():
    """Per-video mean and mean square of block 0's latents over 300 seeds: exact vs target-only, within 4.5 standard
    errors; the drafter alone is far off (the test can tell distributions apart)."""
    m = load_tiny_models(seed=0, num_blocks=1)
    pipe = m.pipeline()
    stats = {k: [] for k in ("target", "exact", "draft")}
    accepted = []
    for seed in range(300):
        for mode in stats:
            out = pipe(PROMPT, mode=mode, seed=1000 + seed)
            z = out.latents.double()
            stats[mode].append(torch.stack([z.mean(), (z * z).mean()]))
            if mode == "exact":
                accepted.append(out.trace.blocks[0].steps_accepted)
    t, e, d = (torch.stack(stats[k]) for k in ("target", "exact", "draft"))
    se = torch.sqrt(t.var(0) / len(t) + e.var(0) / len(e))
    assert ((t.mean(0) - e.mean(0)).abs() / se).max() < 4.5
    assert ((t.mean(0) - d.mean(0)).abs() / torch.sqrt(t.var(0) / len(t) + d.var(0) / len(d))).max() > 6
    assert 0 <= min(accepted) and max(accepted) <= 3


def test_exact_needs_one_schedule():
    from sdvg.config import KREA_SAMPLER

    m = load_tiny_models(seed=0, num_blocks=1)
    m.target_sampler = KREA_SAMPLER
    with pytest.raises(ValueError, match="same schedule"):
        m.pipeline()(PROMPT, mode="exact", seed=0)
