"""Live control of a running stream: switch the prompt (blended over a few blocks), change τ, stop.

A server's session (or a notebook) holds a `StreamControl` and passes it to `SDVGPipeline.stream(control=...)`; the
stream reads it between blocks, so a change takes effect at the next block. As in Krea's server and Scope, a new
prompt's text embedding is blended into the old one over `blend_blocks` blocks (linear, or slerp per token); both
models keep their KV caches (the video so far) and refresh only their cross-attention K/V.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

INTERPOLATIONS = ("linear", "slerp")


def blend(a: torch.Tensor, b: torch.Tensor, w: float, how: str = "linear") -> torch.Tensor:
    """Text embeddings [1, L, D] from a (w = 0) to b (w = 1). slerp works per token row and falls back to linear
    where a row is zero (padding) or the two rows are (anti)parallel."""
    if how not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {how!r}; choose one of {', '.join(INTERPOLATIONS)}")
    if how == "linear" or w in (0.0, 1.0):
        return a * (1 - w) + b * w if 0.0 < w < 1.0 else (b if w >= 1.0 else a)
    af, bf = a.double(), b.double()
    na, nb = af.norm(dim=-1, keepdim=True), bf.norm(dim=-1, keepdim=True)
    cos = ((af * bf).sum(-1, keepdim=True) / (na * nb).clamp_min(1e-12)).clamp(-1, 1)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    ok = (so > 1e-6) & (na > 0) & (nb > 0)
    s = torch.where(ok, torch.sin((1 - w) * omega) / so.clamp_min(1e-12), torch.full_like(so, 1 - w))
    t = torch.where(ok, torch.sin(w * omega) / so.clamp_min(1e-12), torch.full_like(so, w))
    return (s * af + t * bf).to(a.dtype)


@dataclass
class _Switch:
    prompt: str
    blend_blocks: int
    interp: str


class StreamControl:
    """Thread-safe requests to a running stream; each takes effect before the next block."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._switch: _Switch | None = None
        self._tau: float | None = None
        self._stop = threading.Event()

    def set_prompt(self, prompt: str, blend_blocks: int = 0, interp: str = "linear") -> None:
        """Move to a new prompt, blending the text embedding over `blend_blocks` blocks (0: at once)."""
        from sdvg.settings import check_int, check_prompt

        check_prompt(prompt)
        check_int(blend_blocks, "blend_blocks", 0)
        if interp not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interp!r}; choose one of {', '.join(INTERPOLATIONS)}")
        with self._lock:
            self._switch = _Switch(prompt, blend_blocks, interp)

    def set_tau(self, tau: float) -> None:
        from sdvg.settings import check_tau

        tau = check_tau(tau)
        with self._lock:
            self._tau = tau

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def take(self) -> tuple[_Switch | None, float | None]:
        """The pending prompt switch and τ (each handed out once)."""
        with self._lock:
            out = (self._switch, self._tau)
            self._switch, self._tau = None, None
        return out


class PromptSchedule:
    """The text embedding each block sees: the current prompt, or a blend while a switch is in progress."""

    def __init__(self, prompt: str, context: torch.Tensor) -> None:
        self.prompt, self.context = prompt, context
        self._from = self._to = context
        self._left = self._total = 0
        self._interp = "linear"

    def switch(self, prompt: str, context: torch.Tensor, blend_blocks: int, interp: str) -> None:
        self._from, self._to, self.prompt = self.context, context, prompt
        self._left = self._total = blend_blocks
        self._interp = interp

    def next_block(self) -> tuple[torch.Tensor, bool]:
        """(context for the next block, whether it changed)."""
        if self._to is self.context:
            return self.context, False
        if self._left <= 0:
            self.context = self._to
            return self.context, True
        w = (self._total - self._left + 1) / (self._total + 1)
        self._left -= 1
        self.context = blend(self._from, self._to, w, self._interp)
        return self.context, True
