"""The speculative loop on tiny random models: exactness invariants, lazy commits, traces, errors."""
import math

import pytest
import torch

from sdvg.config import CacheConfig, RunConfig
from sdvg.loading import load_tiny_models
from sdvg.pipeline import NonFiniteError
from sdvg.vae import StreamingDecoder

PROMPT = "a red circle moving right"


@pytest.fixture(scope="module")
def models():
    return load_tiny_models(seed=0, num_blocks=3)


POLICIES = [CacheConfig(policy="append"), CacheConfig(policy="recompute", recompute_frames=3)]


@pytest.mark.parametrize("cache", POLICIES, ids=["append", "recompute"])
def test_tau_inf_is_exactly_target_only(models, cache):
    ref = models.pipeline(cache=cache)(PROMPT, mode="target", seed=3)
    out = models.pipeline(tau=math.inf, cache=cache)(PROMPT, mode="sdvg", seed=3)
    assert torch.equal(out.frames, ref.frames) and torch.equal(out.latents, ref.latents)
    assert out.trace.accept_rate == 0.0
    assert [b.source for b in out.trace.blocks] == ["target"] * 3


@pytest.mark.parametrize("cache", POLICIES, ids=["append", "recompute"])
def test_tau_minus_inf_without_forced_block0_is_exactly_draft_only(models, cache):
    ref = models.pipeline(cache=cache)(PROMPT, mode="draft", seed=3)
    out = models.pipeline(tau=-math.inf, cache=cache)(PROMPT, mode="sdvg", seed=3, force_reject_first=False)
    assert torch.equal(out.frames, ref.frames) and torch.equal(out.latents, ref.latents)
    assert out.trace.accept_rate == 1.0 and out.trace.target_forwards == 0


@pytest.mark.parametrize("cache", POLICIES, ids=["append", "recompute"])
def test_lazy_commits_are_bit_identical_to_eager(models, cache):
    kw = dict(router="random", accept_rate=0.5, seed=1, cache=cache)
    lazy = load_tiny_models(seed=0, num_blocks=5).pipeline(lazy_commit=True, **kw)
    eager = load_tiny_models(seed=0, num_blocks=5).pipeline(lazy_commit=False, **kw)
    a, b = lazy(PROMPT, seed=9), eager(PROMPT, seed=9)  # accepts blocks 1, 2, then rejects 3: a batched commit
    assert [x.accepted for x in a.trace.blocks] == [x.accepted for x in b.trace.blocks]
    assert {True, False} <= {x.accepted for x in a.trace.blocks[1:]}  # the seed gives a mix
    assert torch.equal(a.frames, b.frames)
    assert a.trace.target_forwards <= b.trace.target_forwards


def test_rejected_block_is_regenerated_from_the_same_noise_and_decode_cache_restored(models):
    """Emitted frames equal a one-shot decode of the emitted latents: no draft leaks into the VAE cache."""
    pipe = models.pipeline(router="random", accept_rate=0.5, seed=2)
    out = pipe(PROMPT, seed=4)  # accepts block 1, rejects block 2
    assert {True, False} <= {b.accepted for b in out.trace.blocks[1:]}
    fresh = StreamingDecoder(models.decoder.vae, [0.0] * 4, [1.0] * 4)  # the tiny set decodes un-normalised
    assert torch.allclose(out.frames, fresh.decode(out.latents), atol=1e-6)
    # accepting nothing gives the target-only video: regeneration used the draft's noise
    ref = models.pipeline()(PROMPT, mode="target", seed=4)
    assert torch.equal(out.latents[:, :, :3], ref.latents[:, :, :3])  # block 0 is the target's


def test_forward_counts_match_the_cost_model(models):
    n, steps = models.video.num_blocks, 4
    t = models.pipeline()(PROMPT, mode="target", seed=0).trace
    assert t.target_forwards == n * steps + (n - 1)  # the trailing block's commit never runs
    d = models.pipeline()(PROMPT, mode="draft", seed=0).trace
    assert d.drafter_forwards == n * steps + (n - 1) and d.target_forwards == 0
    s = models.pipeline(router="accept-all")(PROMPT, mode="sdvg", seed=0).trace
    assert s.blocks[0].source == "target" and s.blocks[0].drafter_forwards == 0  # no draft wasted on block 0
    assert s.target_forwards == steps  # accepted blocks are never committed: nothing later needs the target
    assert s.accept_rate == 1.0


