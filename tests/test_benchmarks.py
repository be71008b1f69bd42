"""The benchmark scripts that CI can afford run here in their small modes, so they cannot rot."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_costs_tiny_runs_on_the_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_costs.py"), "--tiny", "--blocks", "4",
                          "--reps", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("1. per block", "target / (decode + score)", "accept 0.73: sequential", "overlapped",
                 "ImageReward one call per block", "one frame per call"):
        assert line in out.stdout, out.stdout


def test_world_bench_by_kind_splits_a_finished_run(tmp_path):
    """A two-prompt world bench (one prompt of each kind), then the by-kind split the README's table comes from."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moving down on a black background\n"
                       "a big black square moving left and a red square standing still on a yellow background\n")
    out = tmp_path / "bench"
    run = subprocess.run([sys.executable, "-m", "sdvg", "bench", "--prompts", str(prompts), "--modes",
                          "target,sdvg,random", "--taus", "0.5", "--num-blocks", "3", "--no-warmup", "--out", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    split = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world_bench_by_kind.py"), str(out)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert split.returncode == 0, split.stderr[-2000:]
    for line in ("== one object: 1 videos", "== two objects: 1 videos", "sdvg@0.5", "SDVG - random at tau 0.5"):
        assert line in split.stdout, split.stdout
    empty = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world_bench_by_kind.py"), str(tmp_path)],
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert empty.returncode != 0 and "no finished bench rows" in empty.stderr


def test_world_text_binding_probe_runs_on_the_shipped_encoder():
    """The model card's binding figure: a per-kind linear probe of which object a word belongs to (small settings)."""
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "world_text_binding.py"), "--prompts", "120",
                          "--steps", "50"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    accs = {line.split()[0]: float(line.split()[1]) for line in run.stdout.splitlines()[1:]}
    assert set(accs) == {"colour", "shape", "size", "motion"} and all(0.3 <= a <= 1.0 for a in accs.values()), accs
