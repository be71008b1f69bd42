"""The world's learned frame critic (its "ImageReward"): prompt + one frame -> predicted block quality.

The router's eyes. It sees one decoded frame at a time (as ImageReward does) and the prompt, read through the
grammar into a fixed attribute vector (colours, shapes, sizes, motions of up to two objects and the background) plus
per-pixel distances to the prompt's colours. It is trained (sdvg.world.train, stage "critic") to regress the
evaluator's quality of the block the frame belongs to, on decoded samples of both models, VAE reconstructions of real
videos, corrupted frames and frames paired with a near-miss prompt: the best one-frame guess of block quality, so that
the router's min over a block's frames flags the worst block. Like ImageReward the score is unbounded and higher is
better; it never calls the evaluator at inference.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from sdvg.world.grammar import COLOURS, MOTIONS, SHAPES, SIZES, Scene, parse

_COL = list(COLOURS)
_SLOT = len(_COL) * 2 + 1 + len(SHAPES) + len(SIZES) + len(MOTIONS)  # colour, turns(+none), shape, size, motion
COND_DIM = len(_COL) + 2 * (_SLOT + 1)  # background + two object slots (+ presence flag)
COLOUR_CHANNELS = 5  # distance to background, object 1 colour / new colour, object 2 colour / new colour


def prompt_features(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """(attribute vector [COND_DIM], palette [5, 3] with NaN rows for absent colours)."""
    v = torch.zeros(COND_DIM)
    v[_COL.index(scene.background)] = 1
    pal = torch.full((COLOUR_CHANNELS, 3), float("nan"))
    pal[0] = torch.tensor(COLOURS[scene.background])
    for k, o in enumerate(scene.objects[:2]):
        base = len(_COL) + k * (_SLOT + 1)
        v[base] = 1
        i = base + 1
        v[i + _COL.index(o.colour)] = 1
        i += len(_COL)
        v[i + (_COL.index(o.turns) if o.turns else len(_COL))] = 1
        i += len(_COL) + 1
        v[i + SHAPES.index(o.shape)] = 1
        i += len(SHAPES)
        v[i + list(SIZES).index(o.size)] = 1
        i += len(SIZES)
        v[i + MOTIONS.index(o.motion)] = 1
        pal[1 + 2 * k] = torch.tensor(COLOURS[o.colour])
        if o.turns:
            pal[2 + 2 * k] = torch.tensor(COLOURS[o.turns])
    return v, pal


@functools.lru_cache(maxsize=64)
def _features(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`prompt_features` of a prompt text, kept: the router scores every block of a video with the same prompt, and
    building the vector takes ~30 small tensor writes (read only: callers must not modify them)."""
    return prompt_features(parse(prompt))


def net_input(frames: torch.Tensor, pal: torch.Tensor) -> torch.Tensor:
    """Frames [N,3,H,W] in [0,1] and palettes [N or 1,5,3] -> the CNN's input [N,8,H,W]: the frames in [-1,1] and
    every pixel's RGB distance to each prompt colour (2.0 where absent), laid out channels-last (the CPU convolution
    runs ~3x faster on 8 input channels that way)."""
    n, k = frames.shape[0], pal.shape[1]
    x = torch.empty((n, 3 + k, *frames.shape[2:]), dtype=frames.dtype, device=frames.device,
                    memory_format=torch.channels_last).fill_(2.0)
    x[:, :3] = frames * 2 - 1
    used = (~pal.isnan().any(-1)).any(0).nonzero().flatten().tolist()  # colours absent from every palette stay 2.0
    p = pal[:, used].nan_to_num(9.0)[..., None, None]
    # one colour channel at a time: a norm over a strided dim of a broadcast tensor is ~5x slower on a CPU
    d2 = sum((frames[:, None, c] - p[:, :, c]).square() for c in range(3))
    x[:, [3 + i for i in used]] = d2.sqrt().clamp(max=2.0)
    return x


