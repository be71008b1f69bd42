"""Frame scorers: `score(frames[F,3,H,W] in [0,1], prompt) -> Tensor[F]`, higher is better.

`build_scorer(name, **paths)` makes one by name; other packages add names with `register_scorer`. (The embedded
world's critic is not registered: `load_world_models()` hands it to the model set directly.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sdvg.scorers.base import AGGREGATIONS, Scorer, aggregate
from sdvg.scorers.classic import FlickerScorer, SharpnessScorer

_FACTORIES: dict[str, Callable[..., Scorer]] = {}


def register_scorer(name: str, factory: Callable[..., Scorer]) -> None:
    """Make `build_scorer(name, **kw)` call `factory(**kw)` (keyword arguments it does not use must be accepted)."""
    _FACTORIES[name] = factory


def _imagereward(path: str | None = None, med_config: str | None = None, tokenizer_dir: str | None = None,
                 device: Any = "cpu", dtype: Any = None, full_frame: bool = False, vision_heads: int | None = None,
                 **_: Any) -> Scorer:
    import torch

    from sdvg.scorers.imagereward import FILES_HELP, ImageRewardScorer

    if not path:
        raise ValueError(f"the imagereward scorer needs path=<ImageReward.pt or its folder>. {FILES_HELP}")
    return ImageRewardScorer.from_pretrained(Path(path), med_config=med_config, tokenizer_dir=tokenizer_dir,
                                             device=device, dtype=dtype or torch.float32, full_frame=full_frame,
                                             vision_heads=vision_heads)


def _clip(path: str | None = None, device: Any = "cpu", dtype: Any = None, clamp: bool = True, **_: Any) -> Scorer:
    import torch

    from sdvg.scorers.clip import CLIPScorer

    if not path:
        raise ValueError("the clip scorer needs path=<a local transformers CLIP folder>")
    return CLIPScorer.from_pretrained(path, device=device, dtype=dtype or torch.float32, clamp=clamp)


register_scorer("imagereward", _imagereward)
register_scorer("clip", _clip)
register_scorer("sharpness", lambda **_: SharpnessScorer())
register_scorer("flicker", lambda carry=False, **_: FlickerScorer(carry=carry))


def scorer_names() -> list[str]:
    return sorted(_FACTORIES)


def build_scorer(name: str, **paths: Any) -> Scorer:
    """A scorer by name; keyword arguments (path, med_config, tokenizer_dir, device, dtype, ...) go to its factory."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; choose one of {scorer_names()}") from None
    return factory(**paths)


def __getattr__(name: str):  # lazy heavy imports: `from sdvg.scorers import ImageRewardScorer` still works
    if name == "ImageRewardScorer":
        from sdvg.scorers.imagereward import ImageRewardScorer

        return ImageRewardScorer
    if name == "CLIPScorer":
        from sdvg.scorers.clip import CLIPScorer

        return CLIPScorer
    raise AttributeError(name)


__all__ = ["Scorer", "aggregate", "AGGREGATIONS", "SharpnessScorer", "FlickerScorer", "ImageRewardScorer",
           "CLIPScorer", "build_scorer", "register_scorer", "scorer_names"]
