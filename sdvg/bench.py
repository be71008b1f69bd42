"""`sdvg bench`: the paper's quality/speed study over a prompt set.

Per prompt: target-only, draft-only, SDVG over a tau sweep, and ablations (random routing at the accept rate SDVG
measured for that prompt and tau, mean-frame scoring, target-for-block-0-only, hybrid stitching, T-Stitch). One JSON
line per (prompt, sample, run) in DIR/results.jsonl, appended atomically; a re-run skips finished rows. Under torchrun
every rank takes prompts round-robin, writes DIR/results.rank{R}.jsonl, and rank 0 merges and summarises.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sdvg.config import RunConfig
from sdvg.io import (append_jsonl, atomic_path, export_to_video, prepare_out_dir, read_jsonl, read_prompts, video_stem,
                     write_json)
from sdvg.routers import acceptance_by_position
from sdvg.seeding import video_seed

ALL_MODES = ("target", "draft", "sdvg", "random", "prefix", "mean", "first", "hybrid", "stitch", "cascade",
             "cascade-delta", "vvs", "exact", "relative", "percentile-prior")
RELATIVE_OFFSETS = (-0.2, -0.1, 0.0)  # --modes relative (--offsets): tau = the target's block-0 score + offset
PAPER_ACCEPT_RATE = 0.72  # --modes percentile-prior: the authors' running-percentile target
DEFAULT_MODES = ("target", "draft", "sdvg", "random", "prefix", "mean", "first", "hybrid")
MATCHED = ("random", "prefix")  # content-blind baselines matched per video to SDVG's routing at the same tau
# each matched baseline's label -> the run whose routing of the same video it copies (at the same tau or offset)
MATCHED_TO = {m: "sdvg" for m in MATCHED} | {f"relative-{m}": "relative" for m in MATCHED}


@dataclass(frozen=True)
class Run:
    """One configuration of the study, run once per (prompt, sample)."""

    label: str  # target|draft|sdvg|random|prefix|mean|first|hybrid|stitch|cascade(-delta)|vvs|exact
    mode: str  # the pipeline mode
    tau: float | None = None  # relative: the offset from the target's block-0 score
    router: str | None = None
    stitch_steps: int = 0
    accept_rate: float | None = None  # percentile-prior: the accept rate it aims at

    @property
    def key(self) -> str:
        return self.label if self.tau is None else f"{self.label}@{self.tau:g}"

    def config(self, seed: int) -> RunConfig:
        """This run's settings for one video (the pipeline's and its result row's)."""
        return RunConfig(mode=self.mode, seed=seed, stitch_steps=self.stitch_steps)


def plan_runs(modes: list[str], taus: list[float], stitch_steps: int,
              offsets: tuple[float, ...] | list[float] = RELATIVE_OFFSETS) -> list[Run]:
    """Runs in dependency order (random needs the SDVG accept rate of the same prompt and tau); `offsets` are the
    relative router's, one run each."""
    if not modes:
        raise ValueError(f"--modes is empty; choose from {', '.join(ALL_MODES)}")
    bad = sorted(set(modes) - set(ALL_MODES))
    if bad:
        raise ValueError(f"unknown --modes {bad}; choose from {', '.join(ALL_MODES)}")
    for m in MATCHED:
        if m in modes and "sdvg" not in modes and "relative" not in modes:
            raise ValueError(f"--modes {m} needs sdvg (or relative) too (it is matched to their routing of the same "
                             "video)")
    runs: list[Run] = []
    if "target" in modes:
        runs.append(Run("target", "target"))
    if "draft" in modes:
        runs.append(Run("draft", "draft"))
    if "first" in modes:
        runs.append(Run("first", "sdvg", router="accept-all"))
    if "stitch" in modes:
        runs.append(Run("stitch", "stitch", stitch_steps=stitch_steps))
    if "exact" in modes:  # exact speculative sampling: the target's distribution, per-step acceptance in the trace
        runs.append(Run("exact", "exact"))
    if "percentile-prior" in modes:  # one row: the authors' running percentile at their accept rate
        runs.append(Run("percentile-prior", "sdvg", router="percentile-prior", accept_rate=PAPER_ACCEPT_RATE))
    if "relative" in modes:  # per-prompt thresholds: offsets from the target's own block-0 score
        for off in offsets:  # with random/prefix in --modes, each offset gets its matched baselines too
            runs.append(Run("relative", "sdvg", off, "relative"))
            runs += [Run(f"relative-{m}", "sdvg", off, m) for m in MATCHED if m in modes]
    for tau in taus:
        if "sdvg" in modes:
            runs.append(Run("sdvg", "sdvg", tau, "threshold"))
        if "mean" in modes:
            runs.append(Run("mean", "sdvg", tau, "mean"))
        for name in ("cascade", "cascade-delta", "vvs"):  # safe cascade, the authors' early accept, skipping
            if name in modes:
                runs.append(Run(name, "sdvg", tau, name))
        if "hybrid" in modes:
            runs.append(Run("hybrid", "sdvg", tau, "threshold", stitch_steps))
        if "sdvg" in modes:  # SDVG's matched baselines (the relative router's are planned with it)
            runs += [Run(m, "sdvg", tau, m) for m in MATCHED if m in modes]
    return runs


