"""Validation of run settings: the one layer that the CLI (as argparse types and cross-flag checks), the Python API
(`SDVGPipeline`, `build_router`) and a server all pass through, so a bad value fails the same way everywhere: one
`ValueError` line, before any model is loaded or any video is made.
"""
from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Callable

MODES: tuple[str, ...] = ("sdvg", "target", "draft", "stitch", "exact")  # sdvg.config.Mode, as a tuple
STITCH_MODES = ("sdvg", "stitch")  # modes in which stitch_steps means something (hybrid sdvg, T-Stitch)


def check_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("empty prompt: give a non-empty text prompt")
    return prompt


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """An integer (bool and float rejected: `seed=1.5` must not silently become 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_seed(seed: Any) -> int:
    return check_int(seed, "seed")


def check_tau(tau: Any) -> float:
    """A number, ±inf allowed (inf = target only, -inf = accept every draft), NaN not."""
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or math.isnan(tau):
        raise ValueError(f"tau must be a number (e.g. -0.7, inf, -inf), got {tau!r}")
    return float(tau)


def check_rate(value: Any, name: str = "accept_rate") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_run(mode: str, stitch_steps: int, drafter_context: str) -> None:
    """Per-video settings (`RunConfig` checks itself with this); `check_stitch_steps` bounds stitch_steps once the
    models are known."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    check_int(stitch_steps, "stitch_steps", 0)
    if stitch_steps and mode not in STITCH_MODES:
        raise ValueError(f"stitch_steps is used by modes {' and '.join(STITCH_MODES)} only, not {mode!r}")
    if mode == "stitch" and stitch_steps == 0:
        raise ValueError("mode 'stitch' needs stitch_steps >= 1")
    if drafter_context not in ("own", "emitted"):
        raise ValueError(f"drafter_context must be 'own' or 'emitted', got {drafter_context!r}")


def check_stitch_steps(stitch_steps: int, num_steps: int) -> None:
    """stitch_steps leaves the target at least one of the model's `num_steps` denoising steps."""
    if stitch_steps >= num_steps:
        raise ValueError(f"stitch_steps must be in [0, {num_steps - 1}] for a {num_steps}-step model, "
                         f"got {stitch_steps}")


def check_cache(window_frames: int, sink_frames: int) -> None:
    check_int(window_frames, "window_frames", -1)
    check_int(sink_frames, "sink_frames", 0)
    if window_frames == 0:
        raise ValueError("window_frames must be -1 (the default rolling length) or >= 1")
    if window_frames > 0 and sink_frames >= window_frames:
        raise ValueError(f"sink_frames ({sink_frames}) must be smaller than window_frames ({window_frames})")


# ---------------------------------------------------------------- argparse types built from the checks above
def arg_type(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """An argparse `type=`: parse the string, run the shared check, report failures as one usage line."""
    def conv(s: str) -> Any:
        try:
            return check(parse(s))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    conv.__name__ = getattr(check, "__name__", "value")
    return conv


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"expected a number, got {s!r}") from None


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"expected an integer, got {s!r}") from None


def _positive(name: str) -> Callable[[Any], int]:
    return lambda v: check_int(v, name, 1)


def _tau_arg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise ValueError(f"tau must be a number (e.g. -0.7, inf, -inf), got {s!r}") from None
    return check_tau(v)


def _taus_arg(s: str) -> list[float]:
    taus = [_tau_arg(t.strip()) for t in s.split(",") if t.strip()]
    if not taus:
        raise ValueError("give at least one tau (a comma list, e.g. -0.7,-1.5)")
    return taus


TAU = arg_type(str, _tau_arg)
TAUS = arg_type(str, _taus_arg)
RATE = arg_type(_float, check_rate)
FPS = arg_type(_int, _positive("fps"))
SAMPLES = arg_type(_int, _positive("samples"))
LIMIT = arg_type(_int, _positive("limit"))
BLOCKS = arg_type(_int, _positive("num_blocks"))
SIZE = arg_type(_int, _positive("height/width"))
STEPS = arg_type(_int, lambda v: check_int(v, "stitch_steps", 0))
SEED = arg_type(_int, check_seed)
WINDOW = arg_type(_int, lambda v: check_int(v, "window_frames", -1))
SINKS = arg_type(_int, lambda v: check_int(v, "sink_frames", 0))
RECOMPUTE = arg_type(_int, _positive("recompute_frames"))

NEGATIVE_VALUE_FLAGS = ("--tau", "--taus", "--offsets", "--seed", "--window-frames")


def glue_negative_values(argv: list[str], flags: tuple[str, ...] = NEGATIVE_VALUE_FLAGS) -> list[str]:
    """`--tau -inf` -> `--tau=-inf`: argparse reads a value starting with '-' that is not a plain number (-inf,
    -1e-3 is fine) as an option and fails with "expected one argument"."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            return out + argv[i:]
        if a in flags and i + 1 < len(argv) and argv[i + 1].startswith("-") and not argv[i + 1].startswith("--"):
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


__all__ = ["check_prompt", "check_int", "check_seed", "check_tau", "check_rate", "check_run", "check_stitch_steps",
           "check_cache", "arg_type", "glue_negative_values", "MODES"]
