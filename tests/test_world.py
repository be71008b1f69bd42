"""The embedded world: grammar, renderer, evaluator, critic, text encoder, shipped weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdvg.world import WEIGHTS_DIR, read_prompts, spec
from sdvg.world.evaluator import evaluate, evaluate_block, frame_scores
from sdvg.world.grammar import VOCABULARY, PromptError, parse, prompt_lists
from sdvg.world.render import block_frame_range, frames_for, render, trajectory

torch.set_num_threads(1)
HAS_WEIGHTS = all((WEIGHTS_DIR / f).exists() for f in ("target.safetensors", "drafter.safetensors", "vae",
                                                        "text_encoder", "critic.safetensors"))
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="world weights not trained (python -m sdvg.world.train)")


def test_parse_round_trip_and_defaults():
    s = parse("A small Red circle moving right, on a blue background.")
    o = s.objects[0]
    assert (o.colour, o.shape, o.size, o.motion, o.turns, s.background) == ("red", "circle", "small", "right", None,
                                                                            "blue")
    assert parse(s.prompt) == s
    s2 = parse("a green triangle that turns red and a big white square bouncing up and down")
    assert s2.background == "black" and s2.objects[0].motion == "still" and s2.objects[0].turns == "red"
    assert s2.objects[1].motion == "bounce_ud" and parse(s2.prompt) == s2


def test_bad_prompts_list_the_vocabulary():
    with pytest.raises(PromptError) as e:
        parse("a purple circle flying")
    msg = str(e.value)
    assert "'purple'" in msg and "'flying'" in msg and "Vocabulary:" in msg and all(w in msg for w in VOCABULARY)
    with pytest.raises(PromptError, match="expected"):
        parse("red circle")
    with pytest.raises(PromptError, match="different"):
        parse("a red circle on a red background")


def test_prompt_lists_split_and_files():
    train, heldout = prompt_lists()
    from sdvg.world.grammar import is_heldout
    assert not any(is_heldout(parse(p)) for p in train) and all(is_heldout(parse(p)) for p in heldout)
    assert read_prompts("train") == train and read_prompts("heldout") == heldout


def test_render_deterministic_and_geometry():
    p = "a big red square moving right on a blue background"
    a, info = render(p, 9, seed=3)
    b, _ = render(p, 9, seed=3)
    c, _ = render(p, 9, seed=4)
    assert a.shape == (9, 3, 64, 64) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    fs = frame_scores(a, p)
    assert np.allclose(fs["cx"][0].numpy(), info.centres[0][:, 0], atol=0.3)
    assert np.allclose(fs["cy"][0].numpy(), info.centres[0][:, 1], atol=0.3)
    t = np.arange(105.0)
    x = trajectory(parse(p).objects[0], 0, 1, t)[:, 0]
    assert np.all(np.diff(x) > 0)  # moving right
    # rendering a window equals slicing the full video
    full, _ = render(p, 21, seed=3)
    part, _ = render(p, 12, seed=3, start_frame=9)
    assert torch.allclose(full[9:], part)


def test_block_frame_ranges():
    assert frames_for(27) == 105
    assert block_frame_range(0) == (0, 9) and block_frame_range(1) == (9, 21) and block_frame_range(8) == (93, 105)


def _blur(f):
    return F.avg_pool2d(F.pad(f, (2, 2, 2, 2), mode="replicate"), 5, stride=1)


@pytest.mark.parametrize("prompt", ["a small yellow triangle moving up on a black background",
                                    "a big cyan circle bouncing left and right that turns red on a white background",
                                    "a green square moving in a circle and a small red circle moving left"])
def test_evaluator_ranks_ground_truth_first(prompt):
    f, _ = render(prompt, 45, seed=1)
    gt = evaluate(f, prompt)
    assert gt["quality"] > 0.9
    wrong_colour = parse(prompt).objects[0]
    other = next(c for c in ("magenta", "blue", "white") if c not in parse(prompt).colours)
    bad = [_blur(f), (f + 0.15 * torch.randn(f.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
           f[torch.randperm(len(f), generator=torch.Generator().manual_seed(0))], f[:1].expand_as(f),
           render(prompt.replace(wrong_colour.colour, other, 1), 45, seed=1)[0]]
    for x in bad:
        assert evaluate(x, prompt)["quality"] < gt["quality"] - 0.05
    q = evaluate_block(f[9:21], prompt, 1)["quality"]
    assert q > 0.9 and q > evaluate_block(_blur(f[9:21]), prompt, 1)["quality"]


def test_evaluator_runs_on_one_thread_and_restores_the_callers():
    """The evaluator scores on one intra-op thread (twice as fast as two for its small ops) with the same result, and
    leaves the caller's thread count as it was."""
    prompt = "a big cyan circle bouncing left and right that turns red on a white background"
    f, _ = render(prompt, 21, seed=1)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = evaluate(f, prompt)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert evaluate(f, prompt) == two
    finally:
        torch.set_num_threads(n)


