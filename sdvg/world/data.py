"""Training data for the world: random scenes, rendered clips and their designed VAE latents."""
from __future__ import annotations

import random

import numpy as np
import torch

from sdvg.world.grammar import COLOURS, SIZES, Scene, random_scene
from sdvg.world.render import REF_FRAMES, colour_track, draw_jitters, render, shape_sdf, trajectory


def scene_stream(seed: int, heldout: bool | None = False, p_two: float = 0.15, p_turn: float = 0.15):
    """Endless (scene, render seed) pairs from the train (or held-out, or with None any) distribution."""
    rng = random.Random(seed)
    while True:
        yield random_scene(rng, heldout, p_two, p_turn), rng.randrange(2**31)


# ---- latents ---------------------------------------------------------------------------------------------------
# The world's latent space is designed: per 8x8 pixel cell and per latent frame (the Wan VAE's causal layout: pixel
# frame 0, then windows of 4 frames), 14 channels =
#   the signed distance to the nearest object (pixels, negative inside, truncated at +-SDF_CLIP) sampled at the 2x2
#   sub-cell centres, at the window's last frame (4) and at its first frame (4): the motion within the window;
#   the colour of the nearest object (3) and the background colour (3).
# A distance field is smooth where the pixels have a sharp edge, so it interpolates: the mean of several plausible
# fields (what a flow model predicts where it is unsure) is still a field with one sharp zero crossing, which decodes
# to a sharp, if averaged, shape -- not the grey blur that averaged pixels give. The decoder renders the shape from
# the field (alpha = clamp(0.5 - d)); the encoder learns to estimate the fields from pixels.
LATENT_CHANNELS = ("d_end_00", "d_end_01", "d_end_10", "d_end_11", "d_start_00", "d_start_01", "d_start_10",
                   "d_start_11", "obj_r", "obj_g", "obj_b", "bg_r", "bg_g", "bg_b")
SDF_CLIP = 8.0  # pixels; farther from every object only the sign matters


