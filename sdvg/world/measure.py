"""The trained world measured: the `card` stage of `sdvg.world.train` (held-out quality of target-only, draft-only
and SDVG, the critic's ranking of draft blocks, the costs per block, the frame strip), written to world.json and, by
`sdvg.world.card`, to the model card."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from sdvg.seeding import derive_seed, video_seed
from sdvg.world import spec

if TYPE_CHECKING:
    from sdvg.world.train import Run


def generate(models, prompt: str, mode: str, seed: int, num_blocks: int | None = None, scorer=None,
             tau: float | None = None):
    """One video of the world's model set (`load_world`) through `ModelSet.pipeline` (draft-only, target-only or
    SDVG with `scorer` at `tau`) -> (frames [T,3,H,W], trace)."""
    from dataclasses import replace

    video = models.video if num_blocks is None else replace(models.video, num_blocks=num_blocks)
    pipe = replace(models, scorer=scorer, video=video).pipeline(router="threshold" if mode == "sdvg" else None,
                                                                tau=tau)
    out = pipe(prompt, mode=mode, seed=seed)
    return out.frames, out.trace


KINDS = ("one", "two")  # prompts with one object, with two
# the bench's default tau sweep: these quantiles of the critic's draft-block scores (every decile, so the frontier has
# a point every ~10% of accept rate); the default tau is the median
TAU_QUANTILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def prompt_kind(prompt: str) -> str:
    """'one' or 'two': how many objects the prompt asks for."""
    from sdvg.world.grammar import parse

    return KINDS[len(parse(prompt).objects) - 1]


def spread(prompts: list[str], n: int | None) -> list[str]:
    """n prompts spread evenly over a prompt file, first and last included (all of them for None): each file ends
    with its two-object prompts, so a short budget still measures both kinds."""
    if n is None or n >= len(prompts):
        return prompts
    return [prompts[i] for i in np.linspace(0, len(prompts) - 1, n).round().astype(int)]


def _means(rows: list[dict]) -> dict[str, float]:
    return {k: round(float(np.mean([x[k] for x in rows])), 4) for k in rows[0]}


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(np.asarray(a, dtype=np.float64)))
    rb = np.argsort(np.argsort(np.asarray(b, dtype=np.float64)))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(ra) > 2 else float("nan")


def forward_cost(world) -> dict:
    """FLOP ratio and measured wall-time ratio of one cached block forward (the 5th block, 12 frames of context)."""
    from sdvg.cache import KVCache

    out = {}
    video = world.video
    keys = video.frames_per_block * 5 * video.tokens_per_frame
    ft, fd = (spec.dit_flops_per_token(c, keys) for c in (spec.TARGET, spec.DRAFTER))
    out["flops_per_token_target"], out["flops_per_token_drafter"] = ft, fd
    out["flop_ratio"] = round(ft / fd, 2)
    ctx = world.text_encoder.encode(["a red circle moving right on a blue background"])
    times = {}
    for name, dit in (("target", world.target), ("drafter", world.drafter)):
        cache = KVCache(dit.cfg, video.latent_frames, video.tokens_per_frame, 1, "cpu", torch.float32)
        x = torch.randn(1, spec.Z_DIM, 12, *video.latent_hw)
        with torch.no_grad():
            dit(x, torch.zeros(1, 12), ctx, cache=cache, start_frame=0, block_frames=3)
            xb = torch.randn(1, spec.Z_DIM, 3, *video.latent_hw)
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(10):
                    dit(xb, torch.full((1, 3), 625.0), ctx, cache=cache, start_frame=12)
                best = min(best, (time.perf_counter() - t0) / 10)
        times[name] = best
        out[f"params_{name}"] = sum(p.numel() for p in dit.parameters())
    out["ms_target"], out["ms_drafter"] = round(times["target"] * 1e3, 3), round(times["drafter"] * 1e3, 3)
    out["time_ratio"] = round(times["target"] / times["drafter"], 2)
    return out


def block_costs(world, prompts: list[str], seed: int = 0) -> dict:
    """Median wall ms per block (blocks 1-8, from the traces of real videos) of each stage: the target's block (its
    4 steps + the commit of the block into its cache), the drafter's block, one block's decode and its scoring; and
    the ratios the real pair has (14B block ~10 s vs decode + ImageReward well under 1 s; drafter ~1/10)."""
    ms: dict[str, list[float]] = {}
    for p in prompts:
        for mode, tau in (("target", None), ("sdvg", -math.inf)):  # sdvg at -inf: every draft accepted and committed
            _, tr = generate(world, p, mode, seed, scorer=world.scorer, tau=tau)
            for bl in tr.blocks[1:]:
                for k, v in bl.ms.items():
                    ms.setdefault(f"{mode}_{k}", []).append(v)
    med = {k: float(np.median(v)) for k, v in ms.items()}
    out = {"target_block_ms": med["target_target"] + med.get("target_commit", 0.0), "drafter_block_ms": med["sdvg_draft"],
           "decode_block_ms": med["target_decode"], "score_block_ms": med["sdvg_score"],
           "commit_ms": med.get("sdvg_commit", 0.0)}
    out = {k: round(v, 2) for k, v in out.items()}
    out["target_over_decode_score"] = round(out["target_block_ms"] / (out["decode_block_ms"] + out["score_block_ms"]), 2)
    out["drafter_over_target"] = round(out["drafter_block_ms"] / out["target_block_ms"], 3)
    return out


STRIP_PROMPT = "a yellow circle moving in a circle on a blue background"  # the README's first prompt


def write_strip(world, path: Path, prompt: str, seed: int, tau: float) -> str:
    """The frame strip of the README and the model card: target-only, draft-only and SDVG on one prompt, with the
    SDVG block decisions; returns SDVG's decisions (- forced block 0, A accepted, R rejected)."""
    from sdvg.io import save_strip
    from sdvg.world.render import block_frame_range

    rows, marks = [], ""
    for mode in ("target", "draft", "sdvg"):
        f, tr = generate(world, prompt, mode, seed, scorer=world.scorer, tau=tau)
        acc = [False] * len(tr.blocks) if mode == "target" else None
        if mode == "sdvg":
            acc, marks = [bool(bl.accepted) for bl in tr.blocks], tr.marks
        rows.append((f"SDVG tau={tau:g}" if mode == "sdvg" else f"{mode}-only", f, acc))
    save_strip(rows, [block_frame_range(b) for b in range(world.video.num_blocks)], path, scale=2)
    return marks


