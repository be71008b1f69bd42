"""`python -m sdvg.world.train --parallel`: the training stages as a graph, run side by side on one machine.

The VAE stage gains nothing from a second thread (~0.5 s per encoder step on 1 thread or 2: its convolutions are small)
while the DiT stages run 1.75x faster on 2, so on a 2-core machine the fastest schedule trains the VAE on one core
beside the target, then gives the target both. Each stage runs in its own process (`python -m sdvg.world.train
--stages S`); the scheduler writes each running stage's share of `--threads` to <work>/threads.json, and a stage
takes its current share at each of its log lines (`Run.log`). Thread counts then change at machine-dependent
times, so a parallel run is not bit-reproducible (no multi-threaded run is); the serial 1-thread run is.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdvg.io import write_json

# what each stage reads that another stage writes
NEEDS = {"vae": (), "target": (), "drafter": ("target",), "critic": ("vae", "target", "drafter"),
         "recover": ("target", "drafter"), "card": ("vae", "target", "drafter", "critic", "recover")}


def shares(running: list[str], threads: int) -> dict[str, int]:
    """Threads per running stage: an even split of `threads`, the remainder to the earliest started."""
    n = len(running)
    return {s: max(1, threads // n + (i < threads % n)) for i, s in enumerate(running)}


def read_share(path: Path, stage: str) -> int | None:
    """This stage's current share, or None while the file or its entry is missing (keep the current count)."""
    try:
        return int(json.loads(path.read_text())[stage])
    except (OSError, ValueError, KeyError):
        return None


def run_stages(stages: list[str], argv: list[str], threads: int, work: Path, log) -> None:
    """Run `stages` (in STAGES order) as child processes, at most `threads` at once, each as soon as the stages it
    needs are done; `argv`: the arguments every child gets (--out, --work, --seed, --quick). A failed stage stops
    the others and says which stages to rerun."""
    path = work / "threads.json"
    pending, running, done = list(stages), {}, set()

    def publish() -> None:
        write_json(path, shares(list(running), threads))

    # a terminated scheduler (kill, a job system's time limit) must not leave its stages training on as orphans
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(f"stopped by SIGTERM; stages {list(running)} ended"))
    try:
        while pending or running:
            ready = [s for s in pending if all(d in done or d not in stages for d in NEEDS[s])]
            ready = ready[:threads - len(running)]
            for s in ready:
                pending.remove(s)
                running[s] = None
            if ready:
                publish()
            for s in ready:
                n = shares(list(running), threads)[s]
                running[s] = subprocess.Popen([sys.executable, "-m", "sdvg.world.train", *argv, "--stages", s,
                                               "--threads", str(n), "--thread-shares", str(path)])
                log("parallel", started=s, threads=n)
            time.sleep(0.5)
            for s, p in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del running[s]
                if rc:
                    rest = ",".join(x for x in stages if x == s or x in running or x in pending)
                    raise SystemExit(f"stage {s!r} failed (exit code {rc}); its output is above. Fix it, then rerun "
                                     f"with --stages {rest} (the VAE's and the target's finished phases are kept "
                                     f"in --work and skipped).")
                done.add(s)
                publish()
                log("parallel", finished=s)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in running.values():
            if p is not None:
                p.terminate()
                p.wait()