def test_critic_shapes():
    from sdvg.world.critic import CriticNet, WorldCritic

    c = WorldCritic(CriticNet())
    s = c.score(torch.rand(4, 3, 64, 64), "a red circle and a blue square that turns green on a white background")
    assert s.shape == (4,) and torch.isfinite(s).all()
    assert c.score(torch.rand(2, 3, 32, 32), "a red circle").shape == (2,)
    with pytest.raises(PromptError):
        c.score(torch.rand(1, 3, 64, 64), "a red dog")


def test_critic_folded_film_is_the_trained_net():
    """The scorer's path (one prompt: FiLM folded into the convolutions, kept per prompt; absent colours skipped)
    computes what the training path (a prompt per frame) does, to fp32 round-off, and frames in a batch do not mix."""
    from sdvg.world.critic import CriticNet, WorldCritic, prompt_features
    from sdvg.world.grammar import parse

    torch.manual_seed(0)
    net = CriticNet().eval()
    f = torch.rand(5, 3, 64, 64)
    scenes = [parse("a red circle on a white background"), parse("a big blue square that turns green")]
    (v1, p1), (v2, p2) = (prompt_features(s) for s in scenes)
    with torch.no_grad():
        one = net(f, v1[None], p1[None])
        per_frame = net(f, v1.expand(5, -1), p1.expand(5, -1, -1))
        mixed = net(f[:2], torch.stack([v1, v2]), torch.stack([p1, p2]))
        alone = net(f[1:2], v2[None], p2[None])
    torch.testing.assert_close(one, per_frame, rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed, torch.cat([one[:1], alone]), rtol=0, atol=1e-6)
    critic, prompts = WorldCritic(net), ["a red circle on a white background", "a big blue square that turns green"]
    for p, want in zip(prompts * 2, [one, alone] * 2):  # the second round reuses each prompt's folded convolutions
        torch.testing.assert_close(critic.score(f if want is one else f[1:2], p), want, rtol=0, atol=1e-6)


def test_text_encoder_zeroes_padding(tmp_path):
    from sdvg.world.text import WorldTextEncoder, build_encoder, build_tokenizer

    torch.manual_seed(0)
    enc = WorldTextEncoder(build_encoder(), build_tokenizer())
    e = enc.encode(["a red circle", "a big blue square moving left on a white background"])
    assert e.shape == (2, 32, 64)
    assert e[0, 4:].abs().sum() == 0 and e[0, :4].abs().sum() > 0  # 3 words + </s>
    enc.model.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    e2 = WorldTextEncoder.from_pretrained(tmp_path).encode(["a red circle"])
    assert torch.allclose(e2[0], e[0])
    with pytest.raises(PromptError):
        enc.encode(["a red dog"])


def test_token_roles_name_each_words_object():
    """The text encoder's training probe target: which object each word describes and as what; the "and" of
    "bouncing up and down" and the "a circle" of "moving in a circle" are motion words, not a second object."""
    from sdvg.world.text import ROLES, token_roles

    prompt = ("a small red circle bouncing up and down that turns blue and a green square moving in a circle "
              "on a white background")
    roles = token_roles([prompt, "a red circle"], text_len=32)
    got = [ROLES[r] for r in roles[0] if r >= 0]
    assert got == ["article 1", "size 1", "colour 1", "shape 1"] + ["motion 1"] * 6 + ["turns 1", "joiner",
                   "article 2", "colour 2", "shape 2"] + ["motion 2"] * 4 + ["other", "other", "background", "other"]
    assert roles[1, :3].tolist() == [ROLES.index(r) for r in ("article 1", "colour 1", "shape 1")]
    assert (roles[1, 3:] == -100).all()  # </s> and padding are not trained


@pytest.mark.parametrize("prompt", ["a small red triangle moving right on a white background",
                                    "a big yellow square bouncing up and down and a blue circle moving in a circle "
                                    "on a magenta background",
                                    "a green circle moving left that turns red on a black background"])
