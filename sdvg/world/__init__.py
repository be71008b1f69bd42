"""The embedded default world: a toy text-to-video domain in which the whole SDVG method runs for real on a CPU.

Coloured shapes move on flat backgrounds (64x64 px, 9 blocks of 3 latent frames, 105 frames). Everything is
shipped and trained from one seed (`python -m sdvg.world.train`): a small Wan VAE, a UMT5-style text encoder, a
target and a drafter with ~1/6 of its multiply-adds (the same Wan DiT class; ~1/4 of its block wall time on a CPU,
see the model card), a learned frame critic (the router's scorer) and a
ground-truth evaluator. `load_world()` needs no network. Heavy imports happen inside `load_world` only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).parent / "weights"
PROMPTS_DIR = Path(__file__).parent


def read_prompts(name: str) -> list[str]:
    """'train' or 'heldout': the shipped default prompt lists (read by `sdvg.io.read_prompts`, the one reader)."""
    from sdvg.io import read_prompts as read_file

    return read_file(PROMPTS_DIR / f"{name}_prompts.txt")


@dataclass
class World:
    drafter: Any  # WanDiT
    target: Any  # WanDiT
    drafter_config: Any  # DiTConfig
    target_config: Any
    decoder: Any  # sdvg.vae.StreamingDecoder
    text_encoder: Any  # sdvg.world.text.WorldTextEncoder
    critic: Any | None  # sdvg.world.critic.WorldCritic (the router's scorer)
    evaluator: Any  # sdvg.world.evaluator.WorldEvaluator
    video: Any  # VideoConfig
    sampler: Any  # SamplerConfig
    default_taus: tuple[float, ...]
    default_tau: float
    prompts: list[str]  # default benchmark prompts: the held-out set
    train_prompts: list[str] = field(default_factory=list)
    heldout_prompts: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # world.json: training metrics, cost ratio, ...


def load_world(device: str = "cpu", dtype=None, weights: str | Path | None = None, critic: bool = True) -> World:
    """Load the shipped world (or one trained to `weights`). No network; about a second on a CPU."""
    import torch

    from sdvg.checkpoints import load_dit
    from sdvg.config import SamplerConfig
    from sdvg.vae import load_wan_vae
    from sdvg.world import spec
    from sdvg.world.evaluator import WorldEvaluator
    from sdvg.world.text import WorldTextEncoder

    dtype = dtype or torch.float32
    w = Path(weights) if weights is not None else WEIGHTS_DIR
    need = [w / "target.safetensors", w / "drafter.safetensors", w / "vae", w / "text_encoder"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise FileNotFoundError(f"world weights missing: {', '.join(missing)}; train them with "
                                f"`python -m sdvg.world.train --out {w}` (the model card says how long it takes)")
    info = json.loads((w / "world.json").read_text()) if (w / "world.json").exists() else {}
    target = load_dit(w / "target.safetensors", spec.TARGET, device=device, dtype=dtype).eval()
    drafter = load_dit(w / "drafter.safetensors", spec.DRAFTER, device=device, dtype=dtype).eval()
    decoder = load_wan_vae(w / "vae", device=device, dtype=dtype)
    text = WorldTextEncoder.from_pretrained(w / "text_encoder", device=device, dtype=dtype)
    scorer = None
    if critic and (w / "critic.safetensors").exists():
        from sdvg.world.critic import WorldCritic

        scorer = WorldCritic.from_file(w / "critic.safetensors", device=device)
    train, heldout = read_prompts("train"), read_prompts("heldout")
    return World(drafter=drafter, target=target, drafter_config=spec.DRAFTER, target_config=spec.TARGET,
                 decoder=decoder, text_encoder=text, critic=scorer, evaluator=WorldEvaluator(), video=spec.VIDEO,
                 sampler=SamplerConfig(), default_taus=tuple(info.get("default_taus", spec.DEFAULT_TAUS)),
                 default_tau=float(info.get("default_tau", spec.DEFAULT_TAU)), prompts=heldout,
                 train_prompts=train, heldout_prompts=heldout, info=info)


__all__ = ["World", "load_world", "read_prompts", "WEIGHTS_DIR"]