def half_resolution(frames: torch.Tensor) -> torch.Tensor:
    """2x2 means [N,C,H,W] -> [N,C,H/2,W/2]: what avg_pool2d computes, in ~1/3 of its CPU time at these sizes."""
    return (frames[..., ::2, ::2] + frames[..., 1::2, ::2] + frames[..., ::2, 1::2] + frames[..., 1::2, 1::2]) * 0.25


class CriticNet(nn.Module):
    """Small FiLM-conditioned CNN; ~60k parameters. It reads frames at half resolution (2x2 means, 32x32): the
    shapes it judges are 12-24 px across, and a quarter of the pixels makes it ~2.3x faster (1.7 vs 3.8 ms for a
    block's 12 frames on one CPU thread), which keeps the decode + critic of a block under 1/8 of the target's."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        chans = [3 + COLOUR_CHANNELS, w, w, 2 * w, 2 * w]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2, padding=1) for i in range(4))
        self.film = nn.ModuleList(nn.Linear(COND_DIM, 2 * chans[i + 1]) for i in range(4))
        self.head = nn.Sequential(nn.Linear(2 * w * 2 + COND_DIM, 64), nn.SiLU(), nn.Linear(64, 1))

    def folded_convs(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each convolution's (weight, bias) with one prompt's FiLM folded in (cond [1, COND_DIM]): the same maths
        as FiLM on the feature maps to fp32 round-off, and the product never touches them."""
        out = []
        for conv, film in zip(self.convs, self.film):
            g, b = film(cond).chunk(2, -1)
            out.append((conv.weight * (1 + g[0]).view(-1, 1, 1, 1), conv.bias * (1 + g[0]) + b[0]))
        return out

    def forward(self, frames: torch.Tensor, cond: torch.Tensor, pal: torch.Tensor,
                folded: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """frames [N,3,64,64] in [0,1]; cond [N or 1, COND_DIM] and pal [N or 1, 5, 3] (`prompt_features`). With one
        prompt for all frames (the scorer's case) FiLM is folded into the convolutions (`folded_convs`, which a
        caller scoring many blocks of one prompt passes in, computed once)."""
        x = net_input(half_resolution(frames), pal)
        if folded is None and cond.shape[0] == 1:
            folded = self.folded_convs(cond)
        for i, (conv, film) in enumerate(zip(self.convs, self.film)):
            if folded is not None:
                x = F.conv2d(x, *folded[i], stride=conv.stride, padding=conv.padding)
            else:
                g, b = film(cond).chunk(2, -1)
                x = conv(x) * (1 + g[..., None, None]) + b[..., None, None]
            x = F.silu(x)
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3)), cond.expand(x.shape[0], -1)], -1)
        return self.head(pooled).squeeze(-1)


class WorldCritic:
    """Scorer protocol: `score(frames [F,3,H,W] in [0,1], prompt) -> Tensor[F]` (higher is better)."""

    name = "world-critic"

    def __init__(self, net: CriticNet, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.net = net.to(device=device, dtype=dtype).eval()
        self.device, self.dtype = torch.device(device), dtype
        # prompt -> the net's convolutions with its FiLM folded in: kept, as every block of a video has the same prompt
        # (~0.2 of the ~1.3 ms a block's scoring takes; so the net must not change once wrapped); lru_cache is
        # thread-safe, for a server's sessions
        self._folded = functools.lru_cache(maxsize=64)(
            lambda prompt: self.net.folded_convs(_features(prompt)[0].to(self.device, self.dtype)[None]))

    @classmethod
    def from_file(cls, path: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> WorldCritic:
        from safetensors.torch import load_file

        net = CriticNet()
        net.load_state_dict(load_file(str(path)))
        return cls(net, device, dtype)

    @torch.no_grad()
    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames [F,3,H,W], got shape {tuple(frames.shape)}")
        v, pal = _features(prompt)
        f = frames.to(self.device, self.dtype).clamp(0, 1).contiguous()  # decoded frames arrive as a permuted view
        if f.shape[-2:] != (64, 64):
            f = F.interpolate(f, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        return self.net(f, v.to(f)[None], pal.to(f)[None], self._folded(prompt)).float().cpu()
