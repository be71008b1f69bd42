"""Block-causal KV cache for the causal Wan DiT.

Per layer it holds the self-attention K (after q/k-norm and RoPE at the frame's position) and V of whole latent
frames, in preallocated storage of `capacity` frames, plus the prompt's cross-attention K/V (`cross`).

Writing frames [s, s+F):
- frames already held are overwritten in place: every denoising step of a block and its commit pass write the
  same slots, so the cache ends up holding the last pass (the clean commit);
- new frames are appended after the last held frame (no gaps);
- if the cache is full, it rolls: the first `sink_frames` slots are kept, the oldest other frames are evicted and the
  rest shift left (as Self-Forcing's rolling cache does). Evicted frames cannot be written again.

Visibility for queries whose block ends at frame `end`: held frames < `end`, restricted (when `window_frames` > 0)
to the sinks plus the last `window_frames - sink_frames` frames before `end`, so a query sees at most
`window_frames` frames including its own block. With `window_frames == -1` every earlier frame is visible. Sizing:
`capacity = max_frames` (or `window_frames` if smaller, since more could never be seen). A video longer than the
capacity rolls; `CacheConfig.capacity` sizes it (27 latent frames for the trained 9 blocks of 3, the reference's
default of 21 frames being too small for that), so memory does not grow with the video's length.
"""
from __future__ import annotations

import torch
from torch import Tensor

from sdvg.config import DiTConfig

__all__ = ["KVCache"]


