"""The flags the commands share (model flags, `--setup` / `--config` defaults) and the one-line-error parser.

`sdvg generate | bench | serve | inspect` all build their parsers from here, so a model flag means the same in each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdvg.config import DECODER_RULES, MODEL_PRESETS
from sdvg.settings import BLOCKS, RECOMPUTE, SINKS, SIZE, WINDOW, check_cache, glue_negative_values

SETUPS = Path(__file__).parent / "setups"  # shipped configurations: flag values in TOML, `--setup NAME`


def setup_names() -> list[str]:
    return sorted(p.stem for p in SETUPS.glob("*.toml"))


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (`prog: error: ...`), not a page of usage before it."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (omit all checkpoint paths to use the built-in world)")
    g.add_argument("--models", choices=("world", "tiny"), default="world",
                   help="with no checkpoints: the built-in world, or tiny random models (a smoke test of the code)")
    g.add_argument("--drafter", help="drafter DiT checkpoint (Self-Forcing .pt, .safetensors, or diffusers folder)")
    g.add_argument("--target", help="target DiT checkpoint (e.g. Krea realtime 14B .safetensors)")
    g.add_argument("--setup", choices=setup_names(), default=None,
                   help="a shipped configuration (its flag values; flags given here still win); paper: the SDVG "
                        "authors' Self-Forcing 1.3B drafter + Krea Realtime 14B target setup")
    g.add_argument("--drafter-preset", choices=sorted(MODEL_PRESETS), default="wan2.1-1.3b",
                   help="checkpoints: the drafter's shape, schedule and cache (default wan2.1-1.3b)")
    g.add_argument("--target-preset", choices=sorted(MODEL_PRESETS), default="wan2.1-14b",
                   help="checkpoints: the target's (krea-realtime-14b: recompute cache, 5 passes, Krea's decoder)")
    g.add_argument("--no-ema", action="store_true", help="Self-Forcing .pt: load 'generator' instead of 'generator_ema'")
    g.add_argument("--vae", help="Wan2.1_VAE.pth or a diffusers vae/ folder")
    g.add_argument("--text-encoder", help="UMT5 folder (transformers format) or a precomputed embeddings file")
    g.add_argument("--scorer", default="imagereward", help="imagereward | clip | sharpness | flicker | none")
    g.add_argument("--scorer-path", help="ImageReward.pt or a CLIP folder")
    g.add_argument("--med-config", help="ImageReward med_config.json")
    g.add_argument("--tokenizer-dir", help="bert-base-uncased tokenizer folder (vocab.txt) for ImageReward")
    g.add_argument("--scorer-heads", type=BLOCKS, default=None,
                   help="ImageReward ViT attention heads (not in the weights; default width // 64, right for the "
                        "released ImageReward.pt; give it for a custom-size checkpoint)")
    g.add_argument("--height", type=SIZE, default=None, help="checkpoints only (default 480)")
    g.add_argument("--width", type=SIZE, default=None, help="checkpoints only (default 832)")
    g.add_argument("--num-blocks", type=BLOCKS, default=None,
                   help="blocks of 3 latent frames (default 9; longer videos roll the KV cache, see README)")
    g.add_argument("--cache-policy", choices=("append", "recompute"), default=None,
                   help="both models' KV-cache policy (default: each model preset's, else append)")
    g.add_argument("--recompute-frames", type=RECOMPUTE, default=None,
                   help="recompute: latent frames of context rebuilt per block (default: the preset's, else 9)")
    g.add_argument("--anchor", choices=("reencode", "latent"), default=None,
                   help="recompute: the window's first frame once the video's first has left it: Krea's VAE "
                        "re-encode of a decoded frame (default), or the clean latent frame (no encoder pass)")
    g.add_argument("--decoder-rule", choices=DECODER_RULES, default=None,
                   help="streaming VAE decoder: upstream Wan, or Krea Realtime's (default: the target preset's)")
    g.add_argument("--window-frames", type=WINDOW, default=-1,
                   help="latent frames a block attends to (default -1: all, up to 27; longer videos roll)")
    g.add_argument("--sink-frames", type=SINKS, default=0, help="first frames kept when the cache rolls")
    g.add_argument("--device", default=None, help="device of the DiTs (default: cuda if available, else cpu)")
    g.add_argument("--aux-device", default=None, help="device of the VAE, text encoder and scorer (2-GPU split)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the DiTs' cache-free block parts (dynamic shapes: compiled once per run)")
    g.add_argument("--fp8-target", action="store_true",
                   help="optional: float8 weight-only target (torchao's quantize_, if installed; GPUs with fp8)")
    g.add_argument("--scorer-batch", type=BLOCKS, default=None,
                   help="most frames per scorer forward (default: a whole block in one call); caps memory")


def cache_flags(args: argparse.Namespace) -> dict:
    """The cache flags given (None ones left out), as `resolve_cache` takes them."""
    return dict(policy=args.cache_policy, recompute_frames=args.recompute_frames, anchor=args.anchor,
                window_frames=args.window_frames, sink_frames=args.sink_frames)


def load_models(args: argparse.Namespace):
    models = _load_models(args)
    if args.fp8_target and models.target is not None:
        from sdvg.wan import quantize_fp8

        quantize_fp8(models.target)
    if args.scorer_batch and hasattr(models.scorer, "max_batch"):
        models.scorer.max_batch = args.scorer_batch
    if args.compile:
        from sdvg.wan import compile_dit

        for dit in (models.drafter, models.target):
            if dit is not None:
                compile_dit(dit)
    return models


def _load_models(args: argparse.Namespace):
    import torch

    from sdvg.config import resolve_cache
    from sdvg.loading import load_checkpoint_models, load_tiny_models, load_world_models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if not (args.drafter or args.target):
        if args.models == "tiny":
            models = load_tiny_models(num_blocks=args.num_blocks or 3, device=device, dtype=dtype)
        else:
            models = load_world_models(device=device, dtype=dtype, num_blocks=args.num_blocks)
        models.cache = resolve_cache(models.cache, **cache_flags(args))
        models.decoder_rule = args.decoder_rule
        return models
    return load_checkpoint_models(
        drafter=args.drafter, target=args.target, vae=args.vae, text_encoder=args.text_encoder,
        drafter_preset=args.drafter_preset, target_preset=args.target_preset, scorer=args.scorer,
        scorer_path=args.scorer_path, scorer_heads=args.scorer_heads, med_config=args.med_config,
        tokenizer_dir=args.tokenizer_dir, height=args.height or 480, width=args.width or 832, num_blocks=args.num_blocks or 9,
        cache=cache_flags(args), decoder_rule=args.decoder_rule, device=device, aux_device=args.aux_device,
        dtype=dtype, ema=not args.no_ema)


def model_files(args: argparse.Namespace) -> list:
    """What `load_models(args)` reads weights from (the same dispatch as `_load_models`): the checkpoints given, else
    the built-in world's weights (`--models tiny` is random from a seed: no files)."""
    if args.drafter or args.target:
        return [args.drafter, args.target, args.vae, args.text_encoder, args.scorer_path]
    if args.models == "tiny":
        return []
    from sdvg.world import WEIGHTS_DIR

    return [WEIGHTS_DIR]