def test_hybrid_and_stitch_modes(models):
    ref = models.pipeline()(PROMPT, mode="stitch", seed=4, stitch_steps=2)
    assert [b.source for b in ref.trace.blocks] == ["stitch"] * 3
    assert ref.trace.target_forwards == 3 * 2 + 2
    hyb = models.pipeline(tau=math.inf)(PROMPT, mode="sdvg", seed=4, stitch_steps=2)
    assert [b.source for b in hyb.trace.blocks] == ["target", "stitch", "stitch"]


def test_trace_fields_and_stream(models):
    pipe = models.pipeline(tau=0.0)
    seen = []
    out = pipe(PROMPT, seed=1, callback=seen.append)
    assert [b.index for b in seen] == [0, 1, 2]
    assert seen[0].frames.shape[0] == 9 and seen[1].frames.shape[0] == 12
    assert out.frames.shape == (33, 3, 32, 32) and 0 <= out.frames.min() and out.frames.max() <= 1
    d = out.trace.to_dict()
    for k in ("prompt", "seed", "mode", "tau", "router", "cache_policy", "blocks", "accept_rate", "wall_s",
              "peak_mem_mb", "drafter_forwards", "target_forwards"):
        assert k in d
    b1 = d["blocks"][1]
    assert set(b1) >= {"index", "accepted", "score", "frame_scores", "threshold", "drafter_forwards",
                       "target_forwards", "ms"}
    assert len(b1["frame_scores"]) == 12 and b1["score"] == min(b1["frame_scores"])
    assert {"draft", "decode", "score"} <= set(b1["ms"])


def test_videos_do_not_depend_on_earlier_videos(models):
    pipe = models.pipeline(router="random", accept_rate=0.5)
    a = pipe(PROMPT, seed=9).frames
    pipe("a blue square", seed=1)
    assert torch.equal(pipe(PROMPT, seed=9).frames, a)


def test_bad_input_errors(models):
    pipe = models.pipeline()
    with pytest.raises(ValueError, match="empty prompt"):
        pipe("  ")
    with pytest.raises(ValueError, match="unknown mode"):
        pipe(PROMPT, mode="fast")
    with pytest.raises(ValueError, match="stitch_steps"):
        pipe(PROMPT, stitch_steps=4)


def test_the_run_config_checks_itself_and_the_trace_records_it_flat(models):
    for bad, match in ((dict(mode="fast"), "unknown mode"), (dict(seed=1.5), "seed must be an integer"),
                       (dict(mode="target", stitch_steps=1), "stitch_steps is used by modes")):
        with pytest.raises(ValueError, match=match):
            RunConfig(**bad)
    out = models.pipeline(tau=0.0)(PROMPT, mode="stitch", seed=3, stitch_steps=1)
    assert out.trace.run == RunConfig(mode="stitch", seed=3, stitch_steps=1)
    d = out.trace.to_dict()
    assert "run" not in d and d["mode"] == "stitch" and d["seed"] == 3 and d["stitch_steps"] == 1
    assert not d["overlap"] and d["drafter_context"] == "own" and d["force_reject_first"]


def test_nan_latents_stop_with_the_block_index():
    bad = load_tiny_models(seed=0)
    with torch.no_grad():
        bad.target.head.head.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="block 0"):
        bad.pipeline()(PROMPT, mode="target")


@pytest.mark.parametrize("mode", ["sdvg", "target", "draft", "stitch"])
def test_every_mode_runs_with_the_recompute_policy(models, mode):
    out = models.pipeline(cache=POLICIES[1], tau=0.0)(PROMPT, mode=mode, seed=2, stitch_steps=1 if mode == "stitch" else 0)
    assert out.frames.shape == (33, 3, 32, 32) and out.trace.cache_policy == "recompute"