def test_latents_carry_the_video(prompt):
    """The designed latent space holds what the evaluator checks: its reference decode of a rendered video's latents
    scores close to the video itself (colour, shape, position, motion within each 4-frame window)."""
    from sdvg.world.data import LATENT_CHANNELS, reference_decode, scene_latents, window_frames

    frames, info = render(prompt, 105, seed=4)
    z = scene_latents(info.scene, info.jitters)
    assert z.shape == (len(LATENT_CHANNELS), 27, 8, 8) and z.abs().max() <= 1
    assert evaluate(reference_decode(z), prompt)["quality"] > 0.75  # small triangles lose corners (see docstring)
    last, first = window_frames(0, 27)
    assert last[1] == 4 and first[1] == 1 and first[0] == last[0] == 0
    # a clip that starts later: its first latent frame is its first pixel frame alone (the causal VAE's layout)
    zc = scene_latents(info.scene, info.jitters, start_frame=8, n_latent=3)
    torch.testing.assert_close(zc[:, 1], z[:, 3])
    torch.testing.assert_close(zc[:4, 0], zc[4:8, 0])


def test_designed_decoder_written_into_a_wan_vae():
    """`write_decoder` puts the designed decoder into a standard AutoencoderKLWan: per pixel frame, the window's
    distances interpolated in time, the field upsampler (with its SiLU refinements), the background averaged over
    the frame, the colours snapped to the palette, and the shading; diffusers' whole-video decode and sdvg's
    streaming decoder (with its exact fast modules) agree with that reference, written in plain PyTorch."""
    from diffusers import AutoencoderKLWan

    from sdvg.vae import StreamingDecoder
    from sdvg.world.data import scene_latents
    from sdvg.world.decoder import FieldUpsampler, shade, snap_colours, write_decoder

    torch.manual_seed(0)
    up = FieldUpsampler().eval().requires_grad_(False)
    for p in up.parameters():  # its refinements start at zero: make them act
        p.add_(0.1 * torch.randn(p.shape))
    vae = AutoencoderKLWan(**spec.VAE_KWARGS)
    write_decoder(vae, up)
    x, info = render("a big yellow square bouncing up and down and a blue circle moving in a circle on a magenta "
                     "background", 13, seed=4)
    z = scene_latents(info.scene, info.jitters, n_latent=4)  # raw latents [14, 4, 8, 8]
    z[8:] += 0.1 * torch.randn(z[8:].shape)  # colours off the palette, as a generator's
    frames = [(0, 0.0)] + [(k, j / 3) for k in range(1, 4) for j in range(4)]
    with torch.no_grad():
        d = torch.stack([(1 - a) * z[4:8, k] + a * z[0:4, k] for k, a in frames])
        col = torch.stack([z[8:14, k] for k, _ in frames])
        bg = col[:, 3:].mean((2, 3), keepdim=True).expand(-1, -1, 8, 8)  # one background colour per frame
        col = torch.cat([snap_colours(col[:, :3]), snap_colours(bg)], 1)
        col = F.interpolate(col, scale_factor=8, mode="nearest")
        want = shade(up(d), col[:, :3], col[:, 3:]).clamp(-1, 1)
        got = vae.decode(z[None]).sample[0].permute(1, 0, 2, 3)
        torch.testing.assert_close(got, want, atol=5e-3, rtol=0)  # SiLU(s u) / s for relu(u): <= 0.28 / s
        dec = StreamingDecoder(vae, [0.0] * spec.Z_DIM, [1.0] * spec.Z_DIM)
        f = torch.cat([dec.decode(z[None, :, :1]), dec.decode(z[None, :, 1:3]), dec.decode(z[None, :, 3:])])
        torch.testing.assert_close(f, (got + 1) / 2, atol=1e-5, rtol=0)
    # the soft shading: deep inside a shape the object's colour, far outside the background's (< 0.004 off)
    from sdvg.world.grammar import COLOURS

    pal = torch.tensor(list(COLOURS.values())) * 2 - 1
    obj, bg = pal.repeat_interleave(8, 0)[:, :, None, None], pal.repeat(8, 1)[:, :, None, None]
    for f, want in ((torch.full((64, 1, 1, 1), 5.0), obj), (torch.full((64, 1, 1, 1), -5.0), bg)):
        torch.testing.assert_close(shade(f, obj, bg), want, atol=4e-3, rtol=0)
    # the snap: palette colours map to themselves, off-palette ones (a DiT's averaged colours) to the nearest pattern
    torch.testing.assert_close(snap_colours(pal), pal, atol=1e-6, rtol=0)
    torch.testing.assert_close(snap_colours(pal * 0.6 + 0.1), pal, atol=1e-6, rtol=0)