def window_frames(start_frame: int, n_latent: int, temporal: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(last, first) pixel frame of each latent frame of a clip that starts at `start_frame` (its frame 0 alone)."""
    last = start_frame + temporal * np.arange(n_latent)
    return last.astype(np.float64), np.maximum(start_frame, last - (temporal - 1)).astype(np.float64)


def object_distances(scene: Scene, jitters, t: np.ndarray, size: int = 64, step: int = 4) -> torch.Tensor:
    """Signed distance in pixels [K, T, size/step, size/step] to each object, sampled every `step` pixels at the
    centres of step x step squares (step 1: pixel centres, as `render` shades; step 4: the latent's sub-cells)."""
    n = len(scene.objects)
    g = torch.arange(size // step, dtype=torch.float32) * step + step / 2
    ys, xs = torch.meshgrid(g, g, indexing="ij")
    d = []
    for i, o in enumerate(scene.objects):
        c = torch.from_numpy(trajectory(o, i, n, t, jitters[i], size)).float()
        d.append(shape_sdf(o.shape, SIZES[o.size] * size / 64, xs - c[:, 0, None, None], ys - c[:, 1, None, None]))
    return torch.stack(d)


def _fields(scene: Scene, jitters, t: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance [T, size/4, size/4] at sub-cell centres (4 px apart) and nearest-object colour [T, 3, size/8, size/8]."""
    n = len(scene.objects)
    d = object_distances(scene, jitters, t, size)  # [K,T,h,w]
    cols = [torch.from_numpy(colour_track(o, t, jitters[i])).float() for i, o in enumerate(scene.objects)]
    centre = d.reshape(n, len(t), size // 8, 2, size // 8, 2).mean((3, 5))  # cell-centre estimate per object
    near = centre.argmin(0)  # [T,h8,w8]
    col = torch.stack(cols)  # [K,T,3]
    obj = torch.gather(col.permute(1, 0, 2), 1, near.flatten(1)[..., None].expand(-1, -1, 3))  # [T,h8*w8,3]
    return d.min(0).values, obj.permute(0, 2, 1).reshape(len(t), 3, size // 8, size // 8)


def _subcell_codes(d: torch.Tensor) -> torch.Tensor:
    """Distances [T, 2h, 2w] in pixels -> the latent's distance channels [4, T, h, w] (truncated, in [-1, 1])."""
    return _space_to_depth(d.clamp(-SDF_CLIP, SDF_CLIP) / SDF_CLIP)


def _space_to_depth(d: torch.Tensor) -> torch.Tensor:
    """[T, 2h, 2w] -> [4, T, h, w] (sub-cell (0,0), (0,1), (1,0), (1,1))."""
    T, H, W = d.shape
    return d.reshape(T, H // 2, 2, W // 2, 2).permute(2, 4, 0, 1, 3).reshape(4, T, H // 2, W // 2)


def scene_latents(scene: Scene, jitters, start_frame: int = 0, n_latent: int = 27, size: int = 64) -> torch.Tensor:
    """Raw (unnormalised) latents [14, n_latent, size/8, size/8] of the clip that starts at `start_frame`, computed
    from the scene and its render jitters (the renderer's ground truth; the VAE encoder estimates them from pixels)."""
    last, first = window_frames(start_frame, n_latent)
    d_end, obj = _fields(scene, jitters, last, size)
    d_start, _ = _fields(scene, jitters, first, size)
    bg = torch.tensor(COLOURS[scene.background]).view(3, 1, 1, 1).expand(3, n_latent, size // 8, size // 8)
    return torch.cat([_subcell_codes(d_end), _subcell_codes(d_start), obj.permute(1, 0, 2, 3) * 2 - 1, bg * 2 - 1])


def clip_pairs(stream, batch: int, n_latent: int, rng: np.random.Generator):
    """(pixels [B,3,1+4(n-1),64,64] in [-1,1], raw latents [B,14,n,8,8]) of clips from random start frames."""
    xs, zs = [], []
    frames = 1 + 4 * (n_latent - 1)
    for _ in range(batch):
        scene, s = next(stream)
        start = int(rng.integers(0, REF_FRAMES - frames + 1))
        f, info = render(scene, frames, seed=s, start_frame=start)
        xs.append(f.permute(1, 0, 2, 3) * 2 - 1)
        zs.append(scene_latents(scene, info.jitters, start, n_latent))
    return torch.stack(xs), torch.stack(zs)


def video_latents(stream, n: int) -> tuple[torch.Tensor, list[Scene], list[int]]:
    """n full-length videos' raw latents [n,14,27,8,8], scenes, render seeds (no pixels rendered)."""
    zs, scenes, seeds = [], [], []
    for _ in range(n):
        scene, s = next(stream)
        zs.append(scene_latents(scene, draw_jitters(len(scene.objects), s)))
        scenes.append(scene)
        seeds.append(s)
    return torch.stack(zs), scenes, seeds


def reference_decode(z: torch.Tensor, first: bool = True) -> torch.Tensor:
    """The latent design's meaning, written out: raw latents [14, n, h, w] -> frames [1 + 4(n-1), 3, 8h, 8w] in
    [0, 1] (or 4n frames when `first` is False). Distances are interpolated linearly in time across the window and
    bilinearly in space, then thresholded (alpha = clamp(0.5 - d)) and coloured. The world's Wan decoder
    (`sdvg.world.decoder`) renders the same design with a fitted upsampler; the tests use this one to check that the
    latents carry the video."""
    import torch.nn.functional as F

    C, n, h, w = z.shape
    out = []
    for i in range(n):
        for a in ([1.0] if first and i == 0 else [0.0, 1 / 3, 2 / 3, 1.0]):
            d = (a * z[0:4, i] + (1 - a) * z[4:8, i]).reshape(2, 2, h, w).permute(2, 0, 3, 1).reshape(2 * h, 2 * w)
            d = F.interpolate(d[None, None] * SDF_CLIP, scale_factor=4, mode="bilinear", align_corners=False)[0]
            alpha = (0.5 - d).clamp(0, 1)
            obj = F.interpolate((z[8:11, i:i + 1].permute(1, 0, 2, 3) + 1) / 2, scale_factor=8, mode="nearest")[0]
            bg = (z[11:14, i].mean((1, 2)) + 1).view(3, 1, 1) / 2
            out.append(bg * (1 - alpha) + obj * alpha)
    return torch.stack(out).clamp(0, 1)


def field_pairs(stream, batch: int, rng: np.random.Generator, size: int = 64):
    """Batches for fitting the decoder's field upsampler (`sdvg.world.decoder`): (the sub-cell distances a latent
    frame gives one of its window's 4 frames, interpolated in time as the decoder does [B,4,8,8]; that frame's
    target field 0.5 - pixel distance [B,1,64,64])."""
    lasts, firsts = window_frames(0, 27)
    while True:
        ds, fs = [], []
        for _ in range(batch):
            scene, s = next(stream)
            jit = draw_jitters(len(scene.objects), s)
            i, a = int(rng.integers(1, 27)), float(rng.choice([0.0, 1 / 3, 2 / 3, 1.0]))
            first, last = firsts[i], lasts[i]
            sub = object_distances(scene, jit, np.array([first, last]), size).min(0).values
            sub = _subcell_codes(sub)  # [4,2,h,w]
            ds.append((1 - a) * sub[:, 0] + a * sub[:, 1])
            px = object_distances(scene, jit, np.array([first + 3 * a]), size, step=1).min(0).values
            fs.append(0.5 - px)
        yield torch.stack(ds), torch.stack(fs)
