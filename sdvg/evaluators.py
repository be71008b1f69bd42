"""Video-level quality for the benchmark: `evaluate(frames[T,3,H,W] in [0,1], prompt) -> dict` with key "quality".

`VisionRewardEvaluator` is the SDVG paper's metric (VisionReward-Video): a video VLM answers a checklist of yes/no
questions and the answers are combined with fixed weights. The VLM itself (THUDM/VisionReward-Video, a CogVLM2-Video
fine-tune, ~20 GB, GPU) is not bundled: users plug their local copy in through `answer_fn`. The aggregation, the
question templating and the frame sampling follow THUDM/VisionReward `inference-video.py`:
    answers a_i = +1 if the model says "yes" else -1,   quality = mean_i(a_i * w_i)   (29 questions, 29 weights)
over `VisionReward_Video/VisionReward_video_qa_select.txt` (one question per line, `[[prompt]]` replaced by the
prompt, each line kept as `readlines()` returns it, trailing newline included) and `VisionReward_Video/weight.json`
(a JSON list of 29 floats). Place both files in one folder (or pass their paths) and call
`VisionRewardEvaluator.from_files(folder, answer_fn)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch

from sdvg.scorers.base import aggregate, check_frames
from sdvg.scorers.classic import FlickerScorer, SharpnessScorer

QUESTIONS_FILE = "VisionReward_video_qa_select.txt"
WEIGHTS_FILE = "weight.json"
AnswerFn = Callable[[torch.Tensor, str], "bool | float | str"]


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, frames: torch.Tensor, prompt: str) -> dict[str, float]:
        """frames [T,3,H,W] in [0,1] -> {"quality": float, ...sub-scores}."""
        ...


# ---- VisionReward-Video ----------------------------------------------------------------------------------------------
def load_visionreward_files(questions: str | Path, weights: str | Path | None = None) -> tuple[list[str], list[float]]:
    """(questions, weights) from the VisionReward files; `questions` may be the folder holding both."""
    q = Path(questions)
    if q.is_dir():
        weights = weights or q / WEIGHTS_FILE
        q = q / QUESTIONS_FILE
    if weights is None:
        weights = q.parent / WEIGHTS_FILE
    for p, what in ((q, QUESTIONS_FILE), (Path(weights), WEIGHTS_FILE)):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: VisionReward needs {QUESTIONS_FILE} and {WEIGHTS_FILE} from "
                                    "github.com/THUDM/VisionReward (folder VisionReward_Video/)")
    with open(q) as f:
        qs = [line for line in f.readlines() if line.strip()]
    ws = json.loads(Path(weights).read_text())
    if not isinstance(ws, list) or len(ws) != len(qs):
        raise ValueError(f"{weights} holds {len(ws) if isinstance(ws, list) else type(ws).__name__} weights for "
                         f"{len(qs)} questions in {q}; they must pair one to one")
    return qs, [float(w) for w in ws]


def answer_value(a: bool | float | str) -> float:
    """+1 for yes, -1 for no. A probability p of "yes" gives its expectation 2p - 1 (a soft variant; the reference
    uses the greedy answer). Strings: "yes" (stripped, any case; the model emits lowercase "yes"/"no") is +1."""
    if isinstance(a, str):
        return 1.0 if a.strip().lower() == "yes" else -1.0
    if isinstance(a, bool):
        return 1.0 if a else -1.0
    p = float(a)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"answer probability must be in [0, 1], got {p}")
    return 2.0 * p - 1.0


def visionreward_score(answers: Sequence[bool | float | str], weights: Sequence[float]) -> float:
    """mean_i(a_i * w_i) with a_i = +-1 (the reference `score()`)."""
    if len(answers) != len(weights) or not weights:
        raise ValueError(f"{len(answers)} answers for {len(weights)} weights")
    return sum(answer_value(a) * w for a, w in zip(answers, weights)) / len(weights)


def chat_frame_indices(num_frames: int, fps: float, max_frames: int = 24) -> list[int]:
    """The reference's 'chat' sampling: the frame nearest to each whole second (0, 1, ..., round(last ts)), <= 24.

    Frame i has timestamp i / fps, as decord reports for a constant-frame-rate file.
    """
    ts = [i / fps for i in range(num_frames)]
    out: list[int] = []
    for second in range(round(max(ts)) + 1):
        out.append(min(range(num_frames), key=lambda i: abs(ts[i] - second)))
        if len(out) >= max_frames:
            break
    return out


def to_visionreward_video(frames: torch.Tensor) -> torch.Tensor:
    """[T,3,H,W] in [0,1] -> uint8 [3,T,H,W], the layout the reference's `load_video` hands to the model."""
    return torch.round(frames.clamp(0, 1) * 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous()


class VisionRewardEvaluator:
    """VisionReward-Video checklist score; `answer_fn(frames [t,3,H,W] in [0,1], query) -> bool | P(yes) | str`.

    `fps` is the video's frame rate (Wan: 16), used to pick one frame per second as the reference does from the mp4;
    `sampling="all"` passes every frame instead. Sub-scores: "yes_rate" and "q00".."q28" (+-1 or 2p-1 per question).
    """

    def __init__(self, questions: Sequence[str], weights: Sequence[float], answer_fn: AnswerFn, *, fps: float = 16.0,
                 max_frames: int = 24, sampling: str = "chat") -> None:
        if len(questions) != len(weights):
            raise ValueError(f"{len(questions)} questions for {len(weights)} weights")
        if sampling not in ("chat", "all"):
            raise ValueError(f"sampling must be 'chat' or 'all', got {sampling!r}")
        self.questions, self.weights, self.answer_fn = list(questions), list(weights), answer_fn
        self.fps, self.max_frames, self.sampling = fps, max_frames, sampling

    @classmethod
    def from_files(cls, folder_or_questions: str | Path, answer_fn: AnswerFn, weights: str | Path | None = None,
                   **kw) -> "VisionRewardEvaluator":
        qs, ws = load_visionreward_files(folder_or_questions, weights)
        return cls(qs, ws, answer_fn, **kw)

    def queries(self, prompt: str) -> list[str]:
        return [q.replace("[[prompt]]", prompt) for q in self.questions]

    def evaluate(self, frames: torch.Tensor, prompt: str) -> dict[str, float]:
        check_frames(frames)
        if self.sampling == "chat":
            frames = frames[chat_frame_indices(frames.shape[0], self.fps, self.max_frames)]
        vals = [answer_value(self.answer_fn(frames, q)) for q in self.queries(prompt)]
        out = {"quality": sum(v * w for v, w in zip(vals, self.weights)) / len(self.weights),
               "yes_rate": sum(v > 0 for v in vals) / len(vals)}
        out.update({f"q{i:02d}": v for i, v in enumerate(vals)})
        return out


# ---- weight-free and scorer-based fallbacks --------------------------------------------------------------------------
class FrameStatsEvaluator:
    """Weight-free quality: mean sharpness (variance of the Laplacian) plus weighted flicker (minus the mean
    absolute frame-to-frame change), both in [0,1]-intensity units. A smoke-test stand-in, not a perceptual metric."""

    def __init__(self, sharpness_weight: float = 1.0, flicker_weight: float = 1.0) -> None:
        self.sw, self.fw = sharpness_weight, flicker_weight

    def evaluate(self, frames: torch.Tensor, prompt: str = "") -> dict[str, float]:
        check_frames(frames)
        sharp = float(SharpnessScorer().score(frames).mean())
        flick = float(FlickerScorer().score(frames)[1:].mean()) if frames.shape[0] > 1 else 0.0
        return {"quality": self.sw * sharp + self.fw * flick, "sharpness": sharp, "flicker": flick,
                "brightness": float(frames.float().mean())}


class ScorerEvaluator:
    """Video quality from a frame scorer (e.g. ImageReward): aggregate of the scores of every `stride`-th frame."""

    def __init__(self, scorer, how: str = "mean", stride: int = 1, q: float = 0.1) -> None:
        self.scorer, self.how, self.stride, self.q = scorer, how, stride, q

    def evaluate(self, frames: torch.Tensor, prompt: str) -> dict[str, float]:
        check_frames(frames)
        s = self.scorer.score(frames[:: self.stride], prompt).float()
        return {"quality": float(aggregate(s, self.how, self.q)), "min": float(s.min()), "mean": float(s.mean())}


__all__ = ["Evaluator", "VisionRewardEvaluator", "FrameStatsEvaluator", "ScorerEvaluator", "visionreward_score",
           "answer_value", "load_visionreward_files", "chat_frame_indices", "to_visionreward_video"]
