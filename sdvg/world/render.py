"""Procedural renderer: anti-aliased flat shapes on a flat background, with seeded jitter.

The nominal trajectory of each object is a function of the prompt only; a seed adds a small start offset and speed
jitter. The jitter is kept small on purpose: the few-step sampler predicts a conditional mean at each step, so a
world whose prompt nearly determines the video gives sharp samples (as DMD-distilled Wan does on real prompts).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sdvg.world.grammar import COLOURS, SIZES, ObjectSpec, Scene, parse

REF_FRAMES = 105  # 27 latent frames: the nominal video length the motions are scaled to
CHANGE_FRAME = 52.0  # centre of a colour change ("that turns X")
CHANGE_FRAMES = 8.0  # its duration
PERIOD = 52.0  # bounce period in frames
JITTER_PX = 2.5
JITTER_SPEED = 0.08


def frames_for(latent_frames: int, temporal_stride: int = 4) -> int:
    """Pixel frames of a video whose causal VAE latent has `latent_frames` frames."""
    return 1 + temporal_stride * (latent_frames - 1)


def block_frame_range(block: int, frames_per_block: int = 3, temporal_stride: int = 4) -> tuple[int, int]:
    """[start, end) pixel frames that latent block `block` decodes to (block 0 has one frame fewer)."""
    def end(b: int) -> int:
        return frames_for((b + 1) * frames_per_block, temporal_stride)
    return (0 if block == 0 else end(block - 1)), end(block)


@dataclass(frozen=True)
class Jitter:
    dx: float = 0.0
    dy: float = 0.0
    speed: float = 1.0
    change: float = 0.0  # colour-change frame offset

    @staticmethod
    def draw(rng: np.random.Generator) -> Jitter:
        return Jitter(*rng.uniform(-JITTER_PX, JITTER_PX, 2), 1.0 + rng.uniform(-JITTER_SPEED, JITTER_SPEED),
                      rng.uniform(-3, 3))


def amplitude(n_objects: int, size: int = 64) -> float:
    return (17.0 if n_objects == 1 else 12.0) * size / 64


def base_centre(obj: ObjectSpec, index: int, n_objects: int, size: int = 64) -> tuple[float, float]:
    """Where the motion is centred: the middle, or one of two lanes perpendicular to the motion."""
    c = size / 2
    if n_objects == 1:
        return c, c
    off = (-14.0 if index == 0 else 14.0) * size / 64
    if obj.motion in ("left", "right", "bounce_lr"):
        return c, c + off
    if obj.motion in ("up", "down", "bounce_ud"):
        return c + off, c
    return c + off, c + off


def trajectory(obj: ObjectSpec, index: int, n_objects: int, t: np.ndarray, jit: Jitter = Jitter(),
               size: int = 64) -> np.ndarray:
    """Object centre (x, y) in pixels at frames t (float array) -> [len(t), 2]. y grows downwards."""
    bx, by = base_centre(obj, index, n_objects, size)
    a = amplitude(n_objects, size)
    u = t * jit.speed
    z = np.zeros_like(u)
    lin = 2 * a * u / (REF_FRAMES - 1) - a  # -a .. a over the reference length
    if obj.motion == "still":
        dx, dy = z, z
    elif obj.motion == "right":
        dx, dy = lin, z
    elif obj.motion == "left":
        dx, dy = -lin, z
    elif obj.motion == "down":
        dx, dy = z, lin
    elif obj.motion == "up":
        dx, dy = z, -lin
    elif obj.motion == "bounce_lr":
        dx, dy = a * np.sin(2 * np.pi * u / PERIOD), z
    elif obj.motion == "bounce_ud":
        dx, dy = z, a * np.sin(2 * np.pi * u / PERIOD)
    elif obj.motion == "circle":  # counter-clockwise on screen, starting at the top
        th = np.pi / 2 + 2 * np.pi * u / (REF_FRAMES - 1)
        r = a if n_objects == 1 else a * 0.6
        dx, dy = r * np.cos(th), -r * np.sin(th)
    else:
        raise ValueError(f"unknown motion {obj.motion!r}")
    return np.stack([bx + dx + jit.dx, by + dy + jit.dy], -1)


def colour_track(obj: ObjectSpec, t: np.ndarray, jit: Jitter = Jitter()) -> np.ndarray:
    """RGB of the object at frames t -> [len(t), 3] (a linear blend during a colour change)."""
    c0 = np.array(COLOURS[obj.colour])
    if obj.turns is None:
        return np.broadcast_to(c0, (len(t), 3)).copy()
    w = np.clip((t - (CHANGE_FRAME + jit.change - CHANGE_FRAMES / 2)) / CHANGE_FRAMES, 0, 1)[:, None]
    return (1 - w) * c0 + w * np.array(COLOURS[obj.turns])


def shape_sdf(shape: str, scale: float, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) of a shape centred at the origin; px/py are offsets."""
    if shape == "circle":
        return torch.sqrt(px * px + py * py) - scale
    if shape == "square":
        return torch.maximum(px.abs(), py.abs()) - 0.85 * scale
    if shape == "triangle":  # equilateral, apex up, circumradius 1.25*scale
        r_in = 0.625 * scale
        s, c = math.sin(math.pi / 3), math.cos(math.pi / 3)
        return torch.maximum(torch.maximum(py, s * px - c * py), -s * px - c * py) - r_in
    raise ValueError(f"unknown shape {shape!r}")


