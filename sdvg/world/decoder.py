"""The world's VAE decoder: the latent design's renderer, written into a standard Wan `AutoencoderKLWan`.

A latent frame holds, per 8x8 cell, the distance to the nearest object at 2x2 sub-cells for the first and last
frame of its 4-frame window, the nearest object's colour and the background colour (`sdvg.world.data`). Decoding:

1. time: the window's 4 frames interpolate its first and last distance linearly (Wan's two time convs);
2. space: a learned upsampler (`FieldUpsampler`: three nearest x2 + 3x3 conv stages, Wan's resample convs, and two
   small SiLU refinements in Wan's residual blocks) turns the 16x16 sub-cell distances into a 64x64 field
   f ~ 0.5 - (distance in pixels);
3. colours (the middle block): the background is averaged over the frame (it is one colour by design; the average
   removes a generator's cell-to-cell noise), then both colours are snapped to the palette, whose 8 colours are the
   8 high/low patterns of the 3 channels: binarise each channel (a steep clamp), one indicator per pattern (a ReLU
   of their signed sum), and the palette colour of the pattern that fires (two fire half each on a tie);
4. shading, per pixel (the last resolution's second residual block): alpha = clamp(f, 0, 1) and
   pixel = bg + relu(v - K(1 - alpha)) - relu(-v - K(1 - alpha)), v = obj - bg, K = 2
   (exactly bg + alpha v where alpha is 0 or 1, a blend of the two colours on the one-pixel edge), with the ReLUs
   and the clamp softened as `shade` writes them.

Why designed, not trained end to end: a decoder trained by regression on pixels learns a blurred average wherever its
input is uncertain (the trained one scored 0.58 on real latents); this one thresholds a distance field and snaps
colours, so the mean of several plausible latents (what a few-step generator predicts where it is unsure) still
renders as one sharp shape in palette colours.

`write_decoder` places it in Wan's modules: the ReLUs are SiLUs after an RMS norm whose gain is large
(SiLU(s u)/s ~ relu(u)); the refinements' SiLUs are plain ones beside a constant channel that makes the norm the
identity; linear pass-through channels sit beside a large constant channel (the norm then divides by
~the constant and SiLU(u) ~ u/2); the middle block's attention, with zero queries and keys, is the frame average;
every other residual branch is zero (`sdvg.vae_fast.fast_modules` skips those exactly).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

K_SHADE = 2.0  # > the largest |obj - bg| per channel in latent units ([-1, 1] colours)
SHARP = 200.0  # SiLU(SHARP u) / SHARP stands for relu(u): error <= 0.28 / SHARP (the colour snap)
# The shading's two steps use gentler ones, which keep SiLU's inputs below its overflow (|s u| < 88, past which
# PyTorch's CPU SiLU runs ~6x slower) on nearly every pixel of a 64x64 frame; `shade` computes exactly these:
ALPHA_SHARP = 8.0  # alpha = soft clamp of the field to [0, 1]: it differs from clamp by <= 0.035, at the knees only
SHADE_SHARP = 20.0  # the colour blend, whose inputs lie in [-3.8, 1.8]: its error cancels where a pixel is all
# object (SiLU(x) - SiLU(-x) = x) and is < 0.004 (of [-1, 1]) where it is all background
_BIG = 1e5  # the constant channel beside the linear pass-through channels
WIDTHS = (8, 16)  # channels of the field upsampler at 16x16 and 32x32
REFINE = (16, 4, 8)  # its 16x16 refinement's hidden channels; c2's channels at 64x64, their refinement's hidden ones
DECODER_BASE_DIM = 12
SNAP_SLOPE = 4.0  # a colour channel (in [-1, 1]) binarises beyond +-0.125; the palette's are beyond +-0.4
_COL = 8  # first of the 6 snapped colour channels (obj, bg), from the middle block to the 32x32 resample
_PRE = 27  # first channel of the colour snap's pre-activations in the 48-channel middle block


class FieldUpsampler(nn.Module):
    """Sub-cell distances [N, 4, h, w] (raw latent units: pixels / SDF_CLIP) -> field [N, 1, 8h, 8w] ~ 0.5 - pixels.

    Three nearest x2 + 3x3 conv stages (Wan's resample convs, `c0`, `c1`, `c2`) and two small SiLU refinements in
    the form of Wan's residual blocks (x + conv(SiLU(conv(SiLU(x))))): a 3x3 one at 16x16 (`r0`, `r1`) and a
    per-pixel one at 64x64 that turns `c2`'s channels into the field (`p0`, `p1`). Why not linear: a linear map of
    distances sampled every 4 px rounds a triangle's corners and a small square's (decoded from their true
    latents, held-out triangles scored 0.04-0.21 for shape); the refinements restore them."""

    def __init__(self, widths: tuple[int, int] = WIDTHS, refine: tuple[int, int, int] = REFINE) -> None:
        super().__init__()
        (w0, w1), (h16, m, h64) = widths, refine
        self.c0 = nn.Conv2d(4, w0, 3, padding=1)
        self.r0, self.r1 = nn.Conv2d(w0, h16, 3, padding=1), nn.Conv2d(h16, w0, 3, padding=1)
        self.c1 = nn.Conv2d(w0, w1, 3, padding=1)
        self.c2 = nn.Conv2d(w1, m, 3, padding=1)
        self.p0, self.p1 = nn.Conv2d(m, h64, 1), nn.Conv2d(h64, 1, 1)
        for last in (self.r1, self.p1):  # start as the linear upsampler
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        up = lambda v: F.interpolate(v, scale_factor=2, mode="nearest")  # noqa: E731
        x = self.c0(up(d))
        x = x + self.r1(F.silu(self.r0(F.silu(x))))
        g = self.c2(up(self.c1(up(x))))
        return g[:, :1] + self.p1(F.silu(self.p0(F.silu(g))))


def _palette() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(signs [8, 3], offsets [8], colours [8, 3] in [-1, 1]): pattern k's indicator is relu(signs[k] . b + offsets[k])
    for the binarised channels b; it is 1 on its own pattern and 0 on every other one."""
    from sdvg.world.grammar import COLOURS

    cols = torch.tensor(list(COLOURS.values())) * 2 - 1
    bits = (cols > 0).float()
    if len({tuple(b.tolist()) for b in bits}) != len(cols):
        raise ValueError("the palette must be the 8 high/low patterns of the RGB channels")
    return bits * 2 - 1, 1 - bits.sum(1), cols


def snap_colours(c: torch.Tensor) -> torch.Tensor:
    """Step 3 in plain PyTorch: colours [N, 3, ...] in [-1, 1] -> the nearest palette colours (by pattern)."""
    signs, offsets, cols = _palette()
    b = (SNAP_SLOPE * c + 0.5).clamp(0, 1)
    ind = F.relu(torch.einsum("kc,nc...->nk...", signs, b) + offsets.view(1, -1, *[1] * (c.dim() - 2)))
    return torch.einsum("kc,nk...->nc...", cols, ind)


def soft_relu(u: torch.Tensor, sharp: float) -> torch.Tensor:
    """SiLU(sharp u) / sharp: the decoder's ReLU (what an RMS-normed SiLU with a large gain computes)."""
    return F.silu(sharp * u) / sharp


def shade(field: torch.Tensor, obj: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """The per-pixel shading (step 4) in plain PyTorch; field [N,1,H,W], colours [N,3,H,W] in [-1, 1]."""
    alpha = soft_relu(field, ALPHA_SHARP) - soft_relu(field - 1, ALPHA_SHARP)
    gap = K_SHADE * (1 - alpha)
    v = obj - bg
    return bg + soft_relu(v - gap, SHADE_SHARP) - soft_relu(-v - gap, SHADE_SHARP)


def field_loss(field: torch.Tensor, target: torch.Tensor, lo: float = -2.0, hi: float = 3.0) -> torch.Tensor:
    """Least squares to the target field clamped to [lo, hi]; beyond it, only being on the wrong side costs."""
    err = field - target.clamp(lo, hi)
    err = torch.where(target >= hi, err.clamp(max=0), torch.where(target <= lo, err.clamp(min=0), err))
    return (err ** 2).mean()


def fit_upsampler(batches, steps: int, lr: float = 3e-3, log=None) -> FieldUpsampler:
    """Fit the field upsampler on (sub-cell distances [N,4,8,8], pixel field target [N,1,64,64]) batches."""
    up = FieldUpsampler()
    opt = torch.optim.Adam(up.parameters(), lr)
    for step in range(steps):
        d, target = next(batches)
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = field_loss(up(d), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None and (step % 250 == 0 or step == steps - 1):
            log(step=step, field_mse=round(loss.item(), 5))
    return up.eval().requires_grad_(False)


# ---------------------------------------------------------------- into a Wan VAE
def _eye(dst: torch.Tensor, out0: int, in0: int, n: int, value: float = 1.0) -> None:
    """dst[out0 + k, in0 + k] = value at the last time tap (5-D weights) and the spatial centre, for k < n."""
    cy, cx = (s // 2 for s in dst.shape[-2:])
    for k in range(n):
        if dst.dim() == 5:
            dst[out0 + k, in0 + k, -1, cy, cx] = value
        else:
            dst[out0 + k, in0 + k, cy, cx] = value


def _gains(norm, *spans: tuple[int, int, float]) -> None:
    """An RMS norm's gains: zero but for gain[start:stop] = value per span (channels it does not pass become 0)."""
    g = norm.gamma.view(-1)
    g.zero_()
    for start, stop, value in spans:
        g[start:stop] = value


def _silu_gain(norm, sharp: float = 1.0) -> float:
    """The gain that makes norm + SiLU compute SiLU(sharp x) beside the _BIG channel (the norm divides by ~BIG /
    sqrt(C)): SiLU itself at sharp 1, a ReLU times sharp at a large sharp."""
    return sharp * _BIG / norm.gamma.numel() ** 0.5


def _linear_gain(conv) -> float:
    """What undoes an RMS norm (gain 1) + SiLU, linear beside the _BIG channel (they map x to ~x sqrt(C) / 2 BIG)."""
    return 2 * _BIG / conv.weight.shape[1] ** 0.5


def _snap_block(res) -> None:
    """Step 3 in a residual block at latent resolution: norm1 + SiLU = the binarising ReLUs, conv1 = the pattern
    indicators' pre-activations, norm2 + SiLU = their ReLUs, conv2 = the palette colours into channels _COL.."""
    signs, offsets, cols = _palette()
    _gains(res.norm1, (_PRE, _PRE + 12, _silu_gain(res.norm1, SHARP)))
    cw, cb = res.conv1.weight[:, :, -1, 1, 1], res.conv1.bias
    for which in range(2):  # obj, bg
        for k in range(8):
            row = 8 * which + k
            for ch in range(3):
                src = _PRE + 2 * (3 * which + ch)  # relu(su + 1/2) - relu(su - 1/2) = the binarised channel
                cw[row, src] = signs[k, ch] / SHARP
                cw[row, src + 1] = -signs[k, ch] / SHARP
            cb[row] = offsets[k]
    cb[16] = _BIG
    _gains(res.norm2, (0, 16, _silu_gain(res.norm2, SHARP)))
    ow = res.conv2.weight[:, :, -1, 1, 1]
    for which in range(2):
        for ch in range(3):
            ow[_COL + 3 * which + ch, 8 * which:8 * which + 8] = cols[:, ch] / SHARP


@torch.no_grad()
def write_decoder(vae, up: FieldUpsampler) -> None:
    """Overwrite `vae`'s decoder and post_quant_conv (built with VAE_KWARGS) with the designed decoder."""
    dec = vae.decoder
    for p in list(dec.parameters()) + list(vae.post_quant_conv.parameters()):
        p.zero_()
    for name, p in dec.named_parameters():
        if name.endswith("gamma"):
            p.fill_(1.0)
    _eye(vae.post_quant_conv.weight, 0, 0, 14)
    # conv_in: [d_start 0-3 (slot x), d_end 4-7 (slot y), (snapped colours _COL.._COL+5), obj su + 1/2 and su - 1/2 per channel
    # (s = SNAP_SLOPE) at _PRE.._PRE+5, (the same of the frame's mean bg at _PRE+6..+11), BIG, raw bg]; the latent's
    # order is d_end, d_start, obj, bg. The middle block's attention averages the background over the frame (its
    # queries and keys are zero: uniform weights), its second residual block snaps both colours into _COL.., where
    # they stay (the first latent frame skips the time convs, so the layout must not change there).
    _eye(dec.conv_in.weight, 0, 4, 4)
    _eye(dec.conv_in.weight, 4, 0, 4)
    for k in range(3):
        for j, off in enumerate((0.5, -0.5)):
            dec.conv_in.weight[_PRE + 2 * k + j, 8 + k, -1, 1, 1] = SNAP_SLOPE
            dec.conv_in.bias[_PRE + 2 * k + j] = off
    dec.conv_in.bias[_PRE + 12] = _BIG
    _eye(dec.conv_in.weight, _PRE + 13, 11, 3)
    attn = dec.mid_block.attentions[0]
    c = attn.norm.gamma.shape[0]
    for k in range(3):  # v = the raw bg (undoing the norm's 1 / ~BIG); proj: the mean's pre-activations
        attn.to_qkv.weight[2 * c + k, _PRE + 13 + k] = _BIG / c ** 0.5
        for j, off in enumerate((0.5, -0.5)):
            attn.proj.weight[_PRE + 6 + 2 * k + j, k] = SNAP_SLOPE
            attn.proj.bias[_PRE + 6 + 2 * k + j] = off
    _snap_block(dec.mid_block.resnets[1])
    up0, up1, up2 = (b.upsamplers[0] for b in dec.up_blocks[:3])
    w0, w1 = up.c0.out_channels, up.c1.out_channels
    # up0 time conv: latent frame -> 2 frames, each with slots x, y = the distance at a = (0, 1/3) and (2/3, 1)
    tw, half = up0.time_conv.weight, up0.time_conv.weight.shape[0] // 2
    for frame, pair in enumerate(((0.0, 1 / 3), (2 / 3, 1.0))):
        for slot, a in enumerate(pair):
            _eye(tw, frame * half + 4 * slot, 0, 4, 1 - a)
            _eye(tw, frame * half + 4 * slot, 4, 4, a)
        _eye(tw, frame * half + _COL, _COL, 6)
    # up0 resample (16x16): c0 per slot; colours nearest; a constant channel for the refinement's norms
    rw, rb = up0.resample[1].weight, up0.resample[1].bias
    for slot in range(2):
        rw[slot * w0:(slot + 1) * w0, slot * 4:(slot + 1) * 4] = up.c0.weight
        rb[slot * w0:(slot + 1) * w0] = up.c0.bias
    _eye(rw, 2 * w0, _COL, 6)
    rb[2 * w0 + 6] = _BIG
    # up_blocks[1].resnets[0] (16x16): its shortcut passes the slots and colours; its branch is the 3x3 refinement
    # (r0, r1), per slot. Beside the constant channel each norm is x -> x (gain BIG / sqrt(C)), so SiLU is SiLU.
    res = dec.up_blocks[1].resnets[0]
    _eye(res.conv_shortcut.weight, 0, 0, 2 * w0 + 6)
    h16 = up.r0.out_channels
    for norm, n in ((res.norm1, 2 * w0), (res.norm2, 2 * h16)):
        _gains(norm, (0, n, _silu_gain(norm)))
    for slot in range(2):
        res.conv1.weight[slot * h16:(slot + 1) * h16, slot * w0:(slot + 1) * w0, -1] = up.r0.weight
        res.conv1.bias[slot * h16:(slot + 1) * h16] = up.r0.bias
        res.conv2.weight[slot * w0:(slot + 1) * w0, slot * h16:(slot + 1) * h16, -1] = up.r1.weight
        res.conv2.bias[slot * w0:(slot + 1) * w0] = up.r1.bias
    res.conv1.bias[2 * h16] = _BIG
    # up1 time conv: even frame keeps slot x, odd frame moves slot y into slot x; colours to both
    tw, half = up1.time_conv.weight, up1.time_conv.weight.shape[0] // 2
    _eye(tw, 0, 0, w0)
    _eye(tw, half, w0, w0)
    _eye(tw, 2 * w0, 2 * w0, 6)
    _eye(tw, half + 2 * w0, 2 * w0, 6)
    # up1 resample (32x32): c1; colours nearest
    rw, rb = up1.resample[1].weight, up1.resample[1].bias
    rw[:w1, :w0] = up.c1.weight
    rb[:w1] = up.c1.bias
    _eye(rw, w1, 2 * w0, 6)
    # up2 resample (64x64): [g0, g0 - 1, g1.. (c2's m channels), obj 3, bg 3 (the pixel once shaded), BIG]
    m, h64 = up.c2.out_channels, up.p0.out_channels
    obj = 1 + m
    rw, rb = up2.resample[1].weight, up2.resample[1].bias
    if obj + 7 > rw.shape[0]:
        raise ValueError(f"the decoder's {rw.shape[0]} channels at 64x64 hold at most {rw.shape[0] - 8} field "
                         f"channels, not {m}")
    rw[0:1, :w1], rb[0] = up.c2.weight[:1], up.c2.bias[0]
    rw[1:2, :w1], rb[1] = up.c2.weight[:1], up.c2.bias[0] - 1
    rw[2:1 + m, :w1], rb[2:1 + m] = up.c2.weight[1:], up.c2.bias[1:]
    _eye(rw, obj, w1, 6)
    rb[obj + 6] = _BIG
    # up_blocks[3].resnets[0], per pixel: the field refinement (p0, p1) reads g (not g0 - 1: zero weights) and is
    # added to g0 and g0 - 1, which become the field f and f - 1
    res = dec.up_blocks[3].resnets[0]
    _gains(res.norm1, (0, 1 + m, _silu_gain(res.norm1)))
    cw = res.conv1.weight[:, :, -1, 1, 1]
    cw[:h64, 0], cw[:h64, 2:1 + m] = up.p0.weight[:, 0, 0, 0], up.p0.weight[:, 1:, 0, 0]
    res.conv1.bias[:h64] = up.p0.bias
    res.conv1.bias[h64] = _BIG
    _gains(res.norm2, (0, h64, _silu_gain(res.norm2)))
    for row in (0, 1):
        res.conv2.weight[row, :h64, -1, 1, 1] = up.p1.weight[0, :, 0, 0]
        res.conv2.bias[row] = up.p1.bias[0]
    # shading in up_blocks[3].resnets[1]: norm1 + SiLU = relu on f, f - 1 and linear on the colours
    res = dec.up_blocks[3].resnets[1]
    _gains(res.norm1, (0, 2, _silu_gain(res.norm1, ALPHA_SHARP)), (obj, obj + 6, 1.0))
    # conv1 -> [p+ 0-2, p- 3-5, BIG 6]: p+- = +-(obj - bg) - K + K alpha, alpha = (relu(f) - relu(f - 1))
    cw, cb = res.conv1.weight[:, :, -1, 1, 1], res.conv1.bias
    lin = _linear_gain(res.conv1)
    for ch in range(3):
        for sign, row in ((1.0, ch), (-1.0, 3 + ch)):
            cw[row, obj + ch] = sign * lin
            cw[row, obj + 3 + ch] = -sign * lin
            cw[row, 0] = K_SHADE / ALPHA_SHARP
            cw[row, 1] = -K_SHADE / ALPHA_SHARP
            cb[row] = -K_SHADE
    cb[6] = _BIG
    _gains(res.norm2, (0, 6, _silu_gain(res.norm2, SHADE_SHARP)))
    # conv2 -> the bg channels: bg + relu(p+) - relu(p-), the pixel
    ow = res.conv2.weight[:, :, -1, 1, 1]
    for ch in range(3):
        ow[obj + 3 + ch, ch] = 1 / SHADE_SHARP
        ow[obj + 3 + ch, 3 + ch] = -1 / SHADE_SHARP
    # norm_out + SiLU + conv_out: linear read of the pixel (the VAE clamps to [-1, 1])
    _gains(dec.norm_out, (obj + 3, obj + 6, 1.0))
    _eye(dec.conv_out.weight, 0, obj + 3, 3, _linear_gain(dec.conv_out))
