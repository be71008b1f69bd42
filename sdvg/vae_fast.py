"""Exact, faster CPU equivalents of diffusers' Wan VAE modules, swapped in place by `fast_modules`.

The streaming decoder and encoder (`sdvg.vae`) call `fast_modules` on the VAE they drive. Every swap computes what the
module it replaces computes, to fp32 round-off (tested against diffusers' own decode): it only skips work that adds
exactly zero (branches with zero weights, channels nothing reads or writes) or takes a faster route through the same
maths (a norm's sum of squares written out, a conv on the taps that are nonzero, a nearest upsampling folded into
the conv after it). The embedded world's designed VAE is where most of this pays; a real Wan VAE gets the faster norm
and the per-frame 1x1 convs.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def fast_modules(module: torch.nn.Module) -> int:
    """Swap (in place) diffusers' Wan VAE modules for exact, faster equivalents; returns how many were swapped.

    - `WanRMS_norm`: `F.normalize` over the channel dim of a 5-D tensor is a strided reduction that runs ~10x slower
      on CPU than the same sum of squares written out.
    - `WanCausalConv3d` with no weight on past frames (temporal kernel 1, or past taps all zero as in the embedded
      world's VAE): a 2-D conv per frame, since PyTorch's CPU conv3d falls back to a slow path for these shapes.
    - A residual block whose last conv is all zero, or an attention block whose output projection is (the embedded
      world's VAE is made of such identity blocks): the shortcut alone, skipping the branch that adds exactly zero.
    - Convs (per-frame, and the upsamplers' nearest + conv) on only the input channels they have weights for and
      the output channels they write (the world's VAE uses a few of Wan's channels); exact for finite inputs. Each
      module keeps its plan (which channels and taps its weights use) until a weight changes.
    Parameters, names and state dicts are unchanged (the classes are subclasses).
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import (WanAttentionBlock, WanCausalConv3d, WanResample,
                                                                  WanRMS_norm, WanResidualBlock)

    fast_norm, frame_conv, skip_residual, skip_attention, sliced_up, pointwise_residual = _fast_classes()
    zero = lambda conv: not conv.weight.detach().any() and (conv.bias is None or not conv.bias.detach().any())  # noqa: E731
    n = 0
    for m in module.modules():
        if type(m) is WanResidualBlock and zero(m.conv2):
            m.__class__ = skip_residual
            n += 1
        elif type(m) is WanResidualBlock and _is_pointwise(m):
            m.__class__ = pointwise_residual
            n += 1
        elif type(m) is WanAttentionBlock and zero(m.proj):
            m.__class__ = skip_attention
            n += 1
        elif type(m) is WanResample and m.mode in ("upsample2d", "upsample3d") and type(m.resample) is torch.nn.Sequential:
            m.resample.__class__ = sliced_up
            n += 1
        elif type(m) is WanRMS_norm:
            m.__class__ = fast_norm
            n += 1
        elif type(m) is WanCausalConv3d and m.stride == (1, 1, 1) and (
                m.kernel_size[0] == 1 or not m.weight[:, :, :-1].detach().any()):
            m.__class__ = frame_conv
            n += 1
    return n


@functools.cache
def _fast_classes():
    from diffusers.models.autoencoders.autoencoder_kl_wan import (WanAttentionBlock, WanCausalConv3d, WanRMS_norm,
                                                                  WanResidualBlock)

    class FastRMSNorm(WanRMS_norm):
        """Bias-free and channel-first with some zero gains (the world's decoder reads 3 of norm_out's 12 channels):
        the other channels are written as zeros, not computed."""

        def live_channels(self) -> torch.Tensor | slice | None:
            """The channels with a nonzero gain, or None when that is all of them."""
            g = self.gamma.detach().view(-1)
            live = _as_index(g.ne(0).nonzero().squeeze(1))
            return None if isinstance(live, slice) and live == slice(0, g.numel()) else live

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            xf = x.float()
            norm = xf.pow(2).sum(1 if self.channel_first else -1, keepdim=True).sqrt().clamp_min(1e-12)
            live = None
            if self.channel_first and not torch.is_tensor(self.bias) and not (
                    torch.is_grad_enabled() and self.gamma.requires_grad):  # a zero gain still learns
                live = _memo(self, "live", self.live_channels)
            if live is not None:
                out = x.new_zeros(x.shape)
                out[:, live] = (xf[:, live] / norm).to(x.dtype).mul_(self.scale).mul_(self.gamma[live])
                return out
            out = (xf / norm).to(x.dtype).mul_(self.scale).mul_(self.gamma)
            return out + self.bias if torch.is_tensor(self.bias) else out  # diffusers' bias-free norm has bias 0.0

    class FrameConv(WanCausalConv3d):
        """Only the current-frame taps (the caller guarantees the others are zero); the cache is not needed."""

        def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
            b, c, t, h, w = x.shape
            pad = (self._padding[2], self._padding[0])
            plan = _memo(self, "conv", lambda: conv_plan(self.weight[:, :, -1], self.bias, pad))
            y = sparse_conv2d(x.transpose(1, 2).reshape(b * t, c, h, w), self.weight[:, :, -1], self.bias, pad,
                              plan=plan)
            return y.view(b, t, *y.shape[1:]).transpose(1, 2)

    class SlicedUpConv(torch.nn.Sequential):
        """A Wan resample's (nearest upsample, conv2d) on the input channels the conv reads and the output channels
        it writes: the embedded world's VAE carries a few used channels in Wan's wider layout."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            up, conv = self[0], self[1]
            scale = up.scale_factor if isinstance(up.scale_factor, (tuple, list)) else (up.scale_factor,) * 2
            if getattr(up, "mode", None) not in ("nearest", "nearest-exact") or tuple(scale) != (2.0, 2.0):
                return conv(up(x))
            plan = _memo(self, "conv", lambda: conv_plan(conv.weight, conv.bias, conv.padding, upsample=True))
            return sparse_conv2d(x, conv.weight, conv.bias, conv.padding, upsample=True, plan=plan)

    class SkipResidual(WanResidualBlock):
        """The shortcut alone (the branch's last conv is zero); its two causal convs' cache slots are stepped over."""

        def forward(self, x: torch.Tensor, feat_cache=None, feat_idx=[0]) -> torch.Tensor:  # noqa: B006 (diffusers' signature)
            if feat_cache is not None:
                feat_idx[0] += 2
            return self.conv_shortcut(x)

    class PointwiseResidual(WanResidualBlock):
        """A residual block whose convs read only the current frame's centre tap (the world's per-pixel shading):
        norm, SiLU and 1x1 conv on the channels with a nonzero gain, written into the rows conv2 writes. Exact: a
        channel with gain 0 is SiLU(0) = 0 after its norm, and the norm's sum of squares skips only zeros."""

        def forward(self, x: torch.Tensor, feat_cache=None, feat_idx=[0]) -> torch.Tensor:  # noqa: B006 (diffusers' signature)
            if feat_cache is not None:
                feat_idx[0] += 2
            first = _memo(self, "first", lambda: _pointwise_plan(torch.arange(x.shape[1]), self.norm1, self.conv1))
            second = _memo(self, "second", lambda: _pointwise_plan(_written(self.conv1), self.norm2, self.conv2))
            h = _pointwise(x, *first)
            h = _pointwise(h, *second)
            rows = second[1]
            out = x.clone()
            out[:, rows] += h
            return out

    class SkipAttention(WanAttentionBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    return FastRMSNorm, FrameConv, SkipResidual, SkipAttention, SlicedUpConv, PointwiseResidual


def _is_pointwise(block) -> bool:
    """A residual block with an identity shortcut, bias-free norms and convs that read only the current frame's
    centre tap."""
    def centre_only(conv) -> bool:
        w = conv.weight.detach().clone()
        w[:, :, -1, w.shape[3] // 2, w.shape[4] // 2] = 0
        return not w.any()

    return (isinstance(block.conv_shortcut, torch.nn.Identity) and centre_only(block.conv1) and centre_only(block.conv2)
            and not torch.is_tensor(block.norm1.bias) and not torch.is_tensor(block.norm2.bias))


def _written(conv) -> torch.Tensor:
    """Output channels a conv writes (a nonzero weight row or bias)."""
    w = conv.weight.detach().flatten(1).ne(0).any(1)
    if conv.bias is not None:
        w = w | conv.bias.detach().ne(0)
    return w.nonzero().squeeze(1)


def _memo(module: torch.nn.Module, key: str, make):
    """A plan derived from a module's weights (which channels and taps are nonzero, and the weight slices they
    need), kept on the module until a weight changes (in place, replaced, moved or cast): deriving it takes ~20
    small ops, more than the sliced convs it plans. Weights that train are sliced afresh every call."""
    params = list(module.parameters())
    if any(p.requires_grad for p in params) and torch.is_grad_enabled():
        return make()
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
    memo = module.__dict__.setdefault("_sdvg_plans", {})
    hit = memo.get(key)
    if hit is None or hit[0] != stamp:
        hit = memo[key] = (stamp, make())
    return hit[1]


def _pointwise_plan(channels: torch.Tensor, norm, conv) -> tuple:
    """(live channels' positions in x, the rows the conv writes, their gains, the conv's centre taps on them, its
    bias on the rows) for `_pointwise` over an x that holds `channels` of v."""
    gain = norm.gamma.view(-1)[channels]
    live = gain.detach().ne(0).nonzero().squeeze(1)
    rows = _written(conv)
    w = conv.weight[rows][:, channels[live], -1, conv.weight.shape[3] // 2, conv.weight.shape[4] // 2]
    bias = conv.bias[rows].view(1, -1, 1, 1, 1) if conv.bias is not None else None
    return _as_index(live), _as_index(rows), (norm.scale * gain[live]).view(1, -1, 1, 1, 1), w, bias


def _as_index(idx: torch.Tensor) -> torch.Tensor | slice:
    """Channel indices as a slice when they are a run (a view instead of a gather: same values, no copy)."""
    n = idx.numel()
    if n and bool((idx == torch.arange(int(idx[0]), int(idx[0]) + n)).all()):
        return slice(int(idx[0]), int(idx[0]) + n)
    return idx


def _pointwise(x: torch.Tensor, live: torch.Tensor | slice, rows: torch.Tensor | slice, gain: torch.Tensor,
               w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv(SiLU(norm(v))) at the rows the conv writes (`_pointwise_plan`), for a conv that reads only the current
    frame's centre tap; x holds some channels of v, whose other channels are zero (they add nothing to the norm)."""
    xf = x.float()
    scale = xf.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    a = F.silu((xf[:, live] / scale).mul_(gain), inplace=True).to(x.dtype)  # in place: full-size frames, ~1.5 MB each
    y = torch.einsum("oc,bcthw->bothw", w, a)
    return y.add_(bias) if bias is not None else y


def _up2(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2 upsampling of [N, C, H, W] (as Wan's resample does it), by expansion (~3x faster on CPU)."""
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


_FOLD = torch.tensor([[[1.0, 0, 0], [0, 1, 1], [0, 0, 0]],   # parity 0: low-res offset (-1, 0, +1) <- tap (-1, 0, +1)
                      [[0, 0, 0], [1, 1, 0], [0, 0, 1]]])  # parity 1


def _fold_up2(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv's taps [O, I, 3, 3] folded for `_conv_after_up2` [4O, I, 3, 3]: each output parity (a, b) gets
    the taps that land on each low-resolution offset after a nearest x2 upsampling."""
    fold = _FOLD.to(weight)
    return torch.einsum("ayi,bxj,ocij->oabcyx", fold, fold, weight).reshape(-1, *weight.shape[1:])


def _conv_after_up2(x: torch.Tensor, folded: torch.Tensor) -> torch.Tensor:
    """conv3x3(nearest x2 (x), padding 1) without building the upsampled input: a 3x3 conv of x with the folded
    taps (`_fold_up2`), one output per parity, then a pixel shuffle."""
    return F.pixel_shuffle(F.conv2d(x, folded, padding=1), 2)


def conv_plan(weight: torch.Tensor, bias: torch.Tensor | None, padding, upsample: bool = False) -> list | None:
    """What `sparse_conv2d` computes for these weights: None for a plain conv, else one (inputs, rows, weight
    slice, how) per group of inputs: how = "point" (read through the centre tap alone: a 1x1 conv), "up3" (a 3x3
    conv after the upsampling, its taps folded by `_fold_up2`) or "conv"."""
    wd = weight.detach()
    kh, kw = wd.shape[-2:]
    taps = wd.transpose(0, 1).flatten(2).ne(0)  # [in, out, kh*kw]
    read = taps.any(2).any(1)
    writes = wd.flatten(1).ne(0).any(1) | (bias.detach().ne(0) if bias is not None else False)
    if kh * kw == 1 or (bool(read.all()) and bool(writes.all())):
        return None
    off_centre = taps.clone()
    off_centre[..., (kh // 2) * kw + kw // 2] = False
    full = off_centre.any(2).any(1)  # inputs read through other taps than the centre
    point = read & ~full
    plan = []
    for inputs, pointwise in ((full, False), (point, True)):
        if not bool(inputs.any()):
            continue
        idx = inputs.nonzero().squeeze(1)
        rows = taps[idx].any(2).any(0).nonzero().squeeze(1)  # outputs these inputs reach
        w = weight[rows][:, idx]
        idx, rows = _as_index(idx), _as_index(rows)
        if pointwise:  # a 1x1 conv commutes with the nearest upsampling: run it first, on 4x fewer pixels
            plan.append((idx, rows, w[:, :, kh // 2:kh // 2 + 1, kw // 2:kw // 2 + 1], "point"))
        elif upsample and (kh, kw) == (3, 3) and padding in (1, (1, 1)):
            plan.append((idx, rows, _fold_up2(w), "up3"))
        else:
            plan.append((idx, rows, w, "conv"))
    return plan


def sparse_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding,
                  upsample: bool = False, plan: list | None | str = "derive") -> torch.Tensor:
    """`conv2d(x, weight, bias)` (after a nearest x2 upsampling of x with `upsample`, as Wan's resample does)
    computed on the output channels it writes and the input channels it reads, with the inputs read through the
    centre tap alone as a 1x1 conv (the world's VAE carries a few used channels in Wan's wider layout and passes
    colours through centre taps). Exact for finite inputs, to fp32 round-off. `plan`: `conv_plan` of these weights
    (derived here when not given)."""
    before = _up2 if upsample else (lambda v: v)
    if isinstance(plan, str):
        plan = conv_plan(weight, bias, padding, upsample)
    if plan is None:
        return F.conv2d(before(x), weight, bias, padding=padding)
    scale = 2 if upsample else 1
    out = x.new_zeros(x.shape[0], weight.shape[0], x.shape[2] * scale, x.shape[3] * scale)
    if bias is not None:
        out += bias.view(1, -1, 1, 1)
    for idx, rows, w, how in plan:
        if how == "point":
            out[:, rows] += before(F.conv2d(x[:, idx], w))
        elif how == "up3":
            out[:, rows] += _conv_after_up2(x[:, idx], w)
        else:
            out[:, rows] += F.conv2d(before(x[:, idx]), w, None, padding=padding)
    return out
