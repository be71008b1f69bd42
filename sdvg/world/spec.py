"""The world's fixed geometry and model sizes (the shipped weights are trained for exactly these)."""
from __future__ import annotations

from sdvg.config import DiTConfig, VideoConfig

VIDEO = VideoConfig(height=64, width=64, num_blocks=9, frames_per_block=3)
Z_DIM = 14  # sdvg.world.data.LATENT_CHANNELS
TEXT_DIM = 64
TEXT_LEN = 32

# A small Wan VAE: a trained encoder, and the designed decoder of sdvg.world.decoder (it renders shapes from the
# distance fields of sdvg.world.data; 12 channels at full resolution hold its per-pixel shading).
VAE_KWARGS = dict(base_dim=8, decoder_base_dim=12, z_dim=Z_DIM, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)

# Same class, two sizes. On a CPU these small models are overhead-bound, so wall time follows the layer count more
# than the multiply-adds: 32 layers vs 3 makes the drafter's block under 1/10 of the target's (1.3B : 14B is ~1/10)
# and the target's block ~10x a decode + critic (the model card's Cost; the real pair: over 10x). The target trains
# at 12 layers and is then deepened twice (sdvg.world.train.TARGET_DEEPENINGS).
TARGET = DiTConfig(dim=128, ffn_dim=512, num_heads=4, num_layers=32, in_dim=Z_DIM, out_dim=Z_DIM,
                   text_dim=TEXT_DIM, text_len=TEXT_LEN, freq_dim=64)
DRAFTER = DiTConfig(dim=96, ffn_dim=384, num_heads=2, num_layers=3, in_dim=Z_DIM, out_dim=Z_DIM,
                    text_dim=TEXT_DIM, text_len=TEXT_LEN, freq_dim=64)

# Fallback thresholds (critic scale: predicted block quality in [0, 1]); the shipped world.json holds the sweep
# measured on the trained critic (quantiles of its block scores), which is what `sdvg bench` uses.
DEFAULT_TAUS = (0.15, 0.2, 0.25, 0.3, 0.35)
DEFAULT_TAU = 0.25


def dit_flops_per_token(cfg: DiTConfig, keys: int, text_len: int = TEXT_LEN) -> float:
    """Multiply-adds per query token of one forward (linear layers + attention scores), for the cost ratio."""
    d, f = cfg.dim, cfg.ffn_dim
    per_layer = 4 * d * d + 2 * d * keys + 2 * d * d + 2 * d * text_len + 2 * d * f
    return cfg.num_layers * per_layer + cfg.in_dim * 4 * d + d * cfg.out_dim * 4
