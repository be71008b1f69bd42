"""The world's ground-truth judge (its "VisionReward"): scores decoded pixels against what the prompt says.

It reads only pixels and the parsed prompt (never the critic or the models), so it can grade the critic too.
Every pixel is explained as a blend of the background colour and one object colour (anti-aliased edges are blends);
from the blend weights come each object's soft area, centroid and mask. Sub-scores, each in [0, 1]:

- per frame (adherence): background colour, object area (right colour present with the right area), shape
  (bounding-box fill: circle 0.79, square 1, triangle 0.53), clean (pixels no palette blend explains) and sharp
  (blend pixels per unit of perimeter: blur smears edges);
- per window: motion (the centroid track against the prompt's motion) and consistency (area stability, no teleports).

quality = 0.5 * mean adherence + 0.3 * motion + 0.2 * consistency. A video is scored block by block (the
frames each latent block decodes to), so `evaluate` is the mean of `evaluate_block` over blocks.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from sdvg.world.grammar import COLOURS, Scene, parse
from sdvg.world.render import (CHANGE_FRAME, CHANGE_FRAMES, PERIOD, REF_FRAMES, amplitude, base_centre,
                               block_frame_range, colour_track, shape_area)

EXPLAIN_TOL = 0.3  # RGB distance from the nearest palette blend that still counts as explained
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.53}


def one_thread(fn):
    """Run `fn` on one intra-op thread and restore the caller's count: the evaluator's many small ops give the same
    results on any thread count but take twice as long on two (0.22 s vs 0.11 s a video: the threads spend it
    synchronising), which doubled the labelling in a 2-thread critic stage."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        n = torch.get_num_threads()
        if n == 1:
            return fn(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)
    return wrapper


def _object_colours(scene: Scene, t: np.ndarray) -> list[list[np.ndarray]]:
    """Candidate colours per object per frame: the nominal colour, and both ends around a colour change."""
    out = []
    for o in scene.objects:
        if o.turns is None:
            out.append([np.broadcast_to(np.array(COLOURS[o.colour]), (len(t), 3))])
        else:
            mid = colour_track(o, t)
            out.append([mid, np.broadcast_to(np.array(COLOURS[o.colour]), (len(t), 3)),
                        np.broadcast_to(np.array(COLOURS[o.turns]), (len(t), 3))])
    return out


def _change_window(t: np.ndarray) -> np.ndarray:
    half = CHANGE_FRAMES / 2 + 4  # the change frame is jittered by up to 3 frames
    return np.abs(t - CHANGE_FRAME) <= half


def measure(frames: torch.Tensor, scene: Scene, start_frame: int = 0) -> dict[str, torch.Tensor]:
    """Per-frame measurements: alpha [K,T,H,W] per object, unexplained fraction [T], background fraction [T]."""
    f = frames.detach().float().clamp(0, 1).permute(0, 2, 3, 1)  # [T,H,W,3]
    T = f.shape[0]
    t = np.arange(start_frame, start_frame + T, dtype=np.float64)
    bg = torch.tensor(COLOURS[scene.background], dtype=torch.float32)
    in_change = torch.from_numpy(_change_window(t))
    best_res = (f - bg).norm(dim=-1)  # residual of the "pure background" explanation
    alphas, owner_res = [], []
    for k, cands in enumerate(_object_colours(scene, t)):
        a_best, r_best = None, None
        for j, c in enumerate(cands):
            c = torch.from_numpy(np.ascontiguousarray(c)).float().view(T, 1, 1, 3)
            d = c - bg
            a = ((f - bg) * d).sum(-1) / (d * d).sum(-1).clamp_min(1e-6)
            a = a.clamp(0, 1)
            r = (f - bg - a.unsqueeze(-1) * d).norm(dim=-1)
            if j > 0:  # end colours of a change only count inside the change window
                r = torch.where(in_change.view(T, 1, 1), r, torch.full_like(r, 9.0))
            if a_best is None:
                a_best, r_best = a, r
            else:
                better = r < r_best
                a_best, r_best = torch.where(better, a, a_best), torch.minimum(r, r_best)
        alphas.append(a_best)
        owner_res.append(r_best)
    res = torch.stack(owner_res)  # [K,T,H,W]
    owner = res.argmin(0)
    alpha = torch.stack([torch.where((owner == k) & (res[k] < EXPLAIN_TOL), alphas[k], torch.zeros_like(alphas[k]))
                         for k in range(len(alphas))])
    unexplained = (torch.minimum(res.min(0).values, best_res) >= EXPLAIN_TOL).float().mean((1, 2))
    bg_frac = (best_res < EXPLAIN_TOL).float().mean((1, 2))
    return {"alpha": alpha, "unexplained": unexplained, "bg_frac": bg_frac}


