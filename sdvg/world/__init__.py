"""The embedded default world: a toy text-to-video domain in which the whole SDVG method runs for real on a CPU.

Coloured shapes move on flat backgrounds (64x64 px, 9 blocks of 3 latent frames, 105 frames). Everything is
shipped and trained from one seed (`python -m sdvg.world.train`): a small Wan VAE, a UMT5-style text encoder, a
target and a drafter with ~1/6 of its multiply-adds (the same Wan DiT class; ~1/4 of its block wall time on a CPU,
see the model card), a learned frame critic (the router's scorer) and a
ground-truth evaluator. `load_world()` needs no network. Heavy imports happen inside `load_world` only.
"""
from __future__ import annotations

import json
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
PROMPTS_DIR = Path(__file__).parent


def read_prompts(name: str) -> list[str]:
    """'train' or 'heldout': the shipped default prompt lists (read by `sdvg.io.read_prompts`, the one reader)."""
    from sdvg.io import read_prompts as read_file

    return read_file(PROMPTS_DIR / f"{name}_prompts.txt")


def load_world(device: str = "cpu", dtype=None, weights: str | Path | None = None, critic: bool = True,
               num_blocks: int | None = None):
    """The shipped world (or one trained to `weights`) as a `sdvg.loading.ModelSet`: its critic is the scorer, its
    held-out prompts the default prompt set, `info` its world.json. No network; about a second on a CPU."""
    from dataclasses import replace

    import torch

    from sdvg.checkpoints import load_dit
    from sdvg.loading import ModelSet
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
    scorer = None
    if critic and (w / "critic.safetensors").exists():
        from sdvg.world.critic import WorldCritic

        scorer = WorldCritic.from_file(w / "critic.safetensors", device=device)
    video = spec.VIDEO if num_blocks is None else replace(spec.VIDEO, num_blocks=num_blocks)
    return ModelSet(drafter=load_dit(w / "drafter.safetensors", spec.DRAFTER, device=device, dtype=dtype).eval(),
                    target=load_dit(w / "target.safetensors", spec.TARGET, device=device, dtype=dtype).eval(),
                    decoder=load_wan_vae(w / "vae", device=device, dtype=dtype),
                    text_encoder=WorldTextEncoder.from_pretrained(w / "text_encoder", device=device, dtype=dtype),
                    scorer=scorer, evaluator=WorldEvaluator(), video=video,
                    default_taus=tuple(info.get("default_taus", spec.DEFAULT_TAUS)),
                    default_tau=float(info.get("default_tau", spec.DEFAULT_TAU)), name="world",
                    device=torch.device(device), aux_device=torch.device(device), dtype=dtype,
                    prompts=tuple(read_prompts("heldout")), info=info)


__all__ = ["load_world", "read_prompts", "WEIGHTS_DIR"]
