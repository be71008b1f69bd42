"""Streaming Wan VAE: block-by-block decode equals diffusers' whole-video decode; snapshot/restore; file loading."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from sdvg.vae import (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, StreamingDecoder, decoded_frames, load_wan_vae,
                      save_wan_vae)

Z = 4


def make_vae(seed: int = 0) -> AutoencoderKLWan:
    """Plain diffusers modules (a StreamingDecoder swaps its decoder's modules for the fast ones in place)."""
    torch.manual_seed(seed)
    v = AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                         temperal_downsample=[False, True, True])
    return v.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vae():
    return make_vae()


@pytest.fixture(scope="module")
def stats():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(Z, generator=g) * 0.3).tolist(), (torch.rand(Z, generator=g) + 0.5).tolist()


def latents(frames: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, Z, frames, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_blocks_equal_whole_video_decode(vae, stats):
    mean, std = stats
    z = latents(6)
    dec = StreamingDecoder(vae, mean, std)
    parts = [dec.decode(z[:, :, i:i + 3]) for i in range(0, 6, 3)]
    assert [p.shape[0] for p in parts] == [9, 12] == [decoded_frames(3, i == 0) for i in range(2)]
    ours = torch.cat(parts)
    raw = z * torch.tensor(std).view(1, -1, 1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1, 1)
    ref = make_vae().decode(raw).sample[0].permute(1, 0, 2, 3)  # diffusers as is: [-1, 1], frame by frame
    assert ours.shape == (21, 3, 32, 32) and ours.dtype == torch.float32
    assert 0.0 <= ours.min() and ours.max() <= 1.0
    torch.testing.assert_close(ours, (ref + 1) / 2, atol=1e-6, rtol=0)
    dec.reset()
    torch.testing.assert_close(dec.decode(z[:, :, :3]), parts[0], atol=0, rtol=0)


@pytest.mark.parametrize("zero_past_taps", [False, True])
def test_fast_modules_and_chunks_are_exact(stats, zero_past_taps):
    """Any split of the latents into blocks, with the fast modules, equals diffusers' own decode; convs whose past
    taps are zero (the embedded world's decoder) run per frame."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    from sdvg.vae_fast import fast_modules

    ref_vae = make_vae(5)
    if zero_past_taps:
        for m in ref_vae.decoder.modules():
            if isinstance(m, WanCausalConv3d):
                m.weight[:, :, :-1] = 0
    mean, std = stats
    z = latents(7, seed=9)
    raw = z * torch.tensor(std).view(1, -1, 1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1, 1)
    ref = (ref_vae.decode(raw).sample[0].permute(1, 0, 2, 3) + 1) / 2
    assert fast_modules(ref_vae.decoder) > 0
    per_frame = [type(m).__name__ == "FrameConv" for m in ref_vae.decoder.modules() if isinstance(m, WanCausalConv3d)]
    assert all(per_frame) if zero_past_taps else 0 < sum(per_frame) < len(per_frame)  # else only the 1x1x1 ones
    dec = StreamingDecoder(ref_vae, mean, std)
    for split in ([7], [1, 6], [3, 3, 1], [2, 1, 4]):  # the first latent frame always decodes alone
        torch.testing.assert_close(decode_split(dec, z, split), ref, atol=2e-6, rtol=0)


def test_fast_module_plans_follow_weight_changes(stats):
    """The fast modules keep the plan of which channels their weights use; weights loaded in place after a decode
    are planned afresh (a stale plan would skip the channels the new weights read)."""
    mean, std = stats
    z = latents(3, seed=4)
    sparse = make_vae(5)
    for m in sparse.decoder.modules():
        if type(m).__name__ == "WanResample" and m.mode.startswith("upsample"):
            m.resample[1].weight[:, ::2] = 0  # half the inputs unread: the plan slices them away
    dec = StreamingDecoder(sparse, mean, std)
    dec.decode(z)
    sparse.load_state_dict(make_vae(6).state_dict())
    dec.reset()
    torch.testing.assert_close(dec.decode(z), StreamingDecoder(make_vae(6), mean, std).decode(z), atol=0, rtol=0)


def test_sparse_conv2d_is_exact():
    """The fast path's conv on the channels a weight uses (unread inputs, unwritten outputs, centre-tap-only inputs
    as a 1x1 conv) equals conv2d on everything."""
    import torch.nn.functional as F

    from sdvg.vae_fast import sparse_conv2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 9, generator=g)
    w = torch.randn(5, 6, 3, 3, generator=g)
    w[1] = 0  # an output nobody writes
    w[:, 2] = 0  # an input nobody reads
    w[:, 4, :, :] = 0
    w[:, 4, 1, 1] = 0.5  # an input read through its centre tap only
    b = torch.randn(5, generator=g)
    b[1] = 0
    up = torch.nn.Upsample(scale_factor=2, mode="nearest")
    torch.testing.assert_close(sparse_conv2d(x, w, b, 1), F.conv2d(x, w, b, padding=1), atol=1e-5, rtol=0)
    torch.testing.assert_close(sparse_conv2d(x, w, b, 1, upsample=True), F.conv2d(up(x), w, b, padding=1),
                               atol=1e-5, rtol=0)


def decode_split(dec: StreamingDecoder, z: torch.Tensor, split: list[int]) -> torch.Tensor:
    """A fresh video decoded in calls of `split` latent frames each."""
    dec.reset()
    parts, i = [], 0
    for n in split:
        parts.append(dec.decode(z[:, :, i:i + n]))
        i += n
    return torch.cat(parts)


def test_snapshot_restore_is_shallow_and_exact(vae, stats):
    dec = StreamingDecoder(vae, *stats)
    a, x, y = latents(3, 3), latents(3, 4), latents(3, 5)
    dec.decode(a)
    snap = dec.snapshot()
    kept = [t.clone() if isinstance(t, torch.Tensor) else t for t in snap.cache]
    dec.decode(x)  # a rejected draft
    # the snapshot holds the very tensors of the cache at that time, and decoding did not write into them
    assert all((k == s) if isinstance(k, str) or k is None else torch.equal(k, s) for k, s in zip(kept, snap.cache))
    dec.restore(snap)
    after_restore = dec.decode(y)
    dec.restore(snap)  # a snapshot can be restored more than once
    again = dec.decode(y)
    fresh = StreamingDecoder(vae, *stats)
    fresh.decode(a)
    torch.testing.assert_close(after_restore, fresh.decode(y), atol=0, rtol=0)
    torch.testing.assert_close(again, after_restore, atol=0, rtol=0)
    assert dec.frames == 6


def test_snapshot_of_empty_state(vae, stats):
    dec = StreamingDecoder(vae, *stats)
    snap = dec.snapshot()
    first = dec.decode(latents(3))
    dec.restore(snap)
    torch.testing.assert_close(dec.decode(latents(3)), first, atol=0, rtol=0)
    assert first.shape[0] == 9


@pytest.mark.parametrize("fmt,name", [("original", "Wan2.1_VAE.pth"), ("diffusers", "vae")])
def test_load_from_files(tmp_path, vae, fmt, name):
    path = save_wan_vae(vae, tmp_path / name, fmt)
    dec = load_wan_vae(path)
    sd = dec.vae.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in vae.state_dict().items())
    ref = StreamingDecoder(vae, *dec_stats(dec))
    torch.testing.assert_close(dec.decode(latents(3)), ref.decode(latents(3)), atol=0, rtol=0)
    half = load_wan_vae(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.decode(latents(3)).dtype == torch.float32


def dec_stats(dec):
    return dec._mean.flatten().tolist(), dec._std.flatten().tolist()


def test_wan21_stats_are_builtin(tmp_path):
    """A full-size Wan2.1 VAE decodes with the Wan2.1 latent statistics (checked on meta: no weights needed)."""
    from sdvg.vae import _latent_stats

    with torch.device("meta"):
        v = AutoencoderKLWan()
    mean, std = _latent_stats(v)
    assert tuple(mean) == WAN21_LATENTS_MEAN and tuple(std) == WAN21_LATENTS_STD and len(mean) == 16


def test_inspect_vae_file(tmp_path, vae):
    from sdvg.checkpoints import detect_format, inspect_checkpoint

    path = save_wan_vae(vae, tmp_path / "Wan2.1_VAE.pth")
    assert detect_format(path).format == "wan-vae"
    r = inspect_checkpoint(path)
    assert r.ok and r.info.kind == "vae" and r.info.num_tensors == len(vae.state_dict())


def test_load_errors(tmp_path, vae):
    sd = torch.load(save_wan_vae(vae, tmp_path / "v.pth"), weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("decoder.head")}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*3 missing tensors \(decoder\.head\.0\.gamma"):
        load_wan_vae(tmp_path / "partial.pth")
    torch.save({"patch_embedding.weight": torch.zeros(2, 4, 1, 2, 2)}, tmp_path / "dit.pth")
    with pytest.raises(ValueError, match="not a Wan VAE"):
        load_wan_vae(tmp_path / "dit.pth")
    with pytest.raises(FileNotFoundError):
        load_wan_vae(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="latents"):
        StreamingDecoder(vae, [0.0] * 16, [1.0] * 16)


def test_streaming_encode_equals_whole_video_encode(vae, stats):
    """Block-by-block encode (1 + 8 frames, then 4, then 8) equals diffusers' whole-video encode (posterior mean,
    normalised); a snapshot/restore replays a block exactly; bad frame counts fail early with the rule."""
    from sdvg.vae import StreamingEncoder

    mean, std = stats
    frames = torch.rand(21, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = vae.encode(frames.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mean
    ref = (ref - torch.tensor(mean).view(1, -1, 1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1, 1)
    enc = StreamingDecoder(make_vae(), mean, std).encoder()
    assert isinstance(enc, StreamingEncoder)
    parts = [enc.encode(frames[:9])]
    snap = enc.snapshot()
    parts.append(enc.encode(frames[9:13]))
    enc.restore(snap)
    parts[-1] = enc.encode(frames[9:13])
    parts.append(enc.encode(frames[13:21]))
    out = torch.cat(parts, 2)
    assert out.shape == ref.shape == (1, Z, 6, 4, 4)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    enc.reset()
    with pytest.raises(ValueError, match="1 \\+ 4k frames first"):
        enc.encode(frames[:4])


def _krea_resample_forward(self, x, feat_cache=None, feat_idx=[0]):
    """Krea Realtime's temporal upsampler, written out from its maths for the test: zeros (not 'Rep') after the
    first frame, and the cache padding `where(prev == 0, 0, cur)` for a one-frame chunk."""
    b, c, t, h, w = x.shape
    if self.mode == "upsample3d" and feat_cache is not None:
        idx = feat_idx[0]
        if feat_cache[idx] is None:
            feat_cache[idx] = torch.zeros(b, c, 2, h, w)
        else:
            cache_x = x[:, :, -2:].clone()
            if cache_x.shape[2] < 2:
                cache_x = torch.cat([torch.where(feat_cache[idx][:, :, -1:] == 0, 0, cache_x), cache_x], 2)
            x = self.time_conv(x, feat_cache[idx])
            feat_cache[idx] = cache_x
            x = x.reshape(b, 2, c, t, h, w)
            x = torch.stack((x[:, 0], x[:, 1]), 3).reshape(b, c, t * 2, h, w)
        feat_idx[0] += 1
    t = x.shape[2]
    y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


def test_krea_rule_matches_a_frame_by_frame_reference(stats, monkeypatch):
    """rule="krea" equals diffusers' frame-by-frame decode with Krea's upsampler, for any block split; it differs
    from upstream Wan from the fourth latent frame on, and equals it before."""
    from diffusers.models.autoencoders import autoencoder_kl_wan as akw

    mean, std = stats
    z = latents(9, seed=4)
    raw = z * torch.tensor(std).view(1, -1, 1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1, 1)
    wan = (make_vae(3).decode(raw).sample[0].permute(1, 0, 2, 3) + 1) / 2
    with monkeypatch.context() as m:
        m.setattr(akw.WanResample, "forward", _krea_resample_forward)
        ref = (make_vae(3).decode(raw).sample[0].permute(1, 0, 2, 3) + 1) / 2
    dec = StreamingDecoder(make_vae(3), mean, std, rule="krea")
    for split in ([9], [3, 3, 3], [1, 2, 6]):
        torch.testing.assert_close(decode_split(dec, z, split), ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(ref[:9], wan[:9], atol=2e-6, rtol=0)  # latent frames 0-2: 1 + 4 + 4 frames
    assert (ref[13:] - wan[13:]).abs().max() > 1e-3
    assert dec.fork().rule == "krea" and dec.fork(rule="wan").rule == "wan"
    with pytest.raises(ValueError, match="decoder rule"):
        StreamingDecoder(make_vae(3), mean, std, rule="krae")