def test_dit_training_step_on_tiny_model():
    from sdvg.config import SamplerConfig
    from sdvg.sampler import schedule_table, timesteps
    from sdvg.wan import WanDiT
    from sdvg.world.train import dit_step

    torch.manual_seed(0)
    dit = WanDiT(spec.DRAFTER)
    lat = torch.randn(2, spec.Z_DIM, 27, 8, 8)
    ctx = torch.randn(2, spec.TEXT_LEN, spec.TEXT_DIM)
    loss = dit_step(dit, lat, ctx, np.random.default_rng(0), torch.Generator().manual_seed(0),
                    timesteps(SamplerConfig()), schedule_table(SamplerConfig()))
    loss.backward()
    assert torch.isfinite(loss) and dit.patch_embedding.weight.grad is not None


def test_drafted_block_is_the_drafters_last_step_after_a_clean_context():
    """The recover stage's context block: the drafter's x0 from the last block noised to t, the blocks before it
    clean; the blocks before never see the noised one (block-causal), and any step of `dit_step` may use it."""
    from sdvg.config import SamplerConfig
    from sdvg.sampler import schedule_table, sigma_of, timesteps
    from sdvg.wan import WanDiT
    from sdvg.world.train import dit_step, drafted_block

    torch.manual_seed(0)
    drafter, target = WanDiT(spec.DRAFTER).eval(), WanDiT(spec.DRAFTER)
    lat = torch.randn(2, spec.Z_DIM, 6, 8, 8)
    ctx = torch.randn(2, spec.TEXT_LEN, spec.TEXT_DIM)
    t_list, table = timesteps(SamplerConfig()), schedule_table(SamplerConfig())
    out = drafted_block(drafter, lat, ctx, torch.Generator().manual_seed(1), float(t_list[-1]), table)
    assert out.shape == (2, spec.Z_DIM, 3, 8, 8)
    sig = float(sigma_of(float(t_list[-1]), table))
    eps = torch.randn(lat[:, :, 3:].shape, generator=torch.Generator().manual_seed(1))
    xt = (1 - sig) * lat[:, :, 3:] + sig * eps
    tt = torch.zeros(2, 6)
    tt[:, 3:] = float(t_list[-1])
    with torch.no_grad():
        v = drafter(torch.cat([lat[:, :, :3], xt], 2), tt, ctx, block_frames=3)
    torch.testing.assert_close(out, xt - sig * v[:, :, 3:])
    for seed in range(4):  # some of these steps train on a drafted context block, some on the data's
        loss = dit_step(target, torch.randn(2, spec.Z_DIM, 27, 8, 8), ctx, np.random.default_rng(seed),
                        torch.Generator().manual_seed(seed), t_list, table, drafter=drafter)
        assert torch.isfinite(loss)


def test_encoder_loss_weights_follow_what_the_decoder_draws():
    """The encoder's regression weighs distances near an outline up, and object colours only where an object is:
    on a rendered clip, the weights are largest at the edge cells and the colour weight is low far from the shape."""
    from sdvg.world.data import scene_latents
    from sdvg.world.train import encoder_loss_weights

    _, info = render("a big red square standing still on a blue background", 5, seed=0)
    z = scene_latents(info.scene, info.jitters, n_latent=2)[None]
    w = encoder_loss_weights(z)
    edge = z[:, :8].abs() < 0.5
    assert edge.any() and (~edge).any()
    assert (w[:, :8][edge] > w[:, :8][~edge].max()).all() and (w[:, 11:] == 1).all()
    far = z[:, :8].amin(1) >= 0.75  # cells whose every sub-cell is over 6 px from the square, in both frames
    assert far.any() and (~far).any()
    assert w[:, 8][far].max() < w[:, 8][~far].min()


