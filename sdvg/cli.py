"""`sdvg generate | bench | inspect | serve`.

With no checkpoint flags every command runs the embedded world, so the first command a user types makes a video.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace

from sdvg.config import RunConfig
from sdvg.flags import Parser, add_model_args, check_model_args, load_models, parse_args
from sdvg.routers import router_names
from sdvg.settings import FPS, MODES, RATE, SAMPLES, SEED, STEPS, TAU, check_prompt


def run_config(args: argparse.Namespace) -> RunConfig:
    """`sdvg generate`'s run flags as one `RunConfig` (checked; each video then gets its own seed from it)."""
    return RunConfig(mode=args.mode, seed=args.seed, force_reject_first=not args.no_force_reject_first,
                     drafter_context=args.drafter_context, stitch_steps=args.stitch_steps, overlap=args.overlap)


def generate_main(argv: list[str]) -> int:
    p = Parser(prog="sdvg generate", description="Generate videos with speculative decoding.")
    p.add_argument("prompt", nargs="?", help="text prompt (or use --prompts-file)")
    p.add_argument("--prompts-file", help="one prompt per line")
    p.add_argument("--mode", choices=MODES, default="sdvg")
    p.add_argument("--tau", type=TAU, default=None, help="accept threshold (default: the model set's; inf, -inf ok)")
    p.add_argument("--router", choices=router_names(), default="threshold")
    p.add_argument("--accept-rate", type=RATE, default=0.5, help="for --router random / percentile, in [0, 1]")
    p.add_argument("--cascade-delta", type=float, default=0.3,
                   help="--router cascade-delta: accept on the 1-in-4-frame proxy when it is >= tau + delta")
    p.add_argument("--vvs-margin", type=float, default=0.2,
                   help="--router vvs: skip scoring after --vvs-window blocks >= tau + margin, drafting after as "
                        "many <= tau - margin")
    p.add_argument("--vvs-window", type=int, default=2, help="--router vvs: blocks the margins are taken over")
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
        run = run_config(args)
        if args.prompt is not None:
            check_prompt(args.prompt)
    except ValueError as e:
        p.error(str(e))
    prompts = read_prompts(args.prompts_file) if args.prompts_file else [args.prompt]
    check_model_args(args)
    out = prepare_out_dir(args.out)
    stems = {(i, s): video_stem(prompt, *([f"p{i}"] if args.prompts_file else []), f"seed{run.seed}",
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
    pipe = models.pipeline(router=args.router if run.mode == "sdvg" else None, tau=args.tau,
                           accept_rate=args.accept_rate, seed=run.seed, delta=args.cascade_delta,
                           margin=args.vvs_margin, window=args.vvs_window, lazy_commit=not args.eager_commit)
    for (i, s), stem in stems.items():
        prompt = prompts[i]
        res = pipe(prompt, **asdict(replace(run, seed=video_seed(run.seed, i, s))), progress=not args.no_progress)
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