def stage_card(run: Run) -> None:
    """Evaluate on held-out prompts (target-only, draft-only, SDVG at the middle tau), the critic-evaluator
    Spearman, the forward cost ratio; write world.json and MODEL_CARD.md."""
    from sdvg.world import load_world, read_prompts
    from sdvg.world.evaluator import evaluate, evaluate_blocks, frame_scores
    from sdvg.world.render import block_frame_range

    run.seed_stage("card")
    world = load_world(weights=run.out)
    heldout = spread(read_prompts("heldout"), run.budget.card_prompts)
    train = spread(read_prompts("train"), run.budget.card_prompts)
    # tau sweep from the critic's block scores on draft blocks of both splits
    res: dict = {"train": {}, "heldout": {}}
    crit_scores, block_q, block_a, oracle, block_kind = [], [], [], [], []
    walls: dict[str, list[float]] = {"target": [], "draft": [], "sdvg": []}
    for split, prompts in (("train", train), ("heldout", heldout)):
        rows = {m: [] for m in ("target", "draft")}
        kinds = [prompt_kind(p) for p in prompts]
        for i, p in enumerate(prompts):
            seed = derive_seed("card", run.seed, split, i) % 2**31
            for mode in ("target", "draft"):
                f, tr = generate(world, p, mode, seed)
                blocks = evaluate_blocks(f, p)  # `evaluate` is their mean; block 0 is the one made from text alone
                e = {k: float(np.mean([b[k] for b in blocks])) for k in blocks[0]} | {"block0": blocks[0]["quality"]}
                rows[mode].append(e)
                walls[mode].append(tr.wall_s)
                if mode == "draft":
                    for b in range(world.video.num_blocks):
                        s, e_ = block_frame_range(b)
                        blk = f[s:e_]
                        crit_scores.append(world.scorer.score(blk, p).min().item())
                        eb = blocks[b]  # the video's own per-block evaluation, already made above
                        block_q.append(eb["quality"])
                        block_a.append(eb["adherence"])
                        oracle.append(frame_scores(blk, p, s)["adherence"].min().item())
                        block_kind.append(kinds[i])
        for m, r in rows.items():
            res[split][m] = _means(r)
            for kind in KINDS:  # the same, by number of objects (the models differ most there)
                if kind in kinds:
                    res[split][f"{m}_{kind}"] = _means([x for x, k in zip(r, kinds) if k == kind])
        res[split]["prompts"] = {kind: kinds.count(kind) for kind in KINDS}
        run.log("card", split=split, target=res[split]["target"]["quality"], draft=res[split]["draft"]["quality"])
    res["critic_spearman_block"] = round(spearman(crit_scores, block_q), 3)
    res["critic_spearman_block_adherence"] = round(spearman(crit_scores, block_a), 3)
    # the ceiling of a one-frame judge: the evaluator's own per-frame adherence, worst frame, as the block's score
    res["oracle_spearman_block"] = round(spearman(oracle, block_q), 3)
    res["critic_blocks"] = len(block_q)
    for kind in KINDS:  # within one kind of prompt: no ranking of one kind's blocks above the other's
        sel = [j for j, k in enumerate(block_kind) if k == kind]
        if len(sel) > 2:
            q = [block_q[j] for j in sel]
            res[f"critic_spearman_block_{kind}"] = round(spearman([crit_scores[j] for j in sel], q), 3)
            res[f"oracle_spearman_block_{kind}"] = round(spearman([oracle[j] for j in sel], q), 3)
    taus = [round(float(q), 3) for q in np.quantile(crit_scores, TAU_QUANTILES)]
    tau = taus[TAU_QUANTILES.index(0.5)]
    res["default_taus"], res["default_tau"] = taus, tau
    # SDVG at the middle tau on held-out prompts
    sd, acc = [], []
    for i, p in enumerate(heldout):
        seed = derive_seed("card", run.seed, "heldout", i) % 2**31
        f, tr = generate(world, p, "sdvg", seed, scorer=world.scorer, tau=tau)
        sd.append(evaluate(f, p)["quality"])
        acc.append(tr.accept_rate)
        walls["sdvg"].append(tr.wall_s)
    res["heldout"]["sdvg"] = {"quality": round(float(np.mean(sd)), 4), "accept_rate": round(float(np.mean(acc)), 3),
                              "tau": tau}
    kinds = [prompt_kind(p) for p in heldout]
    for kind in KINDS:
        sel = [j for j, k in enumerate(kinds) if k == kind]
        if sel:
            res["heldout"]["sdvg"][kind] = {"quality": round(float(np.mean([sd[j] for j in sel])), 4),
                                            "accept_rate": round(float(np.mean([acc[j] for j in sel])), 3)}
    res["cost"] = forward_cost(world) | block_costs(world, heldout[:4])
    # wall time per video (the first video of each mode includes warm-up; medians make that harmless)
    res["wall_s"] = {m: round(float(np.median(w)), 3) for m, w in walls.items()}
    run.log("card", **{k: v for k, v in res.items() if k not in ("train", "heldout")},
            sdvg=res["heldout"]["sdvg"])
    from sdvg.world import WEIGHTS_DIR
    from sdvg.world.card import CARD, STRIP, write_card

    shipped = run.out.resolve() == WEIGHTS_DIR.resolve()
    strip = STRIP if shipped else run.out / STRIP.name
    seed = video_seed(0, 0, 0)  # what `sdvg generate "PROMPT"` uses for its first video
    res["strip"] = {"prompt": STRIP_PROMPT, "seed": seed, "tau": tau,
                    "sdvg_blocks": write_strip(world, strip, STRIP_PROMPT, seed, tau)}
    info = {"seed": run.seed, "threads": torch.get_num_threads(), "budget": asdict(run.budget),
            "default_taus": taus, "default_tau": tau, "metrics": res}
    if run.shares is not None:  # a stage of `--parallel`: the run's wall time since its scheduler started
        from sdvg.io import read_jsonl

        start = next((r for r in reversed(read_jsonl(run.log_path)) if r["stage"] == "start" and r.get("parallel")), {})
        if "at" in start:
            info["parallel_wall_s"] = round(time.time() - start["at"], 1)
    (run.out / "world.json").write_text(json.dumps(info, indent=2) + "\n")
    card = write_card(run.out, info, CARD if shipped else run.out / "MODEL_CARD.md")
    run.log("card", written=str(card))


