"""Causal Wan2.1 text-to-video DiT with per-frame timesteps and a block-causal KV cache.

Parameter names and shapes are exactly those of the original Wan2.1 `WanModel`, so an original-naming state dict
(Wan2.1, Self-Forcing and Krea checkpoints after stripping their `model.` prefix) loads strictly. The maths follows
the reference: float64 sinusoidal time embedding, per-frame modulation (a frame's tokens share that frame's
timestep), q/k RMSNorm over the full width, 3-axis RoPE computed in complex128 at absolute frame positions,
cross-attention to a text context zero-padded to `text_len` and *not* masked (padding rows go through
`text_embedding` and are attended, as in the reference).

Precision: the time embedding, modulation and residual stream are float32 (the reference's float32 islands); the
attention and FFN matmuls run in the parameter dtype; the output has the input's dtype.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdvg.config import DiTConfig, dit_preset


# ---------------------------------------------------------------- key conversion (DiT)
# (original, diffusers) regex pairs; applied to the key suffix after an optional `blocks.N.`.
_DIT_TOP = [("head.modulation", "scale_shift_table"), ("head.head.", "proj_out."),
            ("time_embedding.0.", "condition_embedder.time_embedder.linear_1."),
            ("time_embedding.2.", "condition_embedder.time_embedder.linear_2."),
            ("time_projection.1.", "condition_embedder.time_proj."),
            ("text_embedding.0.", "condition_embedder.text_embedder.linear_1."),
            ("text_embedding.2.", "condition_embedder.text_embedder.linear_2.")]
_DIT_BLOCK = [("modulation", "scale_shift_table"), ("self_attn.", "attn1."), ("cross_attn.", "attn2."),
              ("norm3.", "norm2."), ("ffn.0.", "ffn.net.0.proj."), ("ffn.2.", "ffn.net.2.")]
_ATTN = [("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("o.", "to_out.0."), ("norm_q.", "norm_q."),
         ("norm_k.", "norm_k.")]
DIT_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.*)$")


def _swap(key: str, table: list[tuple[str, str]], to_diffusers: bool) -> str | None:
    for a, b in table:
        src, dst = (a, b) if to_diffusers else (b, a)
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src):]
    return None


def dit_key_to_diffusers(key: str) -> str:
    return _dit_key(key, True)


def dit_key_to_original(key: str) -> str:
    return _dit_key(key, False)


def _dit_key(key: str, to_diffusers: bool) -> str:
    m = DIT_BLOCK_KEY.match(key)
    if not m:
        return _swap(key, _DIT_TOP, to_diffusers) or key
    n, rest = m.groups()
    new = _swap(rest, _DIT_BLOCK, to_diffusers)
    if new is None:
        return key
    for attn in (("self_attn.", "cross_attn.") if not to_diffusers else ("attn1.", "attn2.")):
        if new.startswith(attn):
            new = attn + (_swap(new[len(attn):], _ATTN, to_diffusers) or new[len(attn):])
    return f"blocks.{n}.{new}"

__all__ = ["WanDiT", "sinusoidal_embedding", "rope_freqs", "apply_rope", "block_causal_mask"]


# --- embeddings --------------------------------------------------------------------------------------------------
def sinusoidal_embedding(dim: int, position: Tensor) -> Tensor:
    """[N] timesteps -> [N, dim] float64 embedding: cat[cos, sin] of t * 10000^(-i/half)."""
    half = dim // 2
    pos = position.to(torch.float64)
    freqs = torch.pow(10000, -torch.arange(half, device=pos.device).to(pos).div(half))
    s = torch.outer(pos, freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


def _axis_dims(head_dim: int) -> tuple[int, int, int]:
    d6 = head_dim // 6
    return head_dim - 4 * d6, 2 * d6, 2 * d6


def rope_freqs(head_dim: int, frame_pos: Tensor, h: int, w: int, theta: float = 10000.0) -> Tensor:
    """Complex128 rotations [F*h*w, head_dim/2] for tokens laid out (frame, row, col).

    Frame positions are given explicitly (absolute slots, or window-relative for the recompute policy).
    """
    dev = frame_pos.device
    out = []
    for dim, pos in zip(_axis_dims(head_dim), (frame_pos.to(torch.float64),
                                               torch.arange(h, device=dev, dtype=torch.float64),
                                               torch.arange(w, device=dev, dtype=torch.float64))):
        inv = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, device=dev).to(torch.float64).div(dim))
        ang = torch.outer(pos, inv)
        out.append(torch.polar(torch.ones_like(ang), ang))
    f = len(frame_pos)
    grid = torch.cat([out[0].view(f, 1, 1, -1).expand(f, h, w, -1),
                      out[1].view(1, h, 1, -1).expand(f, h, w, -1),
                      out[2].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1)
    return grid.reshape(f * h * w, -1)


def apply_rope(x: Tensor, freqs: Tensor) -> Tensor:
    """x [B, S, heads, head_dim] rotated pairwise in complex128, returned in x's dtype."""
    b, s, n, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, s, n, d // 2, 2))
    return torch.view_as_real(xc * freqs.view(1, s, 1, d // 2)).flatten(3).type_as(x)


def block_causal_mask(num_frames: int, tokens_per_frame: int, block_frames: int | None,
                      device: torch.device | None = None) -> Tensor | None:
    """Boolean [S, S] mask (True = attend): a token sees every token of its own and earlier blocks."""
    if block_frames is None or block_frames >= num_frames:
        return None
    blk = torch.arange(num_frames, device=device) // block_frames
    m = blk[:, None] >= blk[None, :]
    return m.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


# --- layers --------------------------------------------------------------------------------------------------------
class WanRMSNorm(nn.Module):
    """RMSNorm over the full width (all heads together), statistics in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back to the input dtype."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False) -> None:
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type_as(x)


def _lin(m: nn.Linear, x: Tensor) -> Tensor:
    return m(x.to(m.weight.dtype))


def _lin32(m: nn.Linear, x: Tensor) -> Tensor:
    """A float32 island: the layer evaluated in float32 whatever the parameter dtype."""
    return F.linear(x.float(), m.weight.float(), None if m.bias is None else m.bias.float())


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """[B, S, n, d] x [B, T, n, d] -> [B, S, n, d]."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return o.transpose(1, 2)


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def qkv(self, x: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, s, n, d = *x.shape[:2], self.num_heads, self.head_dim
        q = self.norm_q(_lin(self.q, x)).view(b, s, n, d)
        k = self.norm_k(_lin(self.k, x)).view(b, s, n, d)
        v = _lin(self.v, x).view(b, s, n, d)
        return apply_rope(q, freqs).type_as(v), apply_rope(k, freqs).type_as(v), v

    def forward(self, x: Tensor, freqs: Tensor, ctx: "_Ctx") -> Tensor:
        q, k, v = self.qkv(x, freqs)
        if ctx.cache is None:
            out = _sdpa(q, k, v, ctx.mask)
        else:
            # Block by block: block j writes its K/V, then attends to what the cache shows it (earlier frames within
            # the window and sinks, plus its own block). The same keys as committing the blocks one at a time.
            outs, lf = [], ctx.tokens_per_frame
            for f0, f1 in ctx.blocks:
                sl = slice((f0 - ctx.start_frame) * lf, (f1 - ctx.start_frame) * lf)
                if ctx.readonly:  # a batch of candidate blocks: each sees the cached context and itself, none is kept
                    ck = ctx.cache.visible_before(ctx.layer, f0, f1)
                    kk, vv = k[:, sl], v[:, sl]
                    if ck is not None:
                        kk = torch.cat([ck[0].expand(k.shape[0], -1, -1, -1), kk], dim=1)
                        vv = torch.cat([ck[1].expand(k.shape[0], -1, -1, -1), vv], dim=1)
                else:
                    ctx.cache.write(ctx.layer, f0, k[:, sl], v[:, sl])
                    kk, vv = ctx.cache.visible(ctx.layer, f1)
                outs.append(_sdpa(q[:, sl], kk, vv))
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
        return _lin(self.o, out.flatten(2))


class WanCrossAttention(WanSelfAttention):
    def kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        b, n, d = context.shape[0], self.num_heads, self.head_dim
        return self.norm_k(_lin(self.k, context)).view(b, -1, n, d), _lin(self.v, context).view(b, -1, n, d)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:  # type: ignore[override]
        b, n, d = x.shape[0], self.num_heads, self.head_dim
        q = self.norm_q(_lin(self.q, x)).view(b, -1, n, d)
        k, v = kv
        if k.shape[0] != b:  # one prompt, a batch of candidate blocks (exact speculative sampling)
            k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
        return _lin(self.o, _sdpa(q.to(k.dtype), k, v).flatten(2))


class WanBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: Tensor, e0: Tensor, freqs: Tensor, cross_kv: tuple[Tensor, Tensor], ctx: "_Ctx") -> Tensor:
        """x [B, S, dim] float32; e0 [B, F, 6, dim] float32 (one modulation per frame). Split in three so that
        `compile_dit` can compile the two cache-free parts (the self-attention keeps the KV-cache bookkeeping)."""
        e, h = self.attn_input(x, e0)
        return self.rest(x, self.self_attn(h, freqs, ctx), e, cross_kv)

    def attn_input(self, x: Tensor, e0: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        e = (self.modulation.float().unsqueeze(1) + e0).chunk(6, dim=2)  # each [B, F, 1, dim]
        return e, _per_frame(self.norm1(x).float(), e[1], e[0])

    def rest(self, x: Tensor, y: Tensor, e: tuple[Tensor, ...], cross_kv: tuple[Tensor, Tensor]) -> Tensor:
        x = x + _gated(y, e[2])
        x = x + self.cross_attn(self.norm3(x), cross_kv).float()
        h = _per_frame(self.norm2(x).float(), e[4], e[3])
        y = _lin(self.ffn[2], self.ffn[1](_lin(self.ffn[0], h)))
        return x + _gated(y, e[5])


def _per_frame(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Per-frame modulation of tokens [B, F*L, dim] by scale/shift [B, F, 1, dim]."""
    return (h.unflatten(1, (scale.shape[1], -1)) * (1 + scale) + shift).flatten(1, 2)


def _gated(y: Tensor, gate: Tensor) -> Tensor:
    return (y.float().unflatten(1, (gate.shape[1], -1)) * gate).flatten(1, 2)


def quantize_fp8(dit: "WanDiT") -> "WanDiT":
    """float8 weight-only linear layers through torchao (optional: `pip install torchao`; for the 14B target on
    GPUs with fp8 support). Not used by default, and not part of the fidelity tests."""
    try:
        from torchao.quantization import float8_weight_only, quantize_
    except ImportError:
        raise ValueError("--fp8-target needs torchao: pip install torchao (optional; a GPU with fp8 support)") from None
    quantize_(dit, float8_weight_only())
    return dit


def compile_dit(dit: "WanDiT") -> "WanDiT":
    """torch.compile each block's cache-free parts (modulation, norms, cross-attention, FFN) with dynamic shapes,
    so that a video compiles once and no block recompiles; the self-attention with its KV cache stays eager."""
    for blk in dit.blocks:
        blk.attn_input = torch.compile(blk.attn_input, dynamic=True)
        blk.rest = torch.compile(blk.rest, dynamic=True)
    return dit


class WanHead(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: Tensor, e: Tensor) -> Tensor:
        """x [B, S, dim]; e [B, F, dim] float32 -> [B, F, S/F, out] float32."""
        m = (self.modulation.float().unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        h = self.norm(x).float().unflatten(1, (e.shape[1], -1)) * (1 + m[1]) + m[0]
        return _lin32(self.head, h)


class _Ctx:
    """Per-call attention context shared by the layers (cache, block layout, mask)."""

    def __init__(self, cache, start_frame: int, num_frames: int, block_frames: int | None, tokens_per_frame: int,
                 mask: Tensor | None, readonly: bool = False) -> None:
        self.cache, self.start_frame, self.tokens_per_frame, self.mask = cache, start_frame, tokens_per_frame, mask
        self.readonly = readonly
        bf = block_frames or num_frames
        self.blocks = [(start_frame + a, start_frame + min(a + bf, num_frames)) for a in range(0, num_frames, bf)]
        self.layer = 0


# --- the model -----------------------------------------------------------------------------------------------------
class WanDiT(nn.Module):
    """Wan2.1 T2V transformer (original parameter naming), run causally block by block with a `KVCache`."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([WanBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = WanHead(cfg)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg: DiTConfig | str) -> "WanDiT":
        """Build from a `DiTConfig` or a preset name (works under `torch.device('meta')`)."""
        return cls(dit_preset(cfg) if isinstance(cfg, str) else cfg)

    def _init_weights(self) -> None:
        """The reference init, except the output layer: a zero head would make random test models output zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)

    # --- pieces usable on their own ------------------------------------------------------------------------------
    def embed_text(self, context: Tensor) -> Tensor:
        """[B, L<=text_len, text_dim] -> [B, text_len, dim]; zero padding rows are embedded (and later attended)."""
        b, n, c = context.shape
        if n > self.cfg.text_len:
            raise ValueError(f"text context has {n} tokens, more than text_len={self.cfg.text_len}")
        if n < self.cfg.text_len:
            context = torch.cat([context, context.new_zeros(b, self.cfg.text_len - n, c)], dim=1)
        l0, act, l2 = self.text_embedding
        return _lin(l2, act(_lin(l0, context)))

    def cross_kv(self, context: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per-layer cross-attention K/V of a prompt (computed once per prompt, kept in `cache.cross`)."""
        emb = self.embed_text(context)
        return [blk.cross_attn.kv(emb) for blk in self.blocks]

    def time_embed(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """t [B, F] -> e [B, F, dim] and e0 [B, F, 6, dim], float32.

        Evaluated once per distinct timestep and gathered: cheaper, and the result does not depend on how many
        frames share the call (small-M matmuls may round differently from large-M ones).
        """
        tu, inv = torch.unique(t.flatten(), return_inverse=True)
        l0, act, l2 = self.time_embedding
        e = _lin32(l2, act(_lin32(l0, sinusoidal_embedding(self.cfg.freq_dim, tu).float())))
        e0 = _lin32(self.time_projection[1], self.time_projection[0](e)).unflatten(1, (6, self.cfg.dim))
        return e[inv].unflatten(0, t.shape), e0[inv].unflatten(0, t.shape)

    def patchify(self, x: Tensor) -> Tensor:
        """[B, C, F, H, W] -> [B, F*h*w, dim], tokens ordered (frame, row, col).

        The Conv3d has kernel == stride, so it is one matmul over flattened patches; written as such it is
        independent of how many frames are in the call (batched commits stay bit-identical to sequential ones).
        """
        b, c, f, hh, ww = x.shape
        pt, ph, pw = self.cfg.patch_size
        p = x.reshape(b, c, f // pt, pt, hh // ph, ph, ww // pw, pw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        w = self.patch_embedding.weight
        return F.linear(p.reshape(b, -1, c * pt * ph * pw).to(w.dtype), w.flatten(1), self.patch_embedding.bias)

    def unpatchify(self, y: Tensor, grid: tuple[int, int, int]) -> Tensor:
        """[B, F, h*w, out*prod(patch)] -> [B, out, F*pt, h*ph, w*pw]."""
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        c = self.cfg.out_dim
        y = y.reshape(y.shape[0], f, h, w, pt, ph, pw, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return y.reshape(y.shape[0], c, f * pt, h * ph, w * pw)

    # --- forward -------------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, t: Tensor, context: Tensor, *, cache=None, start_frame: int = 0,
                block_frames: int | None = None, readonly: bool = False) -> Tensor:
        """Flow prediction v [B, C, F, H, W] for noisy latents x at per-frame timesteps t ([B, F] or [B]).

        With `cache`, the input frames occupy absolute frame slots [start_frame, start_frame + F): their K/V are
        written there (appended the first time, overwritten later) and queries attend to the cache's visible earlier
        frames plus their own block. Input spanning several blocks (`block_frames`) is block-causal among itself.
        Without a cache the attention is over the input only (block-causal if `block_frames`).
        RoPE frame positions are `start_frame` + local frame index.
        """
        cfg = self.cfg
        b, _, nf, hh, ww = x.shape
        pt, ph, pw = cfg.patch_size
        grid = (nf // pt, hh // ph, ww // pw)
        lf = grid[1] * grid[2]
        if t.ndim == 1:
            t = t[:, None].expand(b, grid[0])
        if tuple(t.shape) != (b, grid[0]):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected [{b}] or [{b}, {grid[0]}]")
        if block_frames is not None and block_frames % pt:
            raise ValueError("block_frames must be a multiple of the temporal patch size")
        bf = None if block_frames is None else block_frames // pt

        h = self.patchify(x).float()
        e, e0 = self.time_embed(t)
        pos0 = start_frame
        freqs = rope_freqs(cfg.head_dim, torch.arange(grid[0], device=x.device) + pos0, grid[1], grid[2])
        if cache is not None:
            cross = cache.cross_for(self, context)
            mask = None
        else:
            cross = self.cross_kv(context.to(self.text_embedding[0].weight.dtype))
            mask = block_causal_mask(grid[0], lf, bf, x.device)
        ctx = _Ctx(cache, start_frame, grid[0], bf, lf, mask, readonly)
        for i, blk in enumerate(self.blocks):
            ctx.layer = i
            h = blk(h, e0, freqs, cross[i], ctx)
        return self.unpatchify(self.head(h, e), grid).to(x.dtype)
