"""Causal Wan DiT: an independent reference forward from the Wan2.1 maths, cache vs no cache, dtypes."""
import math

import pytest
import torch
import torch.nn.functional as F

from sdvg.cache import KVCache
from sdvg.config import dit_preset
from sdvg.wan import WanDiT

CFG = dit_preset("tiny")


def reference_forward(m: WanDiT, x, t, context, block_frames):
    """Straight from the Wan2.1 equations, written independently of sdvg.wan: full sequence, explicit mask."""
    sd = {k: v.double() for k, v in m.state_dict().items()}
    cfg = m.cfg
    b, c, f, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    d, n, hd = cfg.dim, cfg.num_heads, cfg.head_dim
    lin = lambda z, k: z @ sd[k + ".weight"].T + sd[k + ".bias"]  # noqa: E731
    ln = lambda z: F.layer_norm(z, (d,), eps=cfg.eps)  # noqa: E731
    rms = lambda z, k: z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + cfg.eps) * sd[k + ".weight"]  # noqa: E731
    # patches: Conv3d with kernel == stride
    p = x.double().reshape(b, c, f, h, 2, w, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, f * h * w, c * 4)
    z = p @ sd["patch_embedding.weight"].reshape(d, -1).T + sd["patch_embedding.bias"]
    # time: float64 sinusoid, one embedding per frame
    half = cfg.freq_dim // 2
    ang = t.double().reshape(-1, 1) * torch.pow(10000.0, -torch.arange(half).double() / half)
    e = lin(F.silu(lin(torch.cat([ang.cos(), ang.sin()], 1), "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").view(b, f, 6, d)
    e = e.view(b, f, d)
    # text: zero padded to text_len, unmasked
    ctx = torch.cat([context.double(), context.new_zeros(b, cfg.text_len - context.shape[1], context.shape[2])], 1)
    ctx = lin(F.gelu(lin(ctx, "text_embedding.0"), approximate="tanh"), "text_embedding.2")
    # 3-axis RoPE
    d0, d1 = hd - 4 * (hd // 6), 2 * (hd // 6)
    pos = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    pos = pos.reshape(-1, 3).double()
    angles = torch.cat([pos[:, i:i + 1] / 10000 ** (torch.arange(0, dd, 2).double() / dd)
                        for i, dd in enumerate((d0, d1, d1))], 1)
    rot = torch.polar(torch.ones_like(angles), angles)

    def rope(q):
        qc = torch.view_as_complex(q.reshape(b, -1, n, hd // 2, 2))
        return torch.view_as_real(qc * rot[None, :, None]).reshape(b, -1, n, hd)

    blk = torch.arange(f).repeat_interleave(h * w) // block_frames
    mask = blk[:, None] >= blk[None, :]

    def attn(q, k, v, mask=None):
        s = torch.einsum("bqnd,bknd->bnqk", q, k) / math.sqrt(hd)
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf)
        return torch.einsum("bnqk,bknd->bqnd", s.softmax(-1), v).reshape(b, -1, d)

    per_frame = lambda y, mod: (y.view(b, f, h * w, d) * mod).view(b, -1, d)  # noqa: E731
    for i in range(cfg.num_layers):
        k_ = f"blocks.{i}."
        mod = (sd[k_ + "modulation"][:, None] + e0).chunk(6, dim=2)  # [b, f, 1, d] each
        y = per_frame(ln(z), 1 + mod[1]) + per_frame(torch.ones_like(z), mod[0])
        q = rope(rms(lin(y, k_ + "self_attn.q"), k_ + "self_attn.norm_q").view(b, -1, n, hd))
        k = rope(rms(lin(y, k_ + "self_attn.k"), k_ + "self_attn.norm_k").view(b, -1, n, hd))
        v = lin(y, k_ + "self_attn.v").view(b, -1, n, hd)
        z = z + per_frame(lin(attn(q, k, v, mask), k_ + "self_attn.o"), mod[2])
        y = F.layer_norm(z, (d,), sd[k_ + "norm3.weight"], sd[k_ + "norm3.bias"], cfg.eps)
        q = rms(lin(y, k_ + "cross_attn.q"), k_ + "cross_attn.norm_q").view(b, -1, n, hd)
        kc = rms(lin(ctx, k_ + "cross_attn.k"), k_ + "cross_attn.norm_k").view(b, -1, n, hd)
        vc = lin(ctx, k_ + "cross_attn.v").view(b, -1, n, hd)
        z = z + lin(attn(q, kc, vc), k_ + "cross_attn.o")
        y = per_frame(ln(z), 1 + mod[4]) + per_frame(torch.ones_like(z), mod[3])
        y = lin(F.gelu(lin(y, k_ + "ffn.0"), approximate="tanh"), k_ + "ffn.2")
        z = z + per_frame(y, mod[5])
    hm = (sd["head.modulation"][:, None] + e[:, :, None]).chunk(2, dim=2)
    out = lin(per_frame(ln(z), 1 + hm[1]) + per_frame(torch.ones_like(z), hm[0]), "head.head")
    out = out.view(b, f, h, w, 2, 2, c).permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, f, hh, ww)
    return out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return WanDiT(CFG).eval()


def _inputs(f=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, CFG.in_dim, f, 8, 12, generator=g)
    t = torch.tensor([[1000.0] * 3 + [625.0] * (f - 3)])
    ctx = torch.randn(1, 5, CFG.text_dim, generator=g)
    return x, t, ctx


def test_matches_independent_reference_forward(model):
    x, t, ctx = _inputs()
    with torch.no_grad():
        ours = model(x, t, ctx, block_frames=3)
    ref = reference_forward(model, x, t, ctx, block_frames=3)
    assert ours.shape == x.shape and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), ref, atol=2e-5, rtol=1e-5), (ours.double() - ref).abs().max()


def test_cached_blocks_equal_full_block_causal_sequence(model):
    x, _, ctx = _inputs(f=9)
    with torch.no_grad():
        tt = torch.full((1, 9), 500.0)
        full = model(x, tt, ctx, block_frames=3)
        cache = KVCache(CFG, 9, 4 * 6, 1, torch.device("cpu"), torch.float32)
        outs = [model(x[:, :, s:s + 3], tt[:, s:s + 3], ctx, cache=cache, start_frame=s) for s in (0, 3, 6)]
    assert torch.allclose(torch.cat(outs, 2), full, atol=1e-5)


def test_scalar_and_per_frame_timesteps_agree_and_per_frame_matters(model):
    x, _, ctx = _inputs(f=3)
    with torch.no_grad():
        a = model(x, torch.tensor([750.0]), ctx)
        b = model(x, torch.full((1, 3), 750.0), ctx)
        c = model(x, torch.tensor([[750.0, 750.0, 0.0]]), ctx)
    assert torch.equal(a, b)
    assert not torch.allclose(b[:, :, 2], c[:, :, 2])


def test_bf16_keeps_dtype(model):
    x, t, ctx = _inputs(f=3)
    m = WanDiT(CFG).to(torch.bfloat16).eval()
    with torch.no_grad():
        out = m(x.bfloat16(), t[:, :3], ctx.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_text_longer_than_text_len_is_an_error(model):
    x, t, _ = _inputs(f=3)
    with pytest.raises(ValueError, match="text_len"):
        model(x, t[:, :3], torch.randn(1, CFG.text_len + 1, CFG.text_dim))