def test_deepened_target_computes_the_trained_one():
    """`deepen` (each of the target's deepening phases starts from it): more layers, twice or not a multiple, the
    same output, and the new layers train (their zero output projections get gradients)."""
    from dataclasses import replace

    from sdvg.wan import WanDiT
    from sdvg.world.train import deepen

    torch.manual_seed(0)
    small = replace(spec.DRAFTER, num_layers=2)
    src = WanDiT(small).eval()
    x, ctx = torch.randn(1, spec.Z_DIM, 6, 8, 8), torch.randn(1, spec.TEXT_LEN, spec.TEXT_DIM)
    t = torch.tensor([[0.0] * 3 + [937.5] * 3])
    for n, copies in ((4, (1, 3)), (3, (1,))):
        deep = deepen(src, replace(small, num_layers=n)).eval()
        with torch.no_grad():
            torch.testing.assert_close(deep(x, t, ctx, block_frames=3), src(x, t, ctx, block_frames=3), rtol=0,
                                       atol=0)
        assert [i for i in range(n) if not deep.blocks[i].ffn[2].weight.any()] == list(copies)
        deep(x, t, ctx, block_frames=3).square().mean().backward()
        assert deep.blocks[1].ffn[2].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fewer"):
        deepen(src, replace(small, num_layers=1))


@needs_weights
def test_load_world_shapes():
    import time

    from sdvg.world import load_world, spec

    t0 = time.time()
    w = load_world()
    assert time.time() - t0 < 10
    ctx = w.text_encoder.encode(["a red circle moving right on a blue background"])
    assert ctx.shape == (1, 32, 64)
    x = torch.randn(1, spec.Z_DIM, 3, 8, 8)
    for dit in (w.drafter, w.target):
        with torch.no_grad():
            assert dit(x, torch.full((1,), 1000.0), ctx).shape == x.shape
    w.decoder.reset()
    assert w.decoder.decode(x).shape == (9, 3, 64, 64)
    assert w.scorer.score(torch.rand(3, 3, 64, 64), "a red circle").shape == (3,)
    assert w.video.num_frames == 105 and len(w.prompts) > 0 and w.default_tau in w.default_taus


@needs_weights
def test_must_show_on_heldout_prompts():
    """The model card's claims at test size (6 held-out prompts, ~10 s): target-only above draft-only, SDVG at the
    default tau above draft-only (it may pass target-only: where the target paints an unseen colour+shape pair
    wrongly and the drafter does not, accepted drafts help), and the critic's min-frame block score rank-correlated
    with the evaluator's block quality on draft blocks."""
    from sdvg.world import load_world, read_prompts
    from sdvg.world.measure import generate, spearman

    w = load_world()
    q: dict[str, list[float]] = {"target": [], "draft": [], "sdvg": []}
    critic, quality = [], []
    for i, p in enumerate(read_prompts("heldout")[:6]):
        for mode in q:
            frames, _ = generate(w, p, mode, seed=i, scorer=w.scorer, tau=w.default_tau)
            q[mode].append(evaluate(frames, p)["quality"])
            if mode == "draft":
                for b in range(1, w.video.num_blocks):
                    s, e = block_frame_range(b)
                    critic.append(w.scorer.score(frames[s:e], p).min().item())
                    quality.append(evaluate_block(frames[s:e], p, b)["quality"])
    q = {m: float(np.mean(v)) for m, v in q.items()}
    assert q["target"] > q["draft"] and q["sdvg"] > q["draft"], q
    assert spearman(critic, quality) > 0.2