def shape_area(shape: str, size: str) -> float:
    r = SIZES[size]
    return {"circle": math.pi * r * r, "square": (1.7 * r) ** 2,
            "triangle": 3 * math.sqrt(3) / 4 * (1.25 * r) ** 2}[shape]


@dataclass(frozen=True)
class RenderInfo:
    """Ground truth of a rendered clip: per object centres [T,2] and colours [T,3], plus the jitters."""

    scene: Scene
    start_frame: int
    centres: tuple[np.ndarray, ...]
    colours: tuple[np.ndarray, ...]
    jitters: tuple[Jitter, ...]


def draw_jitters(n_objects: int, seed: int | None) -> tuple[Jitter, ...]:
    """The jitters `render(..., seed=seed)` uses (seed None: none, the nominal video)."""
    rng = np.random.default_rng(seed) if seed is not None else None
    return tuple(Jitter.draw(rng) if rng is not None else Jitter() for _ in range(n_objects))


def render(scene: Scene | str, num_frames: int, seed: int | None = 0, start_frame: int = 0, size: int = 64,
           jitters: tuple[Jitter, ...] | None = None) -> tuple[torch.Tensor, RenderInfo]:
    """Render frames [start_frame, start_frame + num_frames) -> (frames [T,3,H,W] float32 in [0,1], RenderInfo).

    seed=None renders the nominal (jitter-free) video. The same seed gives the same video.
    """
    if isinstance(scene, str):
        scene = parse(scene)
    n = len(scene.objects)
    if jitters is None:
        jitters = draw_jitters(n, seed)
    t = np.arange(start_frame, start_frame + num_frames, dtype=np.float64)
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5,
                            torch.arange(size, dtype=torch.float32) + 0.5, indexing="ij")
    img = torch.tensor(COLOURS[scene.background], dtype=torch.float32).view(1, 3, 1, 1).repeat(num_frames, 1, size, size)
    centres, colours = [], []
    for i, obj in enumerate(scene.objects):
        ctr = trajectory(obj, i, n, t, jitters[i], size)
        col = colour_track(obj, t, jitters[i])
        centres.append(ctr)
        colours.append(col)
        ct = torch.from_numpy(ctr).float()
        d = shape_sdf(obj.shape, SIZES[obj.size] * size / 64, xs - ct[:, 0, None, None], ys - ct[:, 1, None, None])
        alpha = (0.5 - d).clamp(0, 1).unsqueeze(1)  # [T,1,H,W] one-pixel anti-aliasing ramp
        img = img * (1 - alpha) + torch.from_numpy(col).float().view(-1, 3, 1, 1) * alpha
    return img.clamp(0, 1), RenderInfo(scene, start_frame, tuple(centres), tuple(colours), tuple(jitters))
