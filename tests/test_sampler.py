"""Schedule, keyed noise, BlockModel (append / recompute, T-Stitch chaining, errors) and KV-cache visibility."""
import pytest
import torch

from sdvg.cache import KVCache
from sdvg.config import CacheConfig, SamplerConfig, VideoConfig, dit_preset
from sdvg.sampler import BlockModel, add_noise, block_noise, schedule_table, sigma_of, timesteps, to_x0
from sdvg.wan import WanDiT

VIDEO = VideoConfig(height=32, width=48, num_blocks=3)
SHAPE = (1, 4, 3, 4, 6)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    return WanDiT(dit_preset("tiny")).eval()


def _model(dit, policy="append", **kw):
    bm = BlockModel(dit, VIDEO, cache=CacheConfig(policy=policy, recompute_frames=3), **kw)
    bm.set_context(torch.randn(1, 5, dit.cfg.text_dim, generator=torch.Generator().manual_seed(3)))
    return bm


def _video(bm, seed=7):
    outs = []
    for b in range(VIDEO.num_blocks):
        n, sn = block_noise(seed, b, SHAPE, bm.num_steps)
        outs.append(bm.denoise(b, n, sn))
        bm.commit(b, outs[-1])
    return torch.cat(outs, 2)


def test_schedule_is_derived_from_the_shifted_table():
    t = timesteps(SamplerConfig())
    assert t.dtype == torch.float32
    assert torch.allclose(t, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]), atol=1e-3)
    table = schedule_table()
    assert sigma_of(937.5, table).item() == pytest.approx(0.9375, abs=1e-6)
    assert timesteps(SamplerConfig(warp=False)).tolist() == [1000.0, 750.0, 500.0, 250.0]


def test_x0_and_renoise_maths():
    table = schedule_table()
    x, v, eps = torch.randn(3, 2, 5).unbind(0)
    assert torch.allclose(to_x0(v, x, 625.0, table), x - 0.625 * v, atol=1e-6)
    assert torch.allclose(add_noise(x, eps, 833.3333, table), (1 - 5 / 6) * x + 5 / 6 * eps, atol=1e-6)


def test_keyed_noise_is_deterministic_and_independent():
    a, sa = block_noise(1, 2, SHAPE, 4)
    b, sb = block_noise(1, 2, SHAPE, 4)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb)) and len(sa) == 3
    others = [block_noise(2, 2, SHAPE, 4)[0], block_noise(1, 3, SHAPE, 4)[0], sa[0], sa[1]]
    assert all(not torch.equal(a, o) for o in others)


def test_block_model_is_deterministic_and_both_policies_run(dit):
    a, b = _video(_model(dit)), _video(_model(dit))
    assert torch.equal(a, b) and a.shape == (1, 4, 9, 4, 6) and a.dtype == torch.float32
    r = _video(_model(dit, "recompute"))
    assert r.shape == a.shape and torch.allclose(r[:, :, :3], a[:, :, :3])  # block 0 has no context either way


def test_stitch_chaining_equals_a_full_denoise(dit):
    n, sn = block_noise(0, 0, SHAPE, 4)
    full = _model(dit).denoise(0, n, sn)
    bm = _model(dit)
    xk = bm.denoise(0, n, sn, stop_step=2)
    assert torch.equal(bm.denoise(0, n, sn, start_step=2, x_init=xk), full)
    states = {}
    _model(dit).denoise(0, n, sn, callback=lambda i, xt, x0: states.__setitem__(i, xt))
    assert torch.equal(states[2], xk) and torch.equal(states[0], n)


def test_lazy_batched_commit_is_bit_identical_and_cheaper(dit):
    lazy, eager = _model(dit, lazy=True), _model(dit, lazy=False)
    for bm in (lazy, eager):
        for b in range(2):
            n, sn = block_noise(5, b, SHAPE, 4)
            bm.commit(b, bm.denoise(b, n, sn) if b == 0 else n)  # block 1: any latents will do
    n, sn = block_noise(5, 2, SHAPE, 4)
    assert torch.equal(lazy.denoise(2, n, sn), eager.denoise(2, n, sn))
    assert lazy.forwards == eager.forwards - 1  # the two pending commits ran as one forward


def test_errors(dit):
    bm = _model(dit)
    n, sn = block_noise(0, 1, SHAPE, 4)
    with pytest.raises(ValueError, match="committed"):
        bm.denoise(1, n, sn)
    with pytest.raises(ValueError, match="x_init"):
        bm.denoise(0, n, sn, start_step=2)
    with pytest.raises(ValueError, match="step noises"):
        bm.denoise(0, n, sn[:1])
    with pytest.raises(ValueError, match="cache policy"):
        BlockModel(dit, VIDEO, cache=CacheConfig(policy="ring"))
    with pytest.raises(RuntimeError, match="set_context"):
        BlockModel(dit, VIDEO).denoise(0, n, sn)


def test_cache_overwrites_a_block_slot_and_honours_window_and_sinks():
    cfg = dit_preset("tiny")
    kv = lambda v: torch.full((1, 3 * 2, cfg.num_heads, cfg.head_dim), float(v))  # noqa: E731  3 frames x 2 tokens
    c = KVCache(cfg, 9, 2)
    c.write(0, 0, kv(1), kv(1))
    c.write(0, 0, kv(2), kv(2))  # the next denoising step of the same block
    assert c.visible_frames(0, 3) == [0, 1, 2] and c.visible(0, 3)[0].unique().tolist() == [2.0]
    c.write(0, 3, kv(3), kv(3))
    assert c.visible_frames(0, 3) == [0, 1, 2] and c.visible_frames(0, 6) == [0, 1, 2, 3, 4, 5]
    w = KVCache(cfg, 9, 2, window_frames=4, sink_frames=1)
    for s in (0, 3, 6):
        w.write(0, s, kv(s), kv(s))
    assert w.visible_frames(0, 9) == [0, 6, 7, 8]  # the sink plus the last 3 frames
    with pytest.raises(ValueError, match="sink_frames"):
        KVCache(cfg, 9, 2, window_frames=2, sink_frames=2)
