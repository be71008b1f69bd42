"""Bad inputs, collisions, kills, concurrency and long videos (issue 18): each gives a clear one-line error before
any work, or works, and nothing is written outside --out or silently replaced."""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from sdvg.bench import bench_main
from sdvg.cli import main
from sdvg.io import (atomic_path, clean_stale_temps, prepare_out_dir, read_jsonl, read_prompts, safe_name,
                     video_stem)
from sdvg.loading import load_tiny_models
from sdvg.memory import TooLargeError
from sdvg.pipeline import PipelineBusyError

PROMPT = "a red circle moving down on a black background"
TINY = ["--models", "tiny", "--no-progress"]


@pytest.fixture(scope="module")
def models():
    return load_tiny_models(seed=0, num_blocks=3)


def _cli(*args, cwd=None):
    """The user's path: `python -m sdvg ...` in a subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "sdvg", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- 1, 2: output names
def test_video_stem_is_collision_free_bounded_and_a_single_component():
    prompts = ["../../x", "/abs/path", "a/b", "a/b/c", "abc", "..", "~", ".", "", ".hidden", "猫" * 100, "x" * 300]
    stems = [video_stem(p, "seed0") for p in prompts]
    assert len(set(stems)) == len(stems)
    for s in stems:
        assert len(s.encode()) <= 120 and "/" not in s and not s.startswith((".", "-")) and s
    assert video_stem(PROMPT, "seed0") != video_stem(PROMPT, "seed1") != video_stem(PROMPT, "seed0", "s1")
    assert video_stem("a cat", 0, verbatim=True) == "a cat-0"  # VBench's layout where the prompt is a safe name
    assert video_stem("a/b", 0, verbatim=True) != "a/b-0"
    assert len(safe_name("猫" * 100, 10).encode()) <= 10


def test_generate_never_replaces_a_video_and_records_prompt_to_file(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["generate", PROMPT, *TINY, "--out", str(out)]) == 0
    first = out / f"{video_stem(PROMPT, 'seed0')}.mp4"
    data = first.read_bytes()
    assert main(["generate", PROMPT, *TINY, "--out", str(out), "--seed", "1"]) == 0  # another seed: another file
    assert len(list(out.glob("*.mp4"))) == 2
    capsys.readouterr()
    assert main(["generate", PROMPT, *TINY, "--out", str(out), "--mode", "target"]) == 2  # same name: refused
    assert "--overwrite" in _one_line(capsys.readouterr().err) and first.read_bytes() == data
    assert main(["generate", PROMPT, *TINY, "--out", str(out), "--mode", "target", "--overwrite"]) == 0
    assert first.read_bytes() != data
    trace = json.loads(first.with_suffix(".json").read_text())
    assert trace["video"] == first.name and trace["prompt"] == PROMPT and trace["mode"] == "target"


def test_generate_prompts_that_sanitise_alike_and_long_cjk_prompts(tmp_path):
    pf = tmp_path / "p.txt"
    prompts = ["..", "~", ".", "a/b/c", "abc", "猫が走る" * 25, "../../escape", "abc"]
    pf.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    out = tmp_path / "o"
    assert main(["generate", "--prompts-file", str(pf), *TINY, "--mode", "draft", "--out", str(out)]) == 0
    files = sorted(out.iterdir())
    assert len([f for f in files if f.suffix == ".mp4"]) == len(prompts)  # duplicates too: one video each
    assert {json.loads(f.read_text())["prompt"] for f in files if f.suffix == ".json"} == set(prompts)
    assert not (tmp_path / "escape").exists() and all(f.parent == out for f in out.rglob("*"))


def test_bench_saves_one_video_per_row_under_out_with_an_index(tmp_path):
    pf = tmp_path / "p.txt"
    prompts = ["../../x", "/abs/path", "a/b", "a cat", "a cat", "long" + " long" * 60]
    pf.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "b"
    for layout in ("vbench", "index"):
        assert bench_main(["--models", "tiny", "--modes", "target", "--no-warmup", "--prompts", str(pf),
                           "--out", str(out / layout), "--save-videos", layout]) == 0
        index = read_jsonl(out / layout / "videos" / "index.jsonl")
        assert len(index) == len(prompts) and len({r["video"] for r in index}) == len(prompts)
        for r in index:
            f = out / layout / r["video"]
            assert f.is_file() and f.resolve().is_relative_to((out / layout).resolve())
            assert prompts[r["prompt_index"]] == r["prompt"]
    vb = {r["prompt_index"]: r["video"] for r in read_jsonl(out / "vbench" / "videos" / "index.jsonl")}
    assert vb[3] == "videos/target/a cat-0.mp4" and vb[4] == "videos/target/a cat-1.mp4"
    assert not (tmp_path / "x.mp4").exists() and not list(tmp_path.glob("x-*"))


# ---------------------------------------------------------------- 3: concurrent streams
def test_interleaved_streams_on_one_pipeline_are_refused_and_pipelines_are_isolated(models):
    ref_a = models.pipeline(router="random", seed=1)(PROMPT, seed=4)
    ref_b = models.pipeline(router="random", seed=1)("a blue square", seed=5)

    pipe = models.pipeline(router="random", seed=1)
    a, b = pipe.stream(PROMPT, seed=4), pipe.stream("a blue square", seed=5)
    first = next(a)
    with pytest.raises(PipelineBusyError, match="models.pipeline"):
        next(b)
    rest = [first, *a]
    assert torch.equal(torch.cat([o.frames for o in rest]), ref_a.frames)  # the open stream was not disturbed
    # a stream dropped half-way frees the pipeline
    c = pipe.stream(PROMPT, seed=4)
    next(c)
    c.close()
    assert torch.equal(pipe(PROMPT, seed=4).frames, ref_a.frames)

    # two pipelines over the same models (a server's sessions), interleaved block by block: both exact
    p1, p2 = models.pipeline(router="random", seed=1), models.pipeline(router="random", seed=1)
    s1, s2 = p1.stream(PROMPT, seed=4), p2.stream("a blue square", seed=5)
    f1, f2 = [], []
    for o1, o2 in zip(s1, s2):
        f1.append(o1.frames)
        f2.append(o2.frames)
    assert torch.equal(torch.cat(f1), ref_a.frames) and torch.equal(torch.cat(f2), ref_b.frames)


# ---------------------------------------------------------------- 4: long videos
def test_long_video_memory_is_bounded_and_short_videos_unchanged():
    short = load_tiny_models(seed=0, num_blocks=9).pipeline(tau=-math.inf, seed=0)
    long = load_tiny_models(seed=0, num_blocks=20).pipeline(tau=-math.inf, seed=0)
    ref = short(PROMPT, seed=2, force_reject_first=False)
    frames, pending = [], 0
    for o in long.stream(PROMPT, seed=2, force_reject_first=False):  # all drafts accepted: commits queue up
        frames.append(o.frames)
        pending = max(pending, len(long.target._pending))
    assert long.target.kv.capacity == short.target.kv.capacity == 27
    assert long.target.kv.nbytes == short.target.kv.nbytes
    assert pending * 3 <= 27  # the commit queue never outgrows the cache
    n = ref.frames.shape[0]
    assert torch.equal(torch.cat(frames)[:n], ref.frames)  # up to the trained length: the 9-block video exactly
    assert torch.isfinite(torch.cat(frames)).all() and len(frames) == 20


def test_a_video_that_cannot_fit_is_refused_up_front_with_the_memory_it_needs():
    pipe = load_tiny_models(seed=0, num_blocks=10**8).pipeline()
    t0 = time.perf_counter()
    with pytest.raises(TooLargeError, match=r"needs at least [\d.]+ GiB"):
        pipe(PROMPT)
    assert time.perf_counter() - t0 < 5


def test_cli_refuses_a_huge_video_in_one_line(tmp_path):
    r = _cli("generate", PROMPT, *TINY, "--num-blocks", str(10**8), "--out", str(tmp_path))
    assert r.returncode == 2 and "GiB" in _one_line(r.stderr)
    assert list(tmp_path.glob("*.mp4")) == []


# ---------------------------------------------------------------- 5, 7, 8, 9: CLI errors, one line, before work
@pytest.mark.parametrize("args, msg", [
    (["bench", "--taus", "nan"], "tau must be a number"),
    (["bench", "--taus", "abc"], "tau must be a number"),
    (["generate", "x", "--fps=-1"], "fps must be >= 1"),
])
def test_cli_bad_values_are_one_line_in_a_subprocess(args, msg, tmp_path):
    r = _cli(*args, "--models", "tiny", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and msg in _one_line(r.stderr)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, msg", [
    (["generate", "x", "--samples", "0"], "samples must be >= 1"),
    (["generate", "x", "--fps", "0"], "fps must be >= 1"),
    (["generate", "x", "--seed", "1.5"], "expected an integer"),
    (["generate", "x", "--router", "random", "--accept-rate", "2"], "in [0, 1]"),
    (["generate", "x", "--router", "random", "--accept-rate", "nan"], "in [0, 1]"),
    (["generate", "x", "--height", "64"], "--height/--width apply to checkpoints"),
    (["generate", "x", "--mode", "target", "--stitch-steps", "2"], "stitch_steps is used by modes"),
    (["generate", "x", "--prompts-file", "p.txt"], "not both"),
    (["generate", "x", "--num-blocks", "0"], "num_blocks must be >= 1"),
    (["generate", "x", "--window-frames", "6", "--sink-frames", "6"], "sink_frames"),
    (["bench", "--limit=-1"], "limit must be >= 1"),
    (["bench", "--limit", "0"], "limit must be >= 1"),
    (["bench", "--modes", ""], "--modes is empty"),
    (["bench", "--samples", "0"], "samples must be >= 1"),
])
def test_cli_bad_flags_fail_in_one_line_before_any_work(args, msg, tmp_path, capsys):
    out = tmp_path / "o"
    try:
        rc = main(args + ["--models", "tiny", "--out", str(out)])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and msg in _one_line(capsys.readouterr().err)
    assert not out.exists()


def test_config_file_values_pass_the_same_checks(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"samples": 0, "models": "tiny"}))
    with pytest.raises(SystemExit):
        main(["generate", "x", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert "samples must be >= 1" in _one_line(capsys.readouterr().err)


def test_out_is_checked_before_models_load(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    r = _cli("generate", "x", *TINY, "--out", str(f))
    assert r.returncode == 2 and "is a file" in _one_line(r.stderr)
    for out in (f / "sub", "/proc/sdvg-test"):
        with pytest.raises(ValueError, match="not a writable folder"):
            prepare_out_dir(out)


def test_tau_minus_inf_as_a_separate_value(tmp_path):
    r = _cli("generate", PROMPT, *TINY, "--tau", "-inf", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["tau"] == -math.inf
    from sdvg.settings import glue_negative_values
    assert glue_negative_values(["--taus", "-inf,-1", "--seed", "-3", "x"]) == ["--taus=-inf,-1", "--seed=-3", "x"]


def test_prompt_file_with_bad_bytes_names_the_file(tmp_path):
    f = tmp_path / "random.txt"
    f.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ValueError, match="random.txt is not UTF-8"):
        read_prompts(f)


def test_python_api_rejects_bad_prompt_and_seed(models):
    pipe = models.pipeline()
    for bad in (None, 123):
        with pytest.raises(ValueError, match="prompt must be a string"):
            pipe(bad)
    for bad in ("x", 1.5, True):
        with pytest.raises(ValueError, match="seed must be an integer"):
            pipe(PROMPT, seed=bad)
    with pytest.raises(ValueError, match="stitch_steps is used by modes"):
        pipe(PROMPT, mode="target", stitch_steps=1)
    for bad in (2.0, math.nan):
        with pytest.raises(ValueError, match=r"accept_rate must be a number in \[0, 1\]"):
            models.pipeline(router="random", accept_rate=bad)


def test_stale_temp_files_of_killed_runs_are_cleaned(tmp_path):
    old = time.time() - 3600
    dead = tmp_path / ".video.4194303.abcd1234.tmp.mp4"  # a PID above Linux's maximum: not running
    legacy = tmp_path / ".video.abcd_234.tmp.mp4"  # the format before the PID was in the name
    live = tmp_path / f".video.{os.getpid()}.abcd1234.tmp.mp4"
    fresh = tmp_path / ".other.4194303.zzzz1234.tmp.json"
    mine = tmp_path / ".keep.tmp"  # not our pattern
    for f in (dead, legacy, live, fresh, mine):
        f.write_bytes(b"x")
    for f in (dead, legacy, live, mine):
        os.utime(f, (old, old))
    assert clean_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, fresh.name, mine.name])
    # generate cleans its --out at start
    os.utime(fresh, (old, old))
    assert main(["generate", "x", *TINY, "--mode", "draft", "--out", str(tmp_path)]) == 0
    assert not fresh.exists() and live.exists()


def test_atomic_path_without_replace_never_clobbers(tmp_path):
    p = tmp_path / "v.json"
    p.write_text("first")
    with pytest.raises(FileExistsError):
        with atomic_path(p, replace=False) as tmp:
            tmp.write_text("second")
    assert p.read_text() == "first" and [x.name for x in tmp_path.iterdir()] == ["v.json"]


# ---------------------------------------------------------------- 6: checkpoint files
def test_inspect_and_loaders_reject_truncated_empty_and_non_tensor_files(tmp_path):
    from safetensors.torch import save_file

    from sdvg.checkpoints import load_torch_file, safetensors_header
    from sdvg.scorers.imagereward import load_state
    from sdvg.text import PrecomputedTextEncoder

    full = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(1000), "b": torch.ones(1000)}, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    empty_st, empty_pt, text_pt = tmp_path / "e.safetensors", tmp_path / "e.pt", tmp_path / "t.pt"
    empty_st.write_bytes(b"")
    empty_pt.write_bytes(b"")
    text_pt.write_text("not a checkpoint\n")
    pickle_pt = tmp_path / "obj.pt"
    torch.save(argparse.Namespace(a=1), pickle_pt)  # a pickle of more than tensors: refused, never executed
    assert safetensors_header(full)
    with pytest.raises(ValueError, match="truncated"):
        safetensors_header(cut)
    with pytest.raises(ValueError, match="empty or cut short"):
        safetensors_header(empty_st)
    for f in (empty_pt, text_pt):
        with pytest.raises(ValueError, match=str(f.name)):
            load_torch_file(f)
    with pytest.raises(ValueError):
        load_state(text_pt)
    with pytest.raises(ValueError):
        load_state(cut)
    with pytest.raises(ValueError):
        PrecomputedTextEncoder(empty_pt)
    with pytest.raises(ValueError, match="obj.pt: cannot read"):
        PrecomputedTextEncoder(pickle_pt)

    r = _cli("inspect", str(cut))
    assert r.returncode == 2 and "truncated" in _one_line(r.stderr)


def test_huge_checkpoint_resolution_is_refused_before_loading(tmp_path, capsys):
    f = tmp_path / "never-read.safetensors"
    f.write_bytes(b"")  # refused from the preset's size before this (empty) file is opened
    rc = main(["generate", "x", "--target", str(f), "--vae", str(f), "--text-encoder", str(f), "--height", "8192",
               "--width", "8192", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert rc == 2 and "GiB" in _one_line(capsys.readouterr().err)
