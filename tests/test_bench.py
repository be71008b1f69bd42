"""The study runner on tiny random models: rows, resume, refusal, sharding, summary, torchrun equivalence."""
import json
import os
import subprocess
import sys

import pytest

from sdvg.bench import bench_main, plan_runs, shard, summarise
from sdvg.io import read_jsonl

ARGS = ["--models", "tiny", "--modes", "target,draft,sdvg,random,prefix,mean,first,hybrid", "--taus", "0,0.01",
        "--no-warmup"]


def _prompts(tmp_path, n=3):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(f"prompt number {i}" for i in range(n)) + "\n")
    return str(f)


def test_plan_and_shard():
    runs = plan_runs(["target", "draft", "sdvg", "random"], [-0.7, -1.0], 2)
    assert [r.key for r in runs] == ["target", "draft", "sdvg@-0.7", "random@-0.7", "sdvg@-1", "random@-1"]
    with pytest.raises(ValueError, match="needs sdvg"):
        plan_runs(["random"], [0.0], 2)
    parts = [shard(1003, r, 8) for r in range(8)]
    assert sorted(i for p in parts for i in p) == list(range(1003))


def test_bench_rows_summary_resume_and_refusal(tmp_path):
    out = tmp_path / "b"
    p = _prompts(tmp_path, 2)
    assert bench_main(ARGS + ["--prompts", p, "--out", str(out)]) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == 2 * (3 + 5 * 2)
    by = {(r["run"], r["prompt_index"]): r for r in rows}
    for i in range(2):  # the matched prefix baseline gives the target exactly as many (leading) blocks as SDVG did
        sd, pre = by[("sdvg@0", i)], by[("prefix@0", i)]
        k = sum(1 for a in sd["accepted"] if not a)
        assert pre["prefix_blocks"] == k and pre["accepted"][1:] == [b >= k for b in range(1, len(pre["accepted"]))]
    assert "paired by video and seed" in (out / "summary.md").read_text()
    for f in ("summary.md", "summary.csv", "pareto.png", "config.json"):
        assert (out / f).stat().st_size > 0
    r = next(r for r in rows if r["run"] == "sdvg@0")
    for k in ("wall_s", "drafter_forwards", "target_forwards", "accept_rate", "accepted", "quality", "seed"):
        assert k in r
    rnd = next(x for x in rows if x["run"] == "random@0" and x["prompt_index"] == r["prompt_index"])
    assert rnd["routed_accept_rate"] == r["accept_rate"]

    # a killed run: drop the last 3 rows and a torn line, then resume: only those 3 are redone
    lines = (out / "results.jsonl").read_text().splitlines(True)
    (out / "results.jsonl").write_text("".join(lines[:-3]) + '{"key": "0/0/tar')
    before = {x["key"]: x for x in read_jsonl(out / "results.jsonl")}
    assert bench_main(ARGS + ["--prompts", p, "--out", str(out)]) == 0
    after = {x["key"]: x for x in read_jsonl(out / "results.jsonl")}
    assert len(after) == len(rows) and all(after[k] == v for k, v in before.items())

    with pytest.raises(ValueError, match="different study"):
        bench_main(ARGS[:-3] + ["--taus", "0.5", "--no-warmup", "--prompts", p, "--out", str(out)])
    assert bench_main(ARGS[:-3] + ["--taus", "0.5", "--no-warmup", "--prompts", p, "--out", str(out), "--force"]) == 0
    assert {x["tau"] for x in read_jsonl(out / "results.jsonl")} == {None, 0.5}


def test_paired_differences_and_interval():
    from sdvg.bench import paired

    rows = [dict(label=lab, tau=0.5, prompt_index=i, sample=0, quality=q)
            for i in range(20) for lab, q in (("sdvg", 0.8 + 0.01 * (i % 3)), ("random", 0.7), ("prefix", 0.8))]
    res = {p["baseline"]: p for p in paired(rows)}
    assert res["random"]["videos"] == 20 and res["random"]["lo"] > 0.09 and abs(res["random"]["mean_diff"] - 0.1095) < 1e-3
    assert res["prefix"]["lo"] <= res["prefix"]["mean_diff"] <= res["prefix"]["hi"]
    assert paired(rows) == paired(rows)  # fixed resampling seed


def test_summary_numbers_come_from_rows():
    def row(run, label, order, t, q, acc=None):
        return dict(run=run, label=label, tau=None, run_order=order, wall_s=t, stage_s={"dit": t / 2}, quality=q,
                    accept_rate=acc,
                    accepted=[None, acc is not None and acc > 0.5], drafter_forwards=0, target_forwards=10)
    rows = [row("target", "target", 0, 4.0, 1.0), row("target", "target", 0, 6.0, 0.8),
            row("sdvg@1", "sdvg", 1, 2.0, 0.9, 1.0), row("sdvg@1", "sdvg", 1, 3.0, 0.9, 0.0)]
    s = {x["run"]: x for x in summarise(rows)}
    assert s["sdvg@1"]["speedup"] == pytest.approx(5.0 / 2.5) and s["sdvg@1"]["dit_speedup"] == pytest.approx(2.0)
    assert s["sdvg@1"]["retention_pct"] == pytest.approx(100 * 0.9 / 0.9)
    assert s["sdvg@1"]["accept_rate"] == 0.5 and s["sdvg@1"]["accept_by_position"] == [None, 0.5]