def row_key(prompt_index: int, sample: int, run_key: str) -> str:
    return f"{prompt_index}/{sample}/{run_key}"


def _dist():
    """(rank, world_size), initialising torch.distributed when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def shard(n: int, rank: int, world: int) -> list[int]:
    """Round-robin: every index lands on exactly one rank, none dropped."""
    return list(range(rank, n, world))


def merge_results(out: Path) -> list[dict]:
    """Union of all rank files and the merged file, one row per key, in (prompt, sample, run) order."""
    rows: dict[str, dict] = {}
    for f in [out / "results.jsonl", *sorted(out.glob("results.rank*.jsonl"))]:
        for r in read_jsonl(f):
            rows.setdefault(r["key"], r)
    merged = sorted(rows.values(), key=lambda r: (r["prompt_index"], r["sample"], r["run_order"]))
    with atomic_path(out / "results.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in merged), encoding="utf-8")
    for f in out.glob("results.rank*.jsonl"):
        f.unlink()
    return merged


NOT_WEIGHTS = {".md", ".jsonl", ".png"}  # docs, training logs and pictures beside the weights


def weights_fingerprint(paths: list[str | Path | None]) -> str:
    """A short hash of the model files a study runs on (each file's name, size, first and last MiB; in a folder, not
    its docs or logs): resuming a bench in the same --out after the weights changed (the world retrained, another
    checkpoint at the same path) is then refused instead of mixing two models' rows. Reads at most 2 MiB per file,
    so a 14B checkpoint costs nothing."""
    h = hashlib.sha256()
    for root in (Path(p) for p in paths if p):
        files = [root] if root.is_file() else [x for x in root.rglob("*")
                                               if x.is_file() and x.suffix not in NOT_WEIGHTS]
        for f in sorted(files):
            size = f.stat().st_size
            h.update(f"{f.relative_to(root.parent)}\0{size}\0".encode())
            with f.open("rb") as fh:
                h.update(fh.read(2**20))
                if size > 2**20:
                    fh.seek(max(2**20, size - 2**20))
                    h.update(fh.read())
    return h.hexdigest()[:16]


def check_config(out: Path, config: dict, force: bool) -> None:
    """Refuse to mix results of different studies in one --out (unless --force)."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != config and not force:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise ValueError(f"{out} holds results of a different study (changed: {', '.join(diff)}); "
                             f"use another --out, or --force to start over there")
        if old != config and force:
            for f in [out / "results.jsonl", *out.glob("results.rank*.jsonl")]:
                f.unlink(missing_ok=True)
    write_json(path, config)


