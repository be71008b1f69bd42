"""Krea Realtime's recompute loop (re-encoded anchor, 5-pass schedule, Krea's decoder) against an independent
computation of the same maths, and drafter/target pairs whose schedules differ."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

import pytest
import torch

from sdvg.config import KREA_SAMPLER, CacheConfig, SamplerConfig, model_preset
from sdvg.loading import load_tiny_models
from sdvg.sampler import add_noise, block_noise, handoff_step, schedule_table, timesteps, to_x0

PROMPT = "a red circle moving right"
K = 3  # Krea's kv_cache_num_frames


def krea_models(num_blocks: int = 5, anchor: str = "reencode"):
    m = load_tiny_models(seed=0, num_blocks=num_blocks)
    m.target_sampler = KREA_SAMPLER
    m.target_cache = CacheConfig(policy="recompute", recompute_frames=K, anchor=anchor)
    m.decoder_rule = "krea"
    return m


def krea_reference(m, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Krea's `GenerationSession.generate_block`, written out without sdvg's KV cache or BlockModel: each block's
    context window (the first latent frame, or once it has left the window, the oldest of the last 1 + 4(K - 1)
    decoded frames re-encoded alone) and the block are run jointly, block-causally, at every step."""
    dit, fpb = m.target, m.video.frames_per_block
    ctx = m.text_encoder.encode([PROMPT])
    t_list, table = timesteps(KREA_SAMPLER), schedule_table(KREA_SAMPLER)
    dec = m.decoder.fork(rule="krea")
    enc = dec.encoder()
    h, w = m.video.latent_hw
    lat, frames, pixels = [], [], deque(maxlen=1 + 4 * (K - 1))
    for b in range(m.video.num_blocks):
        noise, step_noises = block_noise(seed, b, (1, dit.cfg.in_dim, fpb, h, w), len(t_list))
        window = None
        if b:
            clean = torch.cat(lat, 2)
            tail = clean[:, :, 1:][:, :, -(K - 1):]
            if (b - 1) * fpb < K:
                first = clean[:, :, :1]
            else:
                enc.reset()
                first = enc.encode(pixels[0])
            window = torch.cat([first, tail], 2)
        x = noise
        for i, t in enumerate(t_list):
            inp = x if window is None else torch.cat([window, x], 2)
            tt = torch.full((1, inp.shape[2]), float(t))
            tt[:, :inp.shape[2] - fpb] = 0.0
            with torch.no_grad():
                v = dit(inp, tt, ctx, block_frames=fpb)[:, :, -fpb:]
            x0 = to_x0(v, x, t, table)
            if i < len(t_list) - 1:
                x = add_noise(x0, step_noises[i], t_list[i + 1], table)
        lat.append(x0)
        f = dec.decode(x0)
        pixels.extend(f.split(1))
        frames.append(f)
    return torch.cat(frames), torch.cat(lat, 2)


def test_krea_target_matches_an_independent_computation():
    m = krea_models()
    out = m.pipeline()(PROMPT, mode="target", seed=5)
    ref_frames, ref_lat = krea_reference(m, seed=5)
    torch.testing.assert_close(out.latents, ref_lat, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.frames, ref_frames, atol=2e-5, rtol=1e-4)
    assert out.trace.target_forwards == 5 * 5 + 4  # 5 passes per block, one cache rebuild per later block
    # the re-encoded anchor matters from block 2 on (block 1's window still holds the first frame)
    latent = krea_models(anchor="latent").pipeline()(PROMPT, mode="target", seed=5)
    assert torch.equal(latent.latents[:, :, :6], out.latents[:, :, :6])
    assert (latent.latents[:, :, 6:] - out.latents[:, :, 6:]).abs().max() > 1e-3


@pytest.mark.parametrize("context", ["own", "emitted"])
def test_krea_sdvg_invariants_hold_with_different_schedules(context):
    """A 4-step drafter and a 5-pass Krea target: tau = +inf is the target-only video, tau = -inf the drafter's
    (with the target's block 0), bit for bit, under both drafter contexts."""
    m = krea_models(num_blocks=4)
    m.drafter_cache = CacheConfig(policy="recompute", recompute_frames=K)
    target = m.pipeline()(PROMPT, mode="target", seed=2)
    out = m.pipeline(tau=math.inf)(PROMPT, seed=2, drafter_context=context)
    assert torch.equal(out.frames, target.frames) and torch.equal(out.latents, target.latents)
    assert out.trace.drafter_forwards > 0 and all(b.target_forwards >= 5 for b in out.trace.blocks)
    acc = m.pipeline(tau=-math.inf)(PROMPT, seed=2, drafter_context=context)
    assert acc.trace.marks == "-AAA" and torch.equal(acc.latents[:, :, :3], target.latents[:, :, :3])


def test_rejected_draft_frames_feed_the_drafter_anchor_under_own_context():
    """Under `own` the drafter re-encodes the decoded frames of its own drafts (which it keeps even when rejected);
    under `emitted`, those of the emitted video: with every draft rejected the two differ from block 3 on, and under
    `emitted` the drafter's context is exactly the target's video."""
    m = krea_models(num_blocks=5)
    m.drafter_cache = CacheConfig(policy="recompute", recompute_frames=K)
    own = m.pipeline(tau=math.inf)(PROMPT, seed=1, drafter_context="own")
    emitted = m.pipeline(tau=math.inf)(PROMPT, seed=1, drafter_context="emitted")
    assert torch.equal(own.latents, emitted.latents)  # the emitted video is the target's either way
    assert own.trace.blocks[3].score != emitted.trace.blocks[3].score


def test_stitching_across_schedules():
    d, t = timesteps(SamplerConfig()), timesteps(KREA_SAMPLER)
    assert [handoff_step(d, t, k) for k in (1, 2, 3)] == [1, 2, 3]  # shared prefix: the same step
    other = timesteps(SamplerConfig(denoising_steps=(1000, 800, 400), warp=False))
    assert [handoff_step(d, other, k) for k in (1, 2, 3)] == [1, 1, 2]  # 937.5 -> 800, 833.3 -> 800, 625 -> 400
    with pytest.raises(ValueError, match="fewer stitch steps"):
        handoff_step(d, timesteps(SamplerConfig(denoising_steps=(1000, 900), warp=False)), 3)
    m = krea_models(num_blocks=3)
    out = m.pipeline()(PROMPT, mode="stitch", seed=3, stitch_steps=2)
    assert [b.drafter_forwards for b in out.trace.blocks[1:]] == [3, 3]  # 2 steps + its append commit
    assert [b.target_forwards for b in out.trace.blocks] == [3, 4, 4]  # 5 - 2 passes (+ a cache rebuild)
    m.target_sampler = SamplerConfig(denoising_steps=(1000, 800, 400), warp=False)
    out = m.pipeline()(PROMPT, mode="stitch", seed=3, stitch_steps=2)  # re-noised to t = 800: 2 target steps
    assert [b.target_forwards for b in out.trace.blocks] == [2, 3, 3]


def test_krea_preset():
    p = model_preset("krea-realtime-14b")
    assert p.dit == "wan2.1-14b" and p.decoder_rule == "krea" and p.cache.policy == "recompute"
    assert [round(float(x), 1) for x in timesteps(p.sampler)] == [1000.0, 937.5, 833.3, 625.0, 0.0]
    assert model_preset("self-forcing-1.3b").sampler == SamplerConfig()
    with pytest.raises(ValueError, match="unknown model preset"):
        model_preset("krea-14b")
    assert replace(p.cache, anchor="latent").anchor == "latent"
