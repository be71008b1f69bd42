"""Training data for the world: random scenes rendered on the fly, and their VAE latents."""
from __future__ import annotations

import random

import numpy as np
import torch

from sdvg.world.grammar import Scene, random_scene
from sdvg.world.render import REF_FRAMES, render


def scene_stream(seed: int, heldout: bool = False, p_two: float = 0.15, p_turn: float = 0.15):
    """Endless (scene, render seed) pairs from the train (or held-out) distribution."""
    rng = random.Random(seed)
    while True:
        yield random_scene(rng, heldout, p_two, p_turn), rng.randrange(2**31)


def clip_batch(stream, batch: int, frames: int, rng: np.random.Generator) -> torch.Tensor:
    """[B, 3, frames, 64, 64] in [-1, 1] (the VAE's range), each from a random start frame of a random scene."""
    out = []
    for _ in range(batch):
        scene, s = next(stream)
        start = int(rng.integers(0, REF_FRAMES - frames + 1))
        f, _ = render(scene, frames, seed=s, start_frame=start)
        out.append(f.permute(1, 0, 2, 3))
    return torch.stack(out) * 2 - 1


def videos(stream, n: int, frames: int = REF_FRAMES) -> tuple[torch.Tensor, list[Scene], list[int]]:
    """n full videos [n, 3, T, 64, 64] in [-1, 1] with their scenes and render seeds."""
    vids, scenes, seeds = [], [], []
    for _ in range(n):
        scene, s = next(stream)
        f, _ = render(scene, frames, seed=s)
        vids.append(f.permute(1, 0, 2, 3) * 2 - 1)
        scenes.append(scene)
        seeds.append(s)
    return torch.stack(vids), scenes, seeds


# ---- latents ---------------------------------------------------------------------------------------------------
# The world's latent space is analytic: per 8x8 pixel block and per latent frame (pixel frame 0, then windows of 4
# frames, the Wan VAE's causal layout), 8 channels = mean RGB, the left/right and top/bottom luminance contrasts,
# and the change over the window of the mean luminance and of the two contrasts. Only the VAE decoder is learned
# (a Wan decoder from scratch learns this in minutes; a Wan encoder trained jointly from scratch on a CPU did not).
LATENT_CHANNELS = ("r", "g", "b", "contrast_x", "contrast_y", "d_luma", "d_contrast_x", "d_contrast_y")


def _block_feats(w: torch.Tensor, s: int) -> torch.Tensor:
    """w [B,3,n,H,W] (one window) -> [B,8,H/s,W/s]."""
    B, _, n, H, W = w.shape
    h, ww = H // s, W // s
    lum = w.mean(1)  # [B,n,H,W]
    q = lum.reshape(B, n, h, 2, s // 2, ww, 2, s // 2).mean((4, 7))  # [B,n,h,2,w,2] quadrant means
    cx = (q[:, :, :, :, :, 1] - q[:, :, :, :, :, 0]).mean(3)  # right - left  [B,n,h,w]
    cy = (q[:, :, :, 1] - q[:, :, :, 0]).mean(-1)  # bottom - top
    l = lum.reshape(B, n, h, s, ww, s).mean((3, 5))
    k = max(1, n // 2)

    def delta(a: torch.Tensor) -> torch.Tensor:
        return a[:, n - k:].mean(1) - a[:, :k].mean(1) if n > 1 else torch.zeros_like(a[:, 0])

    rgb = w.mean(2).reshape(B, 3, h, s, ww, s).mean((3, 5))
    return torch.cat([rgb, cx.mean(1, keepdim=True), cy.mean(1, keepdim=True), delta(l)[:, None],
                      delta(cx)[:, None], delta(cy)[:, None]], 1)


def analytic_latents(x: torch.Tensor, temporal: int = 4, spatial: int = 8) -> torch.Tensor:
    """Pixels [B,3,T,H,W] in [-1,1] with T = 1 + 4k -> raw (unnormalised) latents [B,8,1+k,H/8,W/8]."""
    T = x.shape[2]
    if (T - 1) % temporal:
        raise ValueError(f"need 1 + {temporal}k frames, got {T}")
    wins = [x[:, :, :1]] + [x[:, :, 1 + temporal * i:1 + temporal * (i + 1)] for i in range((T - 1) // temporal)]
    return torch.stack([_block_feats(w, spatial) for w in wins], 2)