def run_study(models, prompts: list[str], out: Path, *, runs: list[Run], samples: int = 1, seed: int = 0,
              rank: int = 0, world: int = 1, save_videos: str | None = None, fps: int = 16,
              warmup: bool = True, log=print) -> int:
    """Run this rank's share of the study; returns the number of rows written now."""
    done_rows = {r["key"]: r for f in [out / "results.jsonl", *sorted(out.glob("results.rank*.jsonl"))]
                 for r in read_jsonl(f)}
    rows_file = out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")
    mine = shard(len(prompts), rank, world)
    todo = [(i, s) for i in mine for s in range(samples)
            if any(row_key(i, s, r.key) not in done_rows for r in runs)]
    pipes: dict[tuple, object] = {}

    def pipe_for(r: Run, accept_rate: float = 0.5, prefix: int = 1):
        k = (r.router, r.tau, accept_rate if r.router in ("random", "percentile-prior") else None,
             prefix if r.router == "prefix" else None)
        if k not in pipes:
            pipes[k] = models.pipeline(router=r.router or "reject-all", tau=r.tau, accept_rate=accept_rate,
                                       seed=seed, prefix_blocks=prefix)
        return pipes[k]

    if warmup and todo:  # untimed videos so that timings exclude lazy init and allocator growth
        for r in [r for r in runs if r.label in ("target", "draft")] or runs[:1]:
            pipe_for(r)(prompts[todo[0][0]], **asdict(r.config(seed)))
    written = 0
    for i, s in todo:
        prompt, vseed = prompts[i], video_seed(seed, i, s)
        for order, r in enumerate(runs):
            key = row_key(i, s, r.key)
            if key in done_rows:
                continue
            acc, prefix = (r.accept_rate if r.accept_rate is not None else 0.5), 1
            if r.label in MATCHED_TO:  # random: the routed run's accept rate on this video; prefix: its target blocks
                ref = done_rows[row_key(i, s, Run(MATCHED_TO[r.label], "sdvg", r.tau).key)]
                acc = ref["accept_rate"] or 0.0
                prefix = sum(1 for a in ref["accepted"] if not a)
            cfg = r.config(vseed)
            res = pipe_for(r, acc, prefix)(prompt, **asdict(cfg))
            tr = res.trace
            q = models.evaluator.evaluate(res.frames, prompt) if models.evaluator is not None else {}
            row = dict(key=key, run=r.key, run_order=order, label=r.label, mode=cfg.mode, tau=r.tau, router=r.router,
                       stitch_steps=cfg.stitch_steps, prompt_index=i, sample=s, prompt=prompt, seed=cfg.seed,
                       routed_accept_rate=acc if r.label in MATCHED_TO and r.router == "random" else None,
                       prefix_blocks=prefix if r.label in MATCHED_TO and r.router == "prefix" else None,
                       wall_s=tr.wall_s, stage_s=stage_seconds(tr), drafter_forwards=tr.drafter_forwards,
                       target_forwards=tr.target_forwards,
                       accept_rate=tr.accept_rate, accepted=[b.accepted for b in tr.blocks],
                       skipped=[b.skipped for b in tr.blocks],
                       block_scores=[b.score for b in tr.blocks], quality=q.get("quality"), quality_detail=q,
                       peak_mem_mb=tr.peak_mem_mb, rank=rank, world=world)
            if save_videos:  # names from sdvg.io.video_stem: under --out, one per (prompt index, sample)
                if save_videos == "vbench":  # {prompt}-{n}: a repeated prompt continues the numbering
                    name = video_stem(prompt, prompts[:i].count(prompt) * samples + s, verbatim=True)
                else:
                    name = video_stem(prompt, f"{i:05d}", s)
                row["video"] = f"videos/{r.key}/{name}.mp4"
                export_to_video(res.frames, out / row["video"], fps=fps)
            append_jsonl(rows_file, row)
            done_rows[key] = row
            written += 1
            log(f"[rank {rank}] prompt {i} sample {s} {r.key:>14}: {tr.summary()}  quality {row['quality']}")
    return written