def _fill(mask: torch.Tensor) -> torch.Tensor:
    """Bounding-box fill ratio of each [H,W] boolean mask in a [T,H,W] stack (0 where empty)."""
    out = torch.zeros(mask.shape[0])
    for i, m in enumerate(mask):
        ys, xs = torch.nonzero(m, as_tuple=True)
        if len(ys) >= 3:
            out[i] = len(ys) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return out


@one_thread
def frame_scores(frames: torch.Tensor, prompt: str | Scene, start_frame: int = 0) -> dict[str, torch.Tensor]:
    """Per-frame sub-scores [T] and their geometric mean 'adherence'; also the object tracks used by motion."""
    scene = parse(prompt) if isinstance(prompt, str) else prompt
    H, W = frames.shape[-2:]
    px = H / 64
    m = measure(frames, scene, start_frame)
    alpha = m["alpha"]
    K = alpha.shape[0]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32) + 0.5, torch.arange(W, dtype=torch.float32) + 0.5,
                            indexing="ij")
    area = alpha.sum((2, 3))  # [K,T]
    cx = (alpha * xs).sum((2, 3)) / area.clamp_min(1e-6)
    cy = (alpha * ys).sum((2, 3)) / area.clamp_min(1e-6)
    exp_area = torch.tensor([shape_area(o.shape, o.size) * px * px for o in scene.objects]).view(K, 1)
    area_s = torch.exp(-torch.log((area + 1e-3) / exp_area).abs() / 0.35)
    fill = torch.stack([_fill(alpha[k] > 0.5) for k in range(K)])
    exp_fill = torch.tensor([FILL[o.shape] for o in scene.objects]).view(K, 1)
    shape_s = torch.exp(-((fill - exp_fill) / 0.12) ** 2)
    blend = ((alpha > 0.15) & (alpha < 0.85)).float().sum((2, 3))
    perim = torch.tensor([2 * math.sqrt(math.pi * shape_area(o.shape, o.size)) * px for o in scene.objects]).view(K, 1)
    sharp_s = torch.exp(-(blend / perim - 1.5).clamp_min(0) / 1.5)
    exp_bg = (1 - (exp_area.sum() + 0.7 * perim.sum()) / (H * W)).clamp_min(0.05)
    bg_s = torch.exp(-((m["bg_frac"] - exp_bg).abs() / 0.15))
    clean_s = torch.exp(-m["unexplained"] / 0.08)
    obj = (area_s * shape_s * sharp_s).clamp_min(1e-4).log().mean(0)  # [T] geometric mean over objects
    adherence = torch.exp((obj + bg_s.clamp_min(1e-4).log() + clean_s.clamp_min(1e-4).log()) / 5)
    return {"adherence": adherence, "background": bg_s, "area": area_s.mean(0), "shape": shape_s.mean(0),
            "sharp": sharp_s.mean(0), "clean": clean_s, "cx": cx, "cy": cy, "obj_area": area}


def _motion_score(scene: Scene, cx: torch.Tensor, cy: torch.Tensor, area: torch.Tensor, start_frame: int,
                  size: int) -> float:
    """How well each object's centroid track over the window follows its prompted motion (mean over objects)."""
    T = cx.shape[1]
    if T < 2:
        return 1.0
    scores = []
    n_obj = len(scene.objects)
    for k, o in enumerate(scene.objects):
        present = area[k] > 0.3 * shape_area(o.shape, o.size) * (size / 64) ** 2
        if present.sum() < 2:
            scores.append(0.0)
            continue
        x, y = cx[k][present].numpy(), -cy[k][present].numpy()  # y up
        idx = np.nonzero(present.numpy())[0]
        span = idx[-1] - idx[0]
        a = amplitude(n_obj, size)
        speed = 2 * a / (REF_FRAMES - 1)  # linear speed, px / frame
        tol = 1.0 + 0.25 * speed * span
        dx, dy = x[-1] - x[0], y[-1] - y[0]
        if o.motion == "still":
            s = math.exp(-math.hypot(dx, dy) / 2.0)
        elif o.motion in ("left", "right", "up", "down"):
            ax = {"left": (-1, 0), "right": (1, 0), "up": (0, 1), "down": (0, -1)}[o.motion]
            along, perp = dx * ax[0] + dy * ax[1], abs(dx * ax[1] - dy * ax[0])
            want = speed * span
            s = min(1.0, max(0.0, along) / (0.6 * want)) * math.exp(-max(0.0, perp - 1.0) / tol)
        elif o.motion in ("bounce_lr", "bounce_ud"):
            along_t, perp_t = (x, y) if o.motion == "bounce_lr" else (y, x)
            path = np.abs(np.diff(along_t)).sum()
            want = 4 * a / PERIOD * span  # mean path length of the oscillation over the window
            centre = base_centre(o, k, n_obj, size)
            c_along = centre[0] if o.motion == "bounce_lr" else -centre[1]
            c_perp = -centre[1] if o.motion == "bounce_lr" else centre[0]
            excursion = np.abs(along_t - c_along).max()
            s = (min(1.0, path / (0.4 * want)) * math.exp(-max(0.0, excursion - a - 4) / 3)
                 * math.exp(-max(0.0, np.abs(perp_t - c_perp).max() - 4) / 3))
        else:  # circle: counter-clockwise angle progress around the orbit centre, at the right radius
            bx, by = base_centre(o, k, n_obj, size)
            r_want = a if n_obj == 1 else a * 0.6
            th = np.unwrap(np.arctan2(y + by, x - bx))
            want = 2 * np.pi * span / (REF_FRAMES - 1)
            r = np.hypot(x - bx, y + by)
            s = min(1.0, max(0.0, th[-1] - th[0]) / (0.6 * want)) * math.exp(-max(0.0, np.abs(r - r_want).max() - 3) / 3)
        scores.append(s * float(present.float().mean()))  # an object seen in few frames barely moves at all
    return float(np.mean(scores))


