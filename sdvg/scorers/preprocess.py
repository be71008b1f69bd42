"""Pillow-exact image preprocessing on tensors (any device, batched).

Reward models such as ImageReward were trained and are run on `PIL.Image.resize(..., BICUBIC)` outputs. Pillow's
resampler is not `F.interpolate`: it works on uint8 in fixed point (22 fractional bits), runs a horizontal pass, rounds
to uint8, then a vertical pass and rounds again. Both passes are reproduced here in float64 over integer-valued
operands (every sum stays below 2**53, so they are exact) and the result matches Pillow bit for bit
(`tests/test_imagereward.py` checks this against Pillow on random images). Each pass is a short banded sum (K taps,
K <= 2*ceil(2*scale)+1) rather than a dense matrix product, and only the crop window is computed: every output pixel
depends on its own row/column of coefficients alone, so cropping after or before the resize is identical.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c fixed point for 8-bit images
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _bicubic(x: float, a: float = -0.5) -> float:
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@lru_cache(maxsize=64)
def pil_bicubic_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's BICUBIC coefficients as (first input index [out], integer weights [out, K] in float64).

    Follows `precompute_coeffs` + `normalize_coeffs_8bpc`: the filter support widens by the scale when
    downscaling (antialias), each row is normalised in double, then rounded half away from zero to 22-bit fixed
    point. Output pixel o reads inputs start[o] .. start[o]+K-1 (weights past the row's end are 0).
    """
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ss = 1.0 / filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    start = torch.zeros(out_size, dtype=torch.long)
    w = torch.zeros(out_size, ksize, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ks = [_bicubic((x - center + 0.5) * ss) for x in range(xmin, xmax)]
        total = sum(ks)
        start[xx] = xmin
        for i, k in enumerate(ks):
            v = (k / total if total != 0.0 else k) * (1 << PRECISION_BITS)
            w[xx, i] = float(int(v + 0.5) if v >= 0 else int(v - 0.5))
    return start, w


def pil_bicubic_coeffs(in_size: int, out_size: int) -> torch.Tensor:
    """The same coefficients as a dense `[out_size, in_size]` matrix (for inspection and tests)."""
    start, w = pil_bicubic_taps(in_size, out_size)
    dense = torch.zeros(out_size, in_size + w.shape[1], dtype=torch.float64)
    dense.scatter_(1, start[:, None] + torch.arange(w.shape[1]), w)
    return dense[:, :in_size]


def _pass(x: torch.Tensor, start: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """One Pillow pass along `dim` of a uint8 tensor: a K-tap banded sum in float64 (integer operands, so exact),
    then Pillow's `clip8((sum + 2**21) >> 22)`, returned as uint8. K shifted gathers keep memory output-sized."""
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = len(start)
    acc = None
    for j in range(w.shape[1]):
        t = x.index_select(dim, (start + j).clamp(max=n - 1)).to(torch.float64).mul_(w[:, j].view(shape))
        acc = t if acc is None else acc.add_(t)
    acc.add_(float(1 << (PRECISION_BITS - 1))).div_(float(1 << PRECISION_BITS))
    return acc.floor_().clamp_(0, 255).to(torch.uint8)


def to_uint8_values(frames: torch.Tensor) -> torch.Tensor:
    """[0,1] floats -> the uint8 image `Image.fromarray((x * 255).round().astype(uint8))` would hold (product and
    round-half-even in float32, as numpy does for float32 frames; out-of-range values are clamped first)."""
    if frames.dtype == torch.uint8:
        return frames
    return frames.float().clamp(0, 1).mul_(255.0).round_().to(torch.uint8)


def pil_resize(img: torch.Tensor, size: tuple[int, int], crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Pillow `Image.resize((w, h), BICUBIC)` of a uint8 `img[..., H, W]`, then optionally `.crop(l, t, r, b)`."""
    out_h, out_w = size
    in_h, in_w = img.shape[-2:]
    left, top, right, bottom = crop if crop is not None else (0, 0, out_w, out_h)
    x = img if img.dtype == torch.uint8 else img.round().clamp(0, 255).to(torch.uint8)
    dev = x.device
    if out_h != in_h:  # only the input rows the kept output rows read (Pillow's horizontal pass skips the rest too)
        sv, wv = (t[top:bottom] for t in pil_bicubic_taps(in_h, out_h))
        r0, r1 = int(sv[0]), min(int(sv[-1]) + wv.shape[1], in_h)
        x, sv = x[..., r0:r1, :], sv - r0
    if out_w != in_w:  # Pillow's horizontal pass comes first; its output is rounded to uint8
        sh, wh = (t[left:right].to(dev) for t in pil_bicubic_taps(in_w, out_w))
        x = _pass(x, sh, wh, -1)
    else:
        x = x[..., left:right]
    if out_h != in_h:
        x = _pass(x, sv.to(dev), wv.to(dev), -2)
    else:
        x = x[..., top:bottom, :]
    return x


def short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(size)` with an int: short side -> size, long side -> int(size * long / short)."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def center_crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """torchvision `CenterCrop(size)` offsets (Python `round`, i.e. half to even) as a PIL box (l, t, r, b)."""
    if h < size or w < size:
        raise ValueError(f"resized image {w}x{h} is smaller than the {size}px crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return left, top, left + size, top + size


def clip_normalize(x01: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """ToTensor's float32 `/255` result -> Normalize(mean, std), in float32 as torchvision does it."""
    m = torch.tensor(mean, dtype=torch.float32, device=x01.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x01.device).view(3, 1, 1)
    return (x01 - m) / s


def reward_preprocess(frames: torch.Tensor, size: int = 224, full_frame: bool = False, *, crop: int | None = None,
                      mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """`[F,3,H,W]` in [0,1] -> `[F,3,size,size]` float32, as ImageReward's Compose does it on `Image.fromarray`.

    Reference: Resize(size, BICUBIC) (short side) -> CenterCrop(size) -> ToTensor -> Normalize(CLIP mean/std), on a
    uint8 PIL image (frames are quantised with round(x*255) first, as `Image.fromarray` of a rounded array would be).
    `crop` (default `size`) and `mean`/`std` let CLIP-style processors (shortest_edge / crop_size) reuse this.
    `full_frame=True` (not the reference) resizes the *long* side to `size` and pads the short side symmetrically with
    the normalisation mean (0 after Normalize), so no part of a wide frame is dropped: the 224 centre crop of an
    832x480 frame keeps only 58% of its width.
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [F,3,H,W], got {tuple(frames.shape)}")
    if frames.device.type == "cpu" and frames.shape[0] > 1:  # per frame: full-size temporaries stay cache-sized
        return torch.cat([reward_preprocess(f[None], size, full_frame, crop=crop, mean=mean, std=std)
                          for f in frames])
    h, w = frames.shape[-2:]
    x = to_uint8_values(frames)
    if not full_frame:
        rh, rw = short_side_size(h, w, size)
        x = pil_resize(x, (rh, rw), center_crop_box(rh, rw, crop or size))
        return clip_normalize(x.to(torch.float32) / 255.0, mean, std)
    size = crop or size
    if w >= h:
        rh, rw = max(1, int(size * h / w)), size
    else:
        rh, rw = size, max(1, int(size * w / h))
    x = clip_normalize(pil_resize(x, (rh, rw)).to(torch.float32) / 255.0, mean, std)
    out = x.new_zeros(x.shape[0], 3, size, size)
    top, left = (size - rh) // 2, (size - rw) // 2
    out[:, :, top:top + rh, left:left + rw] = x
    return out


__all__ = ["pil_bicubic_taps", "pil_bicubic_coeffs", "pil_resize", "to_uint8_values", "short_side_size", "center_crop_box",
           "clip_normalize", "reward_preprocess", "CLIP_MEAN", "CLIP_STD"]