def write_video_index(out: Path, rows: list[dict]) -> None:
    """DIR/videos/index.jsonl: one line per saved video (row key, run, prompt, sample, file under DIR)."""
    saved = [dict(key=r["key"], run=r["run"], prompt_index=r["prompt_index"], sample=r["sample"], prompt=r["prompt"],
                  seed=r["seed"], video=r["video"]) for r in rows if r.get("video")]
    if saved:
        with atomic_path(out / "videos" / "index.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in saved), encoding="utf-8")


def stage_seconds(trace) -> dict[str, float]:
    """Seconds per stage summed over blocks; `dit` = draft + target + commit (the part SDVG speeds up)."""
    out: dict[str, float] = {}
    for b in trace.blocks:
        for k, v in b.ms.items():
            out[k] = out.get(k, 0.0) + v / 1000
    out["dit"] = sum(out.get(k, 0.0) for k in ("draft", "target", "commit"))
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summarise(rows: list[dict]) -> list[dict]:
    """The paper's Table 1/2 shape: one line per run key, speedup and retention against target-only."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["run"], []).append(r)
    ref = by.get("target", [])
    ref_t, ref_q = _mean([r["wall_s"] for r in ref]), _mean([r["quality"] for r in ref])
    ref_f = _mean([r["target_forwards"] for r in ref])
    ref_d = _mean([r["stage_s"]["dit"] for r in ref])
    out = []
    for key, rs in sorted(by.items(), key=lambda kv: kv[1][0]["run_order"]):
        t, q = _mean([r["wall_s"] for r in rs]), _mean([r["quality"] for r in rs])
        dit = _mean([r["stage_s"]["dit"] for r in rs])
        pos = acceptance_by_position([r["accepted"] for r in rs])
        out.append(dict(
            run=key, label=rs[0]["label"], tau=rs[0]["tau"], videos=len(rs), quality=q,
            retention_pct=100 * q / ref_q if q is not None and ref_q else None,
            time_s=t, speedup=ref_t / t if ref_t and t else None,
            dit_s=dit, dit_speedup=ref_d / dit if ref_d and dit else None,
            accept_rate=_mean([r["accept_rate"] for r in rs]),
            drafter_forwards=_mean([r["drafter_forwards"] for r in rs]),
            target_forwards=_mean([r["target_forwards"] for r in rs]),
            target_forward_ratio=(ref_f / _mean([r["target_forwards"] for r in rs])
                                  if ref_f and _mean([r["target_forwards"] for r in rs]) else None),
            skipped_scores=_mean([sum(x == "score" for x in r.get("skipped") or []) for r in rs]),
            skipped_drafts=_mean([sum(x == "draft" for x in r.get("skipped") or []) for r in rs]),
            accept_by_position=pos))
    return out


def paired(rows: list[dict], resamples: int = 2000, others: tuple[str, ...] = MATCHED,
           first: str = "sdvg") -> list[dict]:
    """`first` minus each of `others` at the same tau (default: SDVG minus the matched baselines random and prefix),
    paired by video and seed: the mean quality difference with a 95% bootstrap interval over videos (fixed
    resampling seed, so reruns agree)."""
    import numpy as np

    by = {(r["label"], r["tau"], r["prompt_index"], r["sample"]): r["quality"] for r in rows}
    out = []
    for tau in sorted({r["tau"] for r in rows if r["label"] == first}):
        for base in others:
            d = [q - by[(base, tau, i, s)] for (lab, t, i, s), q in by.items()
                 if lab == first and t == tau and q is not None and by.get((base, tau, i, s)) is not None]
            if not d:
                continue
            d = np.asarray(d)
            boot = np.random.default_rng(0).choice(d, size=(resamples, len(d))).mean(1)
            out.append(dict(tau=tau, baseline=base, videos=len(d), mean_diff=float(d.mean()),
                            lo=float(np.quantile(boot, 0.025)), hi=float(np.quantile(boot, 0.975))))
    return out


def _fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def _pair_rows(pairs: list[dict]) -> list[str]:
    """Markdown rows of `paired`'s output: tau, baseline, videos, mean difference, 95% interval."""
    return [f"| {p['tau']:g} | {p['baseline']} | {p['videos']} | {p['mean_diff']:+.4f} "
            f"| [{p['lo']:+.4f}, {p['hi']:+.4f}] |" for p in pairs]


def write_summary(out: Path, rows: list[dict]) -> list[dict]:
    summary = summarise(rows)
    cols = ["run", "videos", "quality", "retention_pct", "time_s", "speedup", "dit_s", "dit_speedup", "accept_rate",
            "drafter_forwards", "target_forwards", "target_forward_ratio"]
    with atomic_path(out / "summary.csv") as tmp:
        import csv
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols + ["accept_by_position"])
            for s in summary:
                w.writerow([s[c] for c in cols] + [" ".join(_fmt(p, ".2f") for p in s["accept_by_position"])])
    md = ["| run | videos | quality | retention % | time (s) | speedup | DiT time (s) | DiT speedup | accept rate "
          "| drafter fwd | target fwd | accept by block position |", "|" + "---|" * 12]
    for s in summary:
        md.append(f"| {s['run']} | {s['videos']} | {_fmt(s['quality'], '.4f')} | {_fmt(s['retention_pct'], '.1f')} "
                  f"| {_fmt(s['time_s'], '.2f')} | {_fmt(s['speedup'], '.2f')}× | {_fmt(s['dit_s'], '.2f')} "
                  f"| {_fmt(s['dit_speedup'], '.2f')}× | {_fmt(s['accept_rate'], '.2f')} "
                  f"| {_fmt(s['drafter_forwards'], '.1f')} | {_fmt(s['target_forwards'], '.1f')} "
                  f"| {' '.join(_fmt(p, '.2f') for p in s['accept_by_position'])} |")
    md += ["", "time: wall seconds per video (model load and warm-up excluded), decode and scoring included; "
           "DiT time: drafter + target + commit stages only. speedup and retention are against target only."]
    skips = [s for s in summary if s["skipped_scores"] or s["skipped_drafts"]]
    if skips:
        md += ["", "Work skipped per video (router vvs): " + "; ".join(
            f"{s['run']}: {s['skipped_scores']:.1f} blocks accepted unscored, {s['skipped_drafts']:.1f} not drafted"
            for s in skips)]
    pairs = paired(rows)
    if pairs:
        md += ["", "SDVG vs content-blind routing at the same tau, paired by video and seed (random: SDVG's accept "
               "rate on that video; prefix: the target makes as many blocks as SDVG gave it, the first ones):", "",
               "| tau | baseline | videos | quality diff (SDVG - baseline) | 95% interval |", "|---|---|---|---|---|"]
        md += _pair_rows(pairs)
    rel = paired(rows, others=("relative-random", "relative-prefix"), first="relative")
    if rel:
        md += ["", "The relative router vs the same content-blind routings, matched to its routing at each offset:", "",
               "| offset | baseline | videos | quality diff (relative - baseline) | 95% interval |",
               "|---|---|---|---|---|"]
        md += _pair_rows(rel)
    rivals = [lab for lab in ("hybrid", "mean", "cascade-delta", "vvs") if any(r["label"] == lab for r in rows)]
    vs = [(lab, p) for lab in rivals for p in paired(rows, others=("sdvg",), first=lab)]
    if vs:
        md += ["", "Variants minus SDVG at the same tau, paired by video and seed:", "",
               "| tau | variant | videos | quality diff (variant - SDVG) | 95% interval |", "|---|---|---|---|---|"]
        md += [f"| {p['tau']:g} | {lab} | {p['videos']} | {p['mean_diff']:+.4f} | [{p['lo']:+.4f}, {p['hi']:+.4f}] |"
               for lab, p in vs]
    with atomic_path(out / "summary.md") as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    plot_pareto(out / "pareto.png", summary)
    return summary