class KVCache:
    def __init__(self, cfg: DiTConfig, max_frames: int, tokens_per_frame: int, batch: int = 1,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                 window_frames: int = -1, sink_frames: int = 0) -> None:
        if max_frames < 1 or tokens_per_frame < 1:
            raise ValueError("max_frames and tokens_per_frame must be >= 1")
        if window_frames == 0 or window_frames < -1:
            raise ValueError(f"window_frames must be -1 (all frames) or >= 1, got {window_frames}")
        if sink_frames < 0 or (window_frames > 0 and sink_frames >= window_frames):
            raise ValueError(f"sink_frames ({sink_frames}) must be >= 0 and smaller than window_frames ({window_frames})")
        self.cfg, self.tokens_per_frame, self.batch = cfg, tokens_per_frame, batch
        self.window_frames, self.sink_frames = window_frames, sink_frames
        self.capacity = max_frames if window_frames < 0 else min(max_frames, window_frames)
        self.device, self.dtype = torch.device(device or "cpu"), dtype
        shape = (batch, self.capacity * tokens_per_frame, cfg.num_heads, cfg.head_dim)
        self.k = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(cfg.num_layers)]
        self.v = [torch.zeros(shape, device=self.device, dtype=dtype) for _ in range(cfg.num_layers)]
        self._frames: list[list[int]] = [[] for _ in range(cfg.num_layers)]
        self.cross: list[tuple[Tensor, Tensor]] | None = None
        self._cross_src: Tensor | None = None

    # --- state -------------------------------------------------------------------------------------------------------
    def reset(self, cross: bool = True) -> None:
        """Forget all frames (storage is kept); `cross=False` keeps the prompt's cross-attention K/V."""
        self._frames = [[] for _ in self._frames]
        if cross:
            self.cross, self._cross_src = None, None

    @property
    def frames(self) -> list[int]:
        """Absolute frame indices held, in slot order (after the last completed forward)."""
        return list(self._frames[-1])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def cross_for(self, model, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The prompt's per-layer cross-attention K/V, computed on the first call for this context tensor."""
        if self.cross is None or self._cross_src is not context:
            w = model.text_embedding[0].weight
            self.cross = model.cross_kv(context.to(device=w.device, dtype=w.dtype))
            self._cross_src = context
        return self.cross

    # --- writing -----------------------------------------------------------------------------------------------------
    def write(self, layer: int, start_frame: int, k: Tensor, v: Tensor) -> None:
        """Store K/V [B, F*tokens_per_frame, heads, head_dim] of frames [start_frame, start_frame + F)."""
        lf, fr = self.tokens_per_frame, self._frames[layer]
        nf = k.shape[1] // lf
        if nf * lf != k.shape[1]:
            raise ValueError(f"{k.shape[1]} tokens is not a whole number of {lf}-token frames")
        K, V = self.k[layer], self.v[layer]
        new = list(range(start_frame, start_frame + nf))
        if fr and start_frame <= fr[-1]:  # overwrite the slots of frames already held
            if start_frame not in fr:
                raise ValueError(f"frame {start_frame} is no longer in the cache (evicted); cannot overwrite it")
            i = fr.index(start_frame)
            n_over = min(nf, len(fr) - i)
            K[:, i * lf:(i + n_over) * lf] = k[:, :n_over * lf]
            V[:, i * lf:(i + n_over) * lf] = v[:, :n_over * lf]
            new, k, v = new[n_over:], k[:, n_over * lf:], v[:, n_over * lf:]
            if not new:
                return
        elif fr and start_frame != fr[-1] + 1:
            raise ValueError(f"frames must be appended in order: cache ends at frame {fr[-1]}, got {start_frame}")
        if len(new) > self.capacity - min(self.sink_frames, len(fr)):
            raise ValueError(f"{len(new)} new frames do not fit a {self.capacity}-frame cache "
                             f"with {self.sink_frames} sink frames")
        over = len(fr) + len(new) - self.capacity
        if over > 0:  # roll: keep the sinks, evict the oldest other frames, shift the rest left
            keep = min(self.sink_frames, len(fr))
            a, b = keep * lf, len(fr) * lf
            K[:, a:b - over * lf] = K[:, a + over * lf:b].clone()
            V[:, a:b - over * lf] = V[:, a + over * lf:b].clone()
            del fr[keep:keep + over]
        i = len(fr)
        K[:, i * lf:(i + len(new)) * lf] = k
        V[:, i * lf:(i + len(new)) * lf] = v
        fr.extend(new)

    # --- reading -----------------------------------------------------------------------------------------------------
    def visible_slots(self, layer: int, end_frame: int) -> list[tuple[int, int]]:
        """Slot ranges [a, b) visible to queries of the block ending (exclusive) at `end_frame`."""
        fr = self._frames[layer]
        n = sum(1 for f in fr if f < end_frame)  # held frames are increasing, so these are slots [0, n)
        if self.window_frames < 0:
            return [(0, n)] if n else []
        sinks = min(self.sink_frames, n)
        lo = end_frame - (self.window_frames - self.sink_frames)
        first = next((i for i in range(sinks, n) if fr[i] >= lo), n)
        ranges = [(0, sinks)] if sinks else []
        if first < n:
            if ranges and first == sinks:
                ranges = [(0, n)]
            else:
                ranges.append((first, n))
        return ranges

    def visible_frames(self, layer: int, end_frame: int) -> list[int]:
        fr = self._frames[layer]
        return [fr[i] for a, b in self.visible_slots(layer, end_frame) for i in range(a, b)]

    def visible_before(self, layer: int, start_frame: int, end_frame: int) -> tuple[Tensor, Tensor] | None:
        """K, V of the frames a block [start_frame, end_frame) sees before itself (what `visible` gives it, minus its
        own frames), or None: for scoring a batch of candidate blocks without writing them."""
        lf, fr = self.tokens_per_frame, self._frames[layer]
        rs = [(a, min(b, next((i for i in range(a, b) if fr[i] >= start_frame), b)))
              for a, b in self.visible_slots(layer, end_frame)]
        rs = [(a, b) for a, b in rs if b > a]
        if not rs:
            return None
        ks = [self.k[layer][:, a * lf:b * lf] for a, b in rs]
        vs = [self.v[layer][:, a * lf:b * lf] for a, b in rs]
        return (ks[0], vs[0]) if len(rs) == 1 else (torch.cat(ks, dim=1), torch.cat(vs, dim=1))

    def visible(self, layer: int, end_frame: int) -> tuple[Tensor, Tensor]:
        """K, V [B, T, heads, head_dim] of the frames visible to the block ending at `end_frame`."""
        lf = self.tokens_per_frame
        rs = self.visible_slots(layer, end_frame)
        if not rs:
            raise ValueError(f"no frame before {end_frame} is in the cache")
        ks = [self.k[layer][:, a * lf:b * lf] for a, b in rs]
        vs = [self.v[layer][:, a * lf:b * lf] for a, b in rs]
        if len(rs) == 1:
            return ks[0], vs[0]
        return torch.cat(ks, dim=1), torch.cat(vs, dim=1)
