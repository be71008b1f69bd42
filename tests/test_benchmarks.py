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
