"""The scorer contract the routers code against, and how a block's frame scores become one number."""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    """Scores each decoded frame against the prompt; higher is better."""

    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        """frames [F,3,H,W] float in [0,1] -> Tensor[F] (float32, CPU)."""
        ...


AGGREGATIONS = ("min", "mean", "quantile")


def aggregate(scores: torch.Tensor, how: str = "min", q: float = 0.1) -> torch.Tensor:
    """Block score from frame scores: `min` (the paper: the worst frame decides), `mean`, or the `q`-quantile
    (linear interpolation; q=0 is min, q=1 is max) -- a softer worst case that one glitched frame cannot veto."""
    s = scores.detach().float().flatten()
    if s.numel() == 0:
        raise ValueError("cannot aggregate an empty set of frame scores")
    if how == "min":
        return s.min()
    if how == "mean":
        return s.mean()
    if how == "quantile":
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile q must be in [0, 1], got {q}")
        return torch.quantile(s, q)
    raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")


def check_frames(frames: torch.Tensor) -> None:
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [F,3,H,W], got shape {tuple(frames.shape)}")


__all__ = ["Scorer", "aggregate", "AGGREGATIONS", "check_frames"]