def _consistency(scene: Scene, cx: torch.Tensor, cy: torch.Tensor, area: torch.Tensor, size: int) -> float:
    """Area stable across frames and no centroid jumps faster than any motion in the world."""
    if cx.shape[1] < 2:
        return 1.0
    vmax = amplitude(len(scene.objects), size) * 2 * math.pi / PERIOD * 1.2 + 1.0
    out = []
    for k in range(cx.shape[0]):
        a = area[k]
        stab = math.exp(-float(a.std() / a.mean().clamp_min(1.0)) / 0.15)
        jumps = torch.hypot(cx[k].diff(), cy[k].diff()).max().item()
        out.append(stab * math.exp(-max(0.0, jumps - vmax) / 2.0))
    return float(np.mean(out))


@one_thread
def evaluate_window(frames: torch.Tensor, prompt: str | Scene, start_frame: int = 0) -> dict[str, float]:
    """Quality of consecutive frames starting at absolute frame `start_frame` (one block, or any window)."""
    scene = parse(prompt) if isinstance(prompt, str) else prompt
    fs = frame_scores(frames, scene, start_frame)
    size = frames.shape[-1]
    motion = _motion_score(scene, fs["cx"], fs["cy"], fs["obj_area"], start_frame, size)
    cons = _consistency(scene, fs["cx"], fs["cy"], fs["obj_area"], size)
    adh = float(fs["adherence"].mean())
    out = {"quality": 0.5 * adh + 0.3 * motion + 0.2 * cons, "adherence": adh, "motion": motion,
           "consistency": cons}
    for key in ("background", "area", "shape", "sharp", "clean"):
        out[key] = float(fs[key].mean())
    return out


def evaluate_block(frames: torch.Tensor, prompt: str | Scene, block: int, frames_per_block: int = 3) -> dict[str, float]:
    """Per-block quality: `frames` are the pixel frames latent block `block` decodes to."""
    return evaluate_window(frames, prompt, block_frame_range(block, frames_per_block)[0])


def evaluate_blocks(frames: torch.Tensor, prompt: str | Scene, frames_per_block: int = 3) -> list[dict[str, float]]:
    """`evaluate_window` of every latent block's frames (a trailing partial block is scored on what exists)."""
    scene = parse(prompt) if isinstance(prompt, str) else prompt
    T = frames.shape[0]
    rows, b = [], 0
    while True:
        s, e = block_frame_range(b, frames_per_block)
        if s >= T:
            break
        rows.append(evaluate_window(frames[s:min(e, T)], scene, s))
        b += 1
    return rows


def evaluate(frames: torch.Tensor, prompt: str | Scene, frames_per_block: int = 3) -> dict[str, float]:
    """Video quality in [0, 1]: the mean over blocks of each sub-score (see the module docstring)."""
    rows = evaluate_blocks(frames, prompt, frames_per_block)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class WorldEvaluator:
    """Evaluator protocol adapter: `evaluate(frames, prompt) -> dict` with key 'quality'."""

    name = "world"

    def evaluate(self, frames: torch.Tensor, prompt: str) -> dict:
        return evaluate(frames, prompt)

    def evaluate_block(self, frames: torch.Tensor, prompt: str, block: int) -> dict:
        return evaluate_block(frames, prompt, block)

    def frame_adherence(self, frames: torch.Tensor, prompt: str, start_frame: int = 0) -> torch.Tensor:
        return frame_scores(frames, prompt, start_frame)["adherence"]