def check_model_args(args: argparse.Namespace) -> None:
    """Model flags that contradict each other, and a checkpoint video that cannot fit in memory: refused before any
    model is loaded."""
    if not (args.drafter or args.target):
        if args.height is not None or args.width is not None:
            raise ValueError("--height/--width apply to checkpoints only; the built-in world makes 64x64 videos "
                             "(--models tiny: 32x32)")
    check_cache(args.window_frames, args.sink_frames)
    if args.drafter or args.target:
        import torch

        from sdvg.config import CacheConfig, VideoConfig, dit_preset, model_preset, resolve_cache
        from sdvg.loading import parse_dtype
        from sdvg.memory import check_memory

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = parse_dtype(args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32"))
        video = VideoConfig(height=args.height or 480, width=args.width or 832, num_blocks=args.num_blocks or 9)
        for path, name in ((args.drafter, args.drafter_preset), (args.target, args.target_preset)):
            if path:
                pre = model_preset(name)
                cache = resolve_cache(pre.cache or CacheConfig(), **cache_flags(args))
                check_memory([dit_preset(pre.dit)], video, cache, dtype, device)


def parse_args(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`--config` defaults, then the flags; `--tau -inf` reads as a value (see `glue_negative_values`)."""
    argv = glue_negative_values(argv)
    _config_defaults(p, argv)
    return p.parse_args(argv)


def _read_config(parser: argparse.ArgumentParser, path: Path) -> dict:
    if not path.is_file():
        parser.error(f"config file not found: {path}")
    if path.suffix == ".toml":
        import tomllib
        cfg = tomllib.loads(path.read_text())
    else:
        cfg = json.loads(path.read_text())
    return {k.replace("-", "_"): v for k, v in cfg.items()}


def _config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """`--setup NAME` (a shipped TOML in sdvg/setups), then `--config FILE` (JSON or TOML, keys = long flag names
    with '-' or '_'), set defaults; flags still win. A setup's keys that this command lacks are skipped (one setup
    serves generate and bench); a --config file's must all be known."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--setup")
    known, _ = pre.parse_known_args(argv)
    if not (known.config or known.setup):
        return
    actions = {a.dest: a for a in parser._actions}
    cfg: dict = {}
    if known.setup:
        if known.setup not in setup_names():
            parser.error(f"unknown setup {known.setup!r}; choose one of {setup_names()}")
        cfg = {k: v for k, v in _read_config(parser, SETUPS / f"{known.setup}.toml").items() if k in actions}
    path = Path(known.config) if known.config else SETUPS / f"{known.setup}.toml"
    if known.config:
        extra = _read_config(parser, path)
        unknown = sorted(set(extra) - set(actions))
        if unknown:
            parser.error(f"config file {path}: unknown keys {unknown}")
        cfg.update(extra)
    for k, v in cfg.items():  # the same checks as on the command line (argparse skips them for defaults)
        a = actions[k]
        if a.type is not None and v is not None:
            try:
                cfg[k] = a.type(",".join(map(str, v)) if isinstance(v, list) else str(v))
            except argparse.ArgumentTypeError as e:
                parser.error(f"config file {path}: {k}: {e}")
        if a.choices is not None and cfg[k] not in a.choices:
            parser.error(f"config file {path}: {k}: {cfg[k]!r} is not one of {list(a.choices)}")
    parser.set_defaults(**cfg)