def plot_pareto(path: Path, summary: list[dict]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    pts = {s["run"]: s for s in summary if s["speedup"] is not None and s["quality"] is not None}
    front = sorted((s for s in pts.values() if s["label"] == "sdvg"), key=lambda s: s["speedup"])
    if front:
        ax.plot([s["speedup"] for s in front], [s["quality"] for s in front], "o-", label="SDVG (τ sweep)")
        for s in front:
            ax.annotate(f"τ={s['tau']:g}", (s["speedup"], s["quality"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    style = {"target": ("*", "target only"), "draft": ("s", "draft only"), "first": ("^", "target block 0 only"),
             "stitch": ("D", "T-Stitch"), "random": ("x", "random routing"), "mean": ("+", "mean-frame score"),
             "prefix": ("1", "target prefix (matched)"), "relative": ("P", "relative router (per-prompt τ)"),
             "hybrid": ("v", "hybrid (stitch on reject)")}
    for label, (marker, name) in style.items():
        ss = [s for s in pts.values() if s["label"] == label]
        if ss:
            ax.scatter([s["speedup"] for s in ss], [s["quality"] for s in ss], marker=marker, label=name, s=40)
    ax.set_xlabel("speedup vs target only (wall time)")
    ax.set_ylabel("quality (evaluator)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def bench_main(argv: list[str]) -> int:
    from sdvg.flags import Parser, add_model_args, check_model_args, load_models, model_files, parse_args
    from sdvg.settings import FPS, LIMIT, SAMPLES, SEED, STEPS, TAUS

    p = Parser(prog="sdvg bench", description=__doc__.split("\n")[0])
    p.add_argument("--prompts", help="prompt file, one per line (default: the built-in world's prompt set)")
    p.add_argument("--out", default="bench")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma list from {','.join(ALL_MODES)}")
    p.add_argument("--taus", type=TAUS, default=None, help="comma list (default: the model set's sweep; -inf ok)")
    p.add_argument("--stitch-steps", type=STEPS, default=2, help="k for hybrid/stitch runs")
    p.add_argument("--offsets", type=TAUS, default=list(RELATIVE_OFFSETS),
                   help="comma list of offsets from the target's block-0 score for --modes relative (default "
                        f"{','.join(f'{o:g}' for o in RELATIVE_OFFSETS)})")
    p.add_argument("--samples", type=SAMPLES, default=1)
    p.add_argument("--limit", type=LIMIT, default=None, help="only the first N prompts (a quick look)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--save-videos", choices=("vbench", "index"), default=None,
                   help="DIR/videos/RUN/NAME.mp4; vbench: NAME = {prompt}-{n} as VBench expects where the prompt is a "
                        "safe file name, index: numbered names; DIR/videos/index.jsonl maps rows to files")
    p.add_argument("--fps", type=FPS, default=16)
    p.add_argument("--force", action="store_true", help="start over in an --out that holds another study")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--config", help="JSON/TOML file of flag values")
    add_model_args(p)
    args = parse_args(p, argv)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        plan_runs(modes, args.taus or [0.0], args.stitch_steps, args.offsets)  # bad --modes fail before loading
    except ValueError as e:
        p.error(str(e))
    user_prompts = read_prompts(args.prompts) if args.prompts else None
    check_model_args(args)
    out = prepare_out_dir(args.out, recursive_clean=True)
    rank, world = _dist()
    models = load_models(args)
    prompts = user_prompts or list(models.prompts)
    if not prompts:
        raise ValueError("no prompts: pass --prompts FILE")
    runs = plan_runs(modes, args.taus or list(models.default_taus), args.stitch_steps, args.offsets)
    config = dict(models=models.name, checkpoints=[args.drafter, args.target, args.vae, args.scorer_path],
                  cache_policy=args.cache_policy, presets=[args.drafter_preset, args.target_preset],
                  recompute_frames=args.recompute_frames, anchor=args.anchor, decoder_rule=args.decoder_rule, runs=[asdict(r) for r in runs], samples=args.samples,
                  seed=args.seed, num_blocks=models.video.num_blocks,
                  prompts_sha=hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16],
                  weights=weights_fingerprint(model_files(args)))
    if args.limit is not None:  # after the config hash: `--limit N` and a full run can share one --out
        prompts = prompts[: args.limit]
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        check_config(out, config, args.force)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    t0 = time.perf_counter()
    n = run_study(models, prompts, out, runs=runs, samples=args.samples, seed=args.seed, rank=rank, world=world,
                  save_videos=args.save_videos, fps=args.fps, warmup=not args.no_warmup)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        rows = merge_results(out)
        write_video_index(out, rows)
        summary = write_summary(out, rows)
        print((out / "summary.md").read_text())
        print(f"{n} new rows in {time.perf_counter() - t0:.1f}s on rank 0; {len(rows)} rows in {out / 'results.jsonl'}; "
              f"{len(summary)} runs summarised; plot {out / 'pareto.png'}")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return 0
