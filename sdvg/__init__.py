"""sdvg: speculative decoding for autoregressive video diffusion."""
__version__ = "0.1.0"
