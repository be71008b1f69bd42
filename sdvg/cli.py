"""`sdvg generate | bench | inspect`.

With no checkpoint flags every command runs the embedded world, so the first command a user types makes a video.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdvg.config import DECODER_RULES, MODEL_PRESETS
from sdvg.routers import router_names
from sdvg.settings import (BLOCKS, FPS, MODES, RATE, RECOMPUTE, SAMPLES, SEED, SINKS, SIZE, STEPS, TAU, WINDOW,
                           check_cache, check_prompt, check_run, glue_negative_values)

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
        from sdvg.pipeline import check_memory

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


def generate_main(argv: list[str]) -> int:
    p = Parser(prog="sdvg generate", description="Generate videos with speculative decoding.")
    p.add_argument("prompt", nargs="?", help="text prompt (or use --prompts-file)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--mode", choices=MODES, default="sdvg")
    p.add_argument("--tau", type=TAU, default=None, help="accept threshold (default: the model set's; inf, -inf ok)")
    p.add_argument("--router", choices=router_names(), default="threshold")
    p.add_argument("--accept-rate", type=RATE, default=0.5, help="for --router random / percentile, in [0, 1]")
    p.add_argument("--stitch-steps", type=STEPS, default=0,
                   help="hybrid (--mode sdvg): on reject keep the drafter's first k steps; --mode stitch: k")
    p.add_argument("--no-force-reject-first", action="store_true", help="route block 0 too")
    p.add_argument("--drafter-context", choices=("own", "emitted"), default="own")
    p.add_argument("--eager-commit", action="store_true", help="commit every block at once (for debugging)")
    p.add_argument("--overlap", action="store_true",
                   help="pipelined speculation: draft the next block while this one is decoded and scored (same "
                        "video; falls back, saying why, with 'emitted' context or a re-encoded recompute anchor)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--samples", type=SAMPLES, default=1, help="videos per prompt")
    p.add_argument("--out", default="outputs")
    p.add_argument("--overwrite", action="store_true", help="replace videos of the same name from an earlier run")
    p.add_argument("--fps", type=FPS, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--config", help="JSON/TOML file of flag values")
    add_model_args(p)
    args = parse_args(p, argv)

    from sdvg.io import export_to_video, prepare_out_dir, read_prompts, video_stem, write_json
    from sdvg.seeding import video_seed

    if args.prompts_file and args.prompt is not None:
        p.error("give a PROMPT or --prompts-file, not both")
    if not args.prompts_file and args.prompt is None:
        p.error("give a PROMPT or --prompts-file")
    try:
        check_run(args.mode, args.stitch_steps, args.drafter_context)
        if args.prompt is not None:
            check_prompt(args.prompt)
    except ValueError as e:
        p.error(str(e))
    prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
    check_model_args(args)
    out = prepare_out_dir(args.out)
    stems = {(i, s): video_stem(prompt, *([f"p{i}"] if args.prompts_file else []), f"seed{args.seed}",
                                *([f"s{s}"] if args.samples > 1 else []))
             for i, prompt in enumerate(prompts) for s in range(args.samples)}
    if not args.overwrite:
        old = [out / f"{n}.mp4" for n in stems.values() if (out / f"{n}.mp4").exists()]
        if old:
            raise ValueError(f"{old[0]} exists ({len(old)} of this run's {len(stems)} videos do); pass --overwrite "
                             f"to replace them, or another --out or --seed")
    models = load_models(args)
    for prompt in prompts:
        models.text_encoder.encode([prompt])  # validate every prompt before the first video (fails early)
    pipe = models.pipeline(router=args.router, tau=args.tau, accept_rate=args.accept_rate, seed=args.seed,
                           lazy_commit=not args.eager_commit)
    for (i, s), stem in stems.items():
        prompt = prompts[i]
        res = pipe(prompt, mode=args.mode, seed=video_seed(args.seed, i, s),
                   force_reject_first=not args.no_force_reject_first, drafter_context=args.drafter_context,
                   stitch_steps=args.stitch_steps, progress=not args.no_progress, overlap=args.overlap)
        for n in range(1, 1000):  # a concurrent run took the name meanwhile: keep both videos (stem.2, stem.3, ...)
            try:
                path = export_to_video(res.frames, out / f"{stem}{f'.{n}' if n > 1 else ''}.mp4", fps=args.fps,
                                       replace=args.overwrite)
                break
            except FileExistsError:
                continue
        else:
            raise ValueError(f"{out / stem}.mp4 and 998 numbered variants exist; pass another --out")
        trace = dict(video=path.name, **res.trace.to_dict())
        if models.evaluator is not None:
            trace["quality"] = models.evaluator.evaluate(res.frames, prompt)
        write_json(path.with_suffix(".json"), trace)
        print(f"{path}  {res.trace.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {"generate": generate_main, "bench": None, "inspect": None, "serve": None}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in cmds:
        print("usage: sdvg {generate,bench,inspect,serve} ...\n\n"
              "  generate  make videos (default: the built-in world; --help for checkpoints)\n"
              "  bench     the quality/speed study over a prompt set (resumable, torchrun-ready)\n"
              "  inspect   identify a checkpoint file and check it loads\n"
              "  serve     live generation over WebSocket with a web page (http://127.0.0.1:8000/)",
              file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "generate":
            return generate_main(rest)
        if cmd == "inspect":
            from sdvg.checkpoints import inspect_main
            return inspect_main(rest)
        if cmd == "serve":
            from sdvg.serve import serve_main
            return serve_main(rest)
        from sdvg.bench import bench_main
        return bench_main(rest)
    except (ValueError, OSError, FloatingPointError) as e:  # bad input or environment: one line, no traceback
        print(f"sdvg {cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