def test_training_recipe_quick_end_to_end(tmp_path):
    """The whole training script on its --quick budget (every stage, a few steps each, scheduled side by side as on
    the 2-core machine), then the result loads and generates through the real pipeline: the recipe cannot rot
    unnoticed."""
    from sdvg.io import read_jsonl
    from sdvg.world import load_world
    from sdvg.world.measure import generate
    from sdvg.world.train import main

    out = tmp_path / "weights"
    main(["--quick", "--out", str(out), "--work", str(tmp_path / "work"), "--threads", "2", "--parallel"])
    rows = [r for r in read_jsonl(out / "train_log.jsonl") if r["stage"] == "parallel"]
    assert [r["started"] for r in rows if "started" in r][:2] == ["vae", "target"]  # side by side, one core each
    assert {r["threads"] for r in rows if r.get("started") in ("vae", "target")} == {1}
    assert any(r["stage"] == "target-recover" for r in read_jsonl(out / "train_log.jsonl"))  # every stage ran
    assert json.loads((out / "world.json").read_text())["parallel_wall_s"] > 0  # not the overlapping stages' sum
    card = (out / "MODEL_CARD.md").read_text()
    assert "--threads 2 --parallel`" in card
    # the card measures both kinds of prompt, each on its own rows too
    heldout = json.loads((out / "world.json").read_text())["metrics"]["heldout"]
    assert heldout["prompts"] == {"one": 1, "two": 1} and "block0" in heldout["target_two"]
    assert "| held-out, two objects, target-only |" in card and "two-object prompts" in card
    for f in ("target.safetensors", "drafter.safetensors", "critic.safetensors", "vae", "text_encoder", "world.json",
              "MODEL_CARD.md", "strip.png", "train_log.jsonl"):
        assert (out / f).exists(), f
    w = load_world(weights=out)
    frames, trace = generate(w, "a red circle moving down", "sdvg", seed=0, scorer=w.scorer, tau=w.default_tau)
    assert frames.shape == (w.video.num_frames, 3, 64, 64) and len(trace.blocks) == w.video.num_blocks
    # a rerun of the target stage resumes after its last intermediate depth: only the last deepening trains again
    n = len(read_jsonl(out / "train_log.jsonl"))
    main(["--quick", "--out", str(out), "--work", str(tmp_path / "work"), "--stages", "target"])
    trained = {r["stage"] for r in read_jsonl(out / "train_log.jsonl")[n:] if "step" in r}
    assert trained == {f"target-deep{spec.TARGET.num_layers}"}, trained
    # ... and a new target supersedes the one the recover stage fine-tuned, which it keeps in --work for its reruns
    assert not (tmp_path / "work" / "target_before_recover").exists()
    main(["--quick", "--out", str(out), "--work", str(tmp_path / "work"), "--stages", "recover"])
    assert (tmp_path / "work" / "target_before_recover" / "target.safetensors").exists()


def test_parallel_training_shares_threads_and_stops_on_a_failed_stage(tmp_path):
    """The scheduler splits the thread budget among running stages and never runs more stages than threads; a stage
    that fails (here: the drafter without the target's text encoder) stops the run with a message naming it."""
    from sdvg.world.parallel import run_stages, shares

    assert shares(["vae", "target"], 2) == {"vae": 1, "target": 1} and shares(["target"], 2) == {"target": 2}
    assert shares(["vae", "target"], 3) == {"vae": 2, "target": 1}
    log = []
    with pytest.raises(SystemExit, match="stage 'drafter' failed.*rerun with --stages drafter "):
        run_stages(["drafter"], ["--quick", "--out", str(tmp_path / "w"), "--work", str(tmp_path / "work")], 2,
                   tmp_path, lambda *a, **k: log.append(k))
    assert log == [{"started": "drafter", "threads": 2}]


def test_parallel_training_stopped_by_sigterm_ends_its_stages(tmp_path):
    """A scheduler killed by SIGTERM (a job system's time limit) ends the stages it started: none trains on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    if not os.path.isdir("/proc"):
        pytest.skip("finds the scheduler's children through /proc")
    work = tmp_path / "work"
    proc = subprocess.Popen([sys.executable, "-m", "sdvg.world.train", "--quick", "--parallel", "--threads", "2",
                             "--out", str(tmp_path / "w"), "--work", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def children() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == proc.pid:  # the field after the state: the parent's pid
                found.append(pid)
        return found

    started: list[str] = []
    deadline = time.time() + 60  # the scheduler publishes its thread shares just before it starts the stages
    while not ((work / "threads.json").exists() and (started := children())) and time.time() < deadline:
        time.sleep(0.2)
    assert started, "the scheduler started no stage"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) != 0 and "stopped by SIGTERM" in proc.stderr.read()
    for pid in map(int, started):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"stage process {pid} outlived its scheduler")


def test_card_times_each_stage_once():
    """A resumed stage is timed from its phases' step rows, and a phase named after another stage (the recover
    stage's target-recover) counts for that stage only."""
    from sdvg.world.card import _stage_seconds

    rows = [{"stage": "target-deep32", "t": 5.0, "step": 0, "s_per_step": 2.0},
            {"stage": "target-deep32", "t": 25.0, "step": 9, "s_per_step": 2.0},
            {"stage": "target", "t": 30.0, "done_s": 30.0},
            {"stage": "target-recover", "t": 1.0, "step": 0, "s_per_step": 1.0},
            {"stage": "target-recover", "t": 10.0, "step": 9, "s_per_step": 1.0},
            {"stage": "recover", "t": 11.0, "done_s": 11.0}]
    assert _stage_seconds(rows) == {"recover": 11.0, "target-deep32": 20.0}