def test_drafter_context_emitted_conditions_the_drafter_on_the_target(models):
    """With every block rejected, 'own' drafts from the drafter's history and 'emitted' from the target's."""
    pipe = models.pipeline(tau=math.inf)  # scores every draft, accepts none
    own = pipe(PROMPT, seed=6, drafter_context="own")
    emitted = pipe(PROMPT, seed=6, drafter_context="emitted")
    assert torch.equal(own.frames, emitted.frames)  # the emitted video is the target's either way
    # block 1 is drafted after the target's block 0 in both; block 2 after the drafter's own block 1 or the target's
    assert own.trace.blocks[1].frame_scores == emitted.trace.blocks[1].frame_scores
    assert own.trace.blocks[2].frame_scores != emitted.trace.blocks[2].frame_scores
    ref = models.pipeline()(PROMPT, mode="target", seed=6)
    assert torch.equal(own.latents, ref.latents)


@pytest.mark.parametrize("cache", [CacheConfig(policy="append"),
                                   CacheConfig(policy="recompute", recompute_frames=3, anchor="latent")],
                         ids=["append", "recompute"])
@pytest.mark.parametrize("kw", [dict(router="random", accept_rate=0.5), dict(tau=0.001), dict(tau=math.inf),
                                dict(tau=-math.inf)], ids=["random", "tau", "reject-all", "accept-all"])
@pytest.mark.parametrize("stitch", [0, 2])
def test_overlap_is_bit_identical_to_the_sequential_loop(cache, kw, stitch):
    models = load_tiny_models(seed=0, num_blocks=5)
    seq = models.pipeline(cache=cache, seed=1, **kw)(PROMPT, seed=9, stitch_steps=stitch)
    ovl = models.pipeline(cache=cache, seed=1, **kw)(PROMPT, seed=9, stitch_steps=stitch, overlap=True)
    assert ovl.trace.run.overlap and not seq.trace.run.overlap
    assert torch.equal(seq.frames, ovl.frames) and torch.equal(seq.latents, ovl.latents)
    assert [b.accepted for b in seq.trace.blocks] == [b.accepted for b in ovl.trace.blocks]
    assert [b.score for b in seq.trace.blocks] == [b.score for b in ovl.trace.blocks]
    assert [b.drafter_forwards for b in seq.trace.blocks] == [b.drafter_forwards for b in ovl.trace.blocks]
    assert [b.target_forwards for b in seq.trace.blocks] == [b.target_forwards for b in ovl.trace.blocks]
    assert all("block" in b.ms for b in ovl.trace.blocks)


def test_overlap_falls_back_and_says_why(models):
    pipe = models.pipeline(tau=0.001)
    with pytest.warns(UserWarning, match="emitted"):
        out = pipe(PROMPT, seed=2, drafter_context="emitted", overlap=True)
    assert not out.trace.run.overlap
    assert pipe.overlap_blocker("target", "own", None) and pipe.overlap_blocker("sdvg", "own", None) is None
    reencode = models.pipeline(tau=0.001, cache=CacheConfig(policy="recompute", recompute_frames=3))
    assert "anchor" in reencode.overlap_blocker("sdvg", "own", None)


def test_a_carrying_scorer_is_reset_per_video_and_remembers_the_emitted_frames():
    """FlickerScorer(carry=True): the pipeline resets it at each video and hands it each emitted block, so the same
    video scores the same twice, and after a rejection the next draft is compared with the target's frames."""
    from sdvg.routers import ThresholdRouter
    from sdvg.scorers import FlickerScorer

    models = load_tiny_models(seed=0, num_blocks=4)
    pipe = models.pipeline(tau=0.0)
    sc = FlickerScorer(carry=True)
    pipe.router = ThresholdRouter(sc, -0.05)
    a, b = pipe(PROMPT, seed=5), pipe(PROMPT, seed=5)
    assert [x.score for x in a.trace.blocks] == [x.score for x in b.trace.blocks]
    assert torch.equal(sc._last, a.frames[-1:])  # the last emitted frame


def test_a_model_set_without_scorer_fails_early_for_scoring_routers(models):
    from dataclasses import replace

    bare = replace(models, scorer=None)
    with pytest.raises(ValueError, match=r"router 'threshold' scores drafts.*no scorer.*random"):
        bare.pipeline(router="threshold")
    pipe = bare.pipeline()  # no router: the single-model modes still run
    assert pipe(PROMPT, mode="target", seed=0).trace.target_forwards > 0
    with pytest.raises(ValueError, match="needs a router.*scorer"):
        pipe(PROMPT, mode="sdvg", seed=0)
    assert bare.pipeline(router="random")(PROMPT, mode="sdvg", seed=0).trace.blocks[0].source == "target"
