"""Weight-free frame scorers: cheap signals that need no checkpoint (smoke runs, ablations, fallbacks)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sdvg.scorers.base import check_frames

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))  # OpenCV's Laplacian with ksize=1


def luminance(frames: torch.Tensor) -> torch.Tensor:
    """[F,3,H,W] -> [F,1,H,W] float32."""
    w = torch.tensor(LUMA, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    return (frames.float() * w).sum(1, keepdim=True)


class SharpnessScorer:
    """Variance of the Laplacian of luminance per frame (the classic focus measure): blurry or flat frames score low.

    Computed on [0,1] intensities over the valid region (no padding, so borders add no fake edges): a frame of
    uniform noise scores about 0.74 (20 x var(luma)), a linear gradient 0. Prompt-blind.
    """

    def score(self, frames: torch.Tensor, prompt: str = "") -> torch.Tensor:
        check_frames(frames)
        if min(frames.shape[-2:]) < 3:
            raise ValueError(f"frames must be at least 3x3 for a Laplacian, got {tuple(frames.shape[-2:])}")
        k = torch.tensor(LAPLACIAN, dtype=torch.float32, device=frames.device).view(1, 1, 3, 3)
        lap = F.conv2d(luminance(frames), k)
        return lap.flatten(1).var(dim=1, unbiased=False).cpu()


class FlickerScorer:
    """Temporal stability: minus the mean absolute difference (in [0,1] units) between each frame and the previous one.

    Frame 0 has no predecessor inside the call. With `carry=False` (default) it is compared with itself and scores 0,
    the best possible value, so with min-aggregation it never decides alone. With `carry=True` the last frame of the
    previous call is remembered and used instead, so a block is judged against what came before it; the caller should
    then `remember()` the frames actually emitted (after a rejected draft the emitted block differs from the scored
    one) and `reset()` at each new video. Prompt-blind; not meant for routers that score frame subsets (cascade).
    """

    def __init__(self, carry: bool = False) -> None:
        self.carry = carry
        self._last: torch.Tensor | None = None

    def reset(self) -> None:
        self._last = None

    def remember(self, frames: torch.Tensor) -> None:
        """Set the predecessor of the next call's first frame (only used with carry=True)."""
        self._last = frames[-1:].detach().float().clone()

    def score(self, frames: torch.Tensor, prompt: str = "") -> torch.Tensor:
        check_frames(frames)
        x = frames.float()
        prev0 = x[:1]
        if self.carry and self._last is not None:
            if self._last.shape[1:] != x.shape[1:]:
                raise ValueError(f"frame size changed from {tuple(self._last.shape[1:])} to {tuple(x.shape[1:])}; "
                                 "call reset() between videos")
            prev0 = self._last.to(x.device)
        prev = torch.cat([prev0, x[:-1]])
        out = -(x - prev).abs().flatten(1).mean(dim=1)
        if self.carry:
            self.remember(x)
        return out.cpu()


__all__ = ["SharpnessScorer", "FlickerScorer", "luminance"]