def test_torchrun_two_ranks_equal_one_rank_on_the_world(tmp_path):
    """The built-in world, shortened to 2 blocks: 2 gloo ranks give the same rows as 1 process."""
    args = ["--models", "world", "--num-blocks", "2", "--limit", "3", "--modes", "target,draft,sdvg", "--taus",
            "-1.9", "--no-warmup"]
    assert bench_main(args + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "sdvg", "bench", *args, "--out", str(tmp_path / "two")]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    one = {r["key"]: r for r in read_jsonl(tmp_path / "one" / "results.jsonl")}
    two = {r["key"]: r for r in read_jsonl(tmp_path / "two" / "results.jsonl")}
    assert one.keys() == two.keys() and len(one) == 3 * 3
    assert {r["rank"] for r in two.values()} == {0, 1}
    for k in one:
        assert one[k]["accepted"] == two[k]["accepted"] and one[k]["seed"] == two[k]["seed"]
        assert one[k]["quality"] == pytest.approx(two[k]["quality"], rel=1e-5)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["runs"]


def test_plan_has_the_neighbouring_methods():
    runs = plan_runs(["target", "sdvg", "vvs", "cascade-delta", "exact", "relative", "percentile-prior"], [0.3], 2)
    keys = [r.key for r in runs]
    assert keys == ["target", "exact", "percentile-prior", "relative@-0.2", "relative@-0.1", "relative@0", "sdvg@0.3",
                    "cascade-delta@0.3", "vvs@0.3"]
    assert next(r for r in runs if r.label == "percentile-prior").accept_rate == 0.72
    assert [r.key for r in plan_runs(["relative"], [0.3], 2, offsets=[-0.05, 0.0])] == ["relative@-0.05", "relative@0"]
    assert [r.key for r in plan_runs(["relative", "random", "prefix"], [0.3], 2, offsets=[-0.05])] == [
        "relative@-0.05", "relative-random@-0.05", "relative-prefix@-0.05"]


def test_bench_relative_offsets_flag(tmp_path):
    """`--offsets` sets the relative router's sweep from the command line (negative values as written)."""
    out = tmp_path / "rel"
    assert bench_main(["--models", "tiny", "--modes", "target,relative,random,prefix", "--offsets", "-0.05,0",
                       "--no-warmup", "--num-blocks", "3", "--prompts", _prompts(tmp_path, 2), "--out", str(out)]) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert sorted({r["run"] for r in rows}) == ["relative-prefix@-0.05", "relative-prefix@0", "relative-random@-0.05",
                                                "relative-random@0", "relative@-0.05", "relative@0", "target"]
    by = {(r["run"], r["prompt_index"]): r for r in rows}
    for i in range(2):  # matched to the relative router's routing of the same video, as random/prefix are to SDVG's
        rel = by[("relative@0", i)]
        assert by[("relative-random@0", i)]["routed_accept_rate"] == (rel["accept_rate"] or 0.0)
        assert by[("relative-prefix@0", i)]["prefix_blocks"] == sum(1 for a in rel["accepted"] if not a)
    assert "The relative router vs the same content-blind routings" in (out / "summary.md").read_text()


def test_weights_fingerprint_sees_changed_weights(tmp_path):
    """A bench resumed after the weights changed is refused (the fingerprint is part of the study's config)."""
    from sdvg.bench import check_config, weights_fingerprint

    w = tmp_path / "a" / "weights"
    w.mkdir(parents=True)
    (w / "target.safetensors").write_bytes(bytes(range(256)) * 20000)  # ~5 MiB: head and tail read
    (w / "world.json").write_text("{}")
    fp = weights_fingerprint([w, None])
    copy = tmp_path / "b" / "weights"
    copy.mkdir(parents=True)
    for f in w.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert weights_fingerprint([copy]) == fp  # where the files lie does not matter, only what they are
    (w / "MODEL_CARD.md").write_text("regenerated")  # nor the docs and logs beside them
    assert weights_fingerprint([w]) == fp
    data = bytearray((w / "target.safetensors").read_bytes())
    data[-5] ^= 1  # retrained: the last tensor's bytes differ
    (w / "target.safetensors").write_bytes(bytes(data))
    changed = weights_fingerprint([w])
    assert changed != fp and weights_fingerprint([]) != fp
    out = tmp_path / "out"
    out.mkdir()
    check_config(out, {"weights": fp}, force=False)
    with pytest.raises(ValueError, match="changed: weights"):
        check_config(out, {"weights": changed}, force=False)
