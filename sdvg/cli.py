"""`sdvg generate | bench | inspect`.

With no checkpoint flags every command runs the embedded world, so the first command a user types makes a video.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from sdvg.pipeline import MODES
from sdvg.routers import ROUTERS


def _tau(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"tau must be a number (e.g. -0.7, inf, -inf), got {s!r}") from None
    if math.isnan(v):
        raise argparse.ArgumentTypeError("tau must not be NaN")
    return v


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (omit all checkpoint paths to use the built-in world)")
    g.add_argument("--models", choices=("world", "tiny"), default="world",
                   help="with no checkpoints: the built-in world, or tiny random models (a smoke test of the code)")
    g.add_argument("--drafter", help="drafter DiT checkpoint (Self-Forcing .pt, .safetensors, or diffusers folder)")
    g.add_argument("--target", help="target DiT checkpoint (e.g. Krea realtime 14B .safetensors)")
    g.add_argument("--drafter-preset", default="wan2.1-1.3b")
    g.add_argument("--target-preset", default="wan2.1-14b")
    g.add_argument("--no-ema", action="store_true", help="Self-Forcing .pt: load 'generator' instead of 'generator_ema'")
    g.add_argument("--vae", help="Wan2.1_VAE.pth or a diffusers vae/ folder")
    g.add_argument("--text-encoder", help="UMT5 folder (transformers format) or a precomputed embeddings file")
    g.add_argument("--scorer", default="imagereward", help="imagereward | clip | sharpness | flicker | none")
    g.add_argument("--scorer-path", help="ImageReward.pt or a CLIP folder")
    g.add_argument("--med-config", help="ImageReward med_config.json")
    g.add_argument("--tokenizer-dir", help="bert-base-uncased tokenizer folder (vocab.txt) for ImageReward")
    g.add_argument("--height", type=int, default=480)
    g.add_argument("--width", type=int, default=832)
    g.add_argument("--num-blocks", type=int, default=None, help="blocks of 3 latent frames (default 9)")
    g.add_argument("--cache-policy", choices=("append", "recompute"), default="append")
    g.add_argument("--window-frames", type=int, default=-1)
    g.add_argument("--sink-frames", type=int, default=0)
    g.add_argument("--device", default=None, help="device of the DiTs (default: cuda if available, else cpu)")
    g.add_argument("--aux-device", default=None, help="device of the VAE, text encoder and scorer (2-GPU split)")
    g.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: bf16 on GPU, fp32 on CPU)")


def load_models(args: argparse.Namespace):
    import torch

    from sdvg.config import CacheConfig
    from sdvg.loading import load_checkpoint_models, load_tiny_models, load_world_models

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if not (args.drafter or args.target):
        if args.models == "tiny":
            models = load_tiny_models(num_blocks=args.num_blocks or 3, device=device, dtype=dtype)
        else:
            models = load_world_models(device=device, dtype=dtype, num_blocks=args.num_blocks)
        models.cache = CacheConfig(policy=args.cache_policy, window_frames=args.window_frames,
                                   sink_frames=args.sink_frames, recompute_frames=models.cache.recompute_frames)
        return models
    return load_checkpoint_models(
        drafter=args.drafter, target=args.target, vae=args.vae, text_encoder=args.text_encoder,
        drafter_preset=args.drafter_preset, target_preset=args.target_preset, scorer=args.scorer,
        scorer_path=args.scorer_path, med_config=args.med_config, tokenizer_dir=args.tokenizer_dir,
        height=args.height, width=args.width, num_blocks=args.num_blocks or 9, cache_policy=args.cache_policy,
        window_frames=args.window_frames, sink_frames=args.sink_frames, device=device, aux_device=args.aux_device,
        dtype=dtype, ema=not args.no_ema)


def _config_defaults(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """`--config FILE` (JSON or TOML, keys = long flag names with '-' or '_') sets defaults; flags still win."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    path = Path(known.config)
    if not path.is_file():
        parser.error(f"config file not found: {path}")
    if path.suffix == ".toml":
        import tomllib
        cfg = tomllib.loads(path.read_text())
    else:
        cfg = json.loads(path.read_text())
    dests = {a.dest for a in parser._actions}
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - dests)
    if unknown:
        parser.error(f"config file {path}: unknown keys {unknown}")
    parser.set_defaults(**cfg)


def generate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sdvg generate", description="Generate videos with speculative decoding.")
    p.add_argument("prompt", nargs="?", help="text prompt (or use --prompts-file)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--mode", choices=MODES, default="sdvg")
    p.add_argument("--tau", type=_tau, default=None, help="accept threshold (default: the model set's)")
    p.add_argument("--router", choices=ROUTERS, default="threshold")
    p.add_argument("--accept-rate", type=float, default=0.5, help="for --router random / percentile")
    p.add_argument("--stitch-steps", type=int, default=0, help="hybrid: on reject keep the drafter's first k steps")
    p.add_argument("--no-force-reject-first", action="store_true", help="route block 0 too")
    p.add_argument("--drafter-context", choices=("own", "emitted"), default="own")
    p.add_argument("--eager-commit", action="store_true", help="commit every block at once (for debugging)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="videos per prompt")
    p.add_argument("--out", default="outputs")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--config", help="JSON/TOML file of flag values")
    add_model_args(p)
    _config_defaults(p, argv)
    args = p.parse_args(argv)

    from sdvg.io import export_to_video, read_prompts, safe_name, write_json
    from sdvg.seeding import video_seed

    if args.prompts_file:
        prompts = read_prompts(args.prompts_file)
    elif args.prompt is not None:
        if not args.prompt.strip():
            p.error("empty prompt: give a non-empty text prompt")
        prompts = [args.prompt]
    else:
        p.error("give a PROMPT or --prompts-file")
    models = load_models(args)
    for i, prompt in enumerate(prompts):
        models.text_encoder.encode([prompt])  # validate every prompt before the first video (fails early)
    pipe = models.pipeline(router=args.router, tau=args.tau, accept_rate=args.accept_rate, seed=args.seed,
                           lazy_commit=not args.eager_commit)
    out = Path(args.out)
    for i, prompt in enumerate(prompts):
        for s in range(args.samples):
            seed = video_seed(args.seed, i, s)
            res = pipe(prompt, mode=args.mode, seed=seed, force_reject_first=not args.no_force_reject_first,
                       drafter_context=args.drafter_context, stitch_steps=args.stitch_steps,
                       progress=not args.no_progress)
            name = safe_name(prompt) + (f"-{s}" if args.samples > 1 else "")
            if len(prompts) > 1:
                name = f"{i:04d}-{name}"
            export_to_video(res.frames, out / f"{name}.mp4", fps=args.fps)
            trace = res.trace.to_dict()
            if models.evaluator is not None:
                trace["quality"] = models.evaluator.evaluate(res.frames, prompt)
            write_json(out / f"{name}.json", trace)
            print(f"{out / (name + '.mp4')}  {res.trace.summary()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = {"generate": generate_main, "bench": None, "inspect": None}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in cmds:
        print("usage: sdvg {generate,bench,inspect} ...\n\n"
              "  generate  make videos (default: the built-in world; --help for checkpoints)\n"
              "  bench     the quality/speed study over a prompt set (resumable, torchrun-ready)\n"
              "  inspect   identify a checkpoint file and check it loads", file=sys.stderr if argv else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "generate":
            return generate_main(rest)
        if cmd == "inspect":
            from sdvg.checkpoints import inspect_main
            return inspect_main(rest)
        from sdvg.bench import bench_main
        return bench_main(rest)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"sdvg {cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
