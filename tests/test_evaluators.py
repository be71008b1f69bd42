"""Evaluators: VisionReward aggregation on made-up answers/weights, file loading, frame sampling, fallbacks."""
from __future__ import annotations

import json

import pytest
import torch

from sdvg.evaluators import (Evaluator, FrameStatsEvaluator, ScorerEvaluator, VisionRewardEvaluator, answer_value,
                             chat_frame_indices, load_visionreward_files, to_visionreward_video, visionreward_score)
from sdvg.scorers import SharpnessScorer


def test_visionreward_score_is_weighted_mean_of_plus_minus_one():
    w = [0.5, 2.0, 1.0, 0.25]
    assert visionreward_score([True, False, "yes", "no"], w) == pytest.approx((0.5 - 2.0 + 1.0 - 0.25) / 4)
    assert visionreward_score([1.0, 0.0, 0.5, 0.75], w) == pytest.approx((0.5 - 2.0 + 0.0 + 0.125) / 4)
    assert answer_value(" Yes\n") == 1.0 and answer_value("maybe") == -1.0
    with pytest.raises(ValueError):
        visionreward_score([True], w)
    with pytest.raises(ValueError):
        answer_value(1.5)


def test_chat_sampling_one_frame_per_second():
    assert chat_frame_indices(81, 16.0) == [0, 16, 32, 48, 64, 80]  # 5 s of Wan video: seconds 0..5
    assert chat_frame_indices(10, 16.0) == [0, 9]  # last ts 0.5625 rounds to 1: seconds 0, 1 (nearest: frame 9)
    assert len(chat_frame_indices(1000, 16.0)) == 24


@pytest.fixture()
def vr_folder(tmp_path):
    qs = ['Does the video match "[[prompt]]"?\n', "Is it sharp?\n", "Is the motion smooth?"]
    (tmp_path / "VisionReward_video_qa_select.txt").write_text("".join(qs))
    (tmp_path / "weight.json").write_text(json.dumps([1.0, 0.5, 0.25]))
    return tmp_path


def test_visionreward_evaluator_end_to_end(vr_folder):
    seen = []

    def answer_fn(frames, query):  # a stand-in VLM: yes unless asked about motion
        seen.append((frames.shape[0], query))
        return "motion" not in query

    ev = VisionRewardEvaluator.from_files(vr_folder, answer_fn, fps=16.0)
    assert isinstance(ev, Evaluator)
    out = ev.evaluate(torch.rand(33, 3, 8, 8), "a cat")
    assert out["quality"] == pytest.approx((1.0 + 0.5 - 0.25) / 3)
    assert out["yes_rate"] == pytest.approx(2 / 3) and out["q02"] == -1.0
    assert seen[0] == (3, 'Does the video match "a cat"?\n')  # frames at 0, 1, 2 s; query as readlines() gives it
    all_frames = VisionRewardEvaluator.from_files(vr_folder, answer_fn, sampling="all")
    all_frames.evaluate(torch.rand(5, 3, 8, 8), "x")
    assert seen[-1][0] == 5


def test_visionreward_file_errors(vr_folder, tmp_path):
    (vr_folder / "weight.json").write_text("[1.0]")
    with pytest.raises(ValueError, match="one to one"):
        load_visionreward_files(vr_folder)
    with pytest.raises(FileNotFoundError, match="VisionReward_video_qa_select.txt"):
        load_visionreward_files(tmp_path / "missing")


def test_video_layout_for_the_vlm():
    f = torch.rand(4, 3, 6, 7)
    v = to_visionreward_video(f)
    assert v.shape == (3, 4, 6, 7) and v.dtype == torch.uint8
    assert v[1, 2, 3, 4] == round(float(f[2, 1, 3, 4]) * 255)


def test_frame_stats_evaluator():
    still = torch.full((5, 3, 16, 16), 0.5)
    noisy = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b = FrameStatsEvaluator().evaluate(still, "p"), FrameStatsEvaluator().evaluate(noisy, "p")
    assert a["quality"] == 0.0 and a["flicker"] == 0.0 and a["brightness"] == pytest.approx(0.5)
    assert b["sharpness"] > 0.5 and b["flicker"] < -0.2
    assert b["quality"] == pytest.approx(b["sharpness"] + b["flicker"])


def test_scorer_evaluator():
    frames = torch.rand(6, 3, 16, 16)
    s = SharpnessScorer().score(frames)
    out = ScorerEvaluator(SharpnessScorer(), how="min", stride=2).evaluate(frames, "p")
    assert out["quality"] == pytest.approx(float(s[::2].min()))
