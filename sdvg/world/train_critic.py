"""The critic's training stage of `sdvg.world.train`: rollouts of both models labelled by the evaluator, with pixel
corruptions and near-miss prompts, regressed by `sdvg.world.critic.CriticNet` from one frame."""
from __future__ import annotations

import copy
import random
import time
from typing import TYPE_CHECKING

import torch

from sdvg.seeding import derive_seed
from sdvg.world import spec
from sdvg.world.data import scene_latents, scene_stream

if TYPE_CHECKING:
    from sdvg.world.train import Run

# The shipped critic is an exponential moving average of the weights of a run at constant lr. Its examples are
# ~600 frames from each of 512 videos, so they are far from independent: trained to convergence (cosine lr, 6000
# steps) the net fits its videos and ranks new draft blocks worse, and which run ranks best is luck of the seed
# (block Spearman 0.47-0.53 over three seeds). The average of a constant-lr run's last ~1000 steps ranked better on
# both seeds tried (0.53 and 0.60 on the model card's blocks, 0.63 and 0.63 on 48 more draft videos).
CRITIC_EMA = 0.999


def mutate(scene, rng: random.Random):
    """A near-miss prompt: one attribute (object colour, shape, size or background) changed, still valid."""
    from dataclasses import replace

    from sdvg.world.grammar import COLOURS, SHAPES, SIZES, Scene

    for _ in range(50):
        objs = list(scene.objects)
        k = rng.randrange(len(objs))
        what = rng.choice(["colour", "colour", "shape", "size", "background"])
        bg = scene.background
        if what == "colour":
            objs[k] = replace(objs[k], colour=rng.choice(list(COLOURS)))
        elif what == "shape":
            objs[k] = replace(objs[k], shape=rng.choice(SHAPES))
        elif what == "size":
            objs[k] = replace(objs[k], size=rng.choice(list(SIZES)))
        else:
            bg = rng.choice(list(COLOURS))
        new = Scene(tuple(objs), bg)
        if new != scene and len(set(new.colours)) == len(new.colours):
            return new
    return scene


def corrupt(frames: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random pixel-space degradations (blur, noise, colour shift, smear, fade-out of the objects into the
    background) on a batch of frames [N,3,H,W]."""
    import torch.nn.functional as F

    n = frames.shape[0]
    kind = torch.randint(0, 5, (n,), generator=g)
    amt = torch.rand(n, generator=g).view(n, 1, 1, 1)
    out = frames.clone()
    blur = F.avg_pool2d(F.pad(frames, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    out = torch.where((kind == 0).view(n, 1, 1, 1), frames * (1 - amt) + blur * amt, out)
    out = torch.where((kind == 1).view(n, 1, 1, 1), frames + 0.25 * amt * torch.randn(frames.shape, generator=g), out)
    shift = 0.4 * amt * (torch.rand(n, 3, 1, 1, generator=g) * 2 - 1)
    out = torch.where((kind == 2).view(n, 1, 1, 1), frames + shift, out)
    smear = frames.roll(int(torch.randint(2, 8, (1,), generator=g)), dims=-1)
    out = torch.where((kind == 3).view(n, 1, 1, 1), frames * (1 - 0.5 * amt) + smear * 0.5 * amt, out)
    bg = frames.flatten(2).median(-1).values[..., None, None]  # objects are small: the median pixel is background
    fade = 0.5 + 0.5 * amt
    out = torch.where((kind == 4).view(n, 1, 1, 1), frames * (1 - fade) + bg * fade, out)
    return out.clamp(0, 1)


def stage_critic(run: Run) -> None:
    """Rollouts of both models (and decoded real videos) on train prompts, with pixel corruptions and near-miss
    prompts; every frame is labelled with the evaluator's quality of the block it belongs to, which the critic
    regresses from that one frame: the best one-frame guess of block quality, which is what a min-over-frames
    router needs (a label of the frame's own adherence ignored motion and rated vanished objects too kindly)."""
    from safetensors.torch import save_file

    from sdvg.world import load_world
    from sdvg.world.critic import CriticNet, prompt_features
    from sdvg.world.measure import generate
    from sdvg.world.train import latent_stats
    from sdvg.world.evaluator import evaluate_blocks
    from sdvg.world.render import block_frame_range, render

    rng = run.seed_stage("critic")
    prng = random.Random(derive_seed("critic-prompts", run.seed))
    world = load_world(weights=run.out, critic=False)
    stream = scene_stream(derive_seed("critic-data", run.seed), p_two=0.25, p_turn=0.25)
    frames_l, scenes_l, t0 = [], [], time.time()
    mean, std = (v.view(1, -1, 1, 1, 1) for v in latent_stats(run))
    for i in range(run.budget.critic_rollouts):
        scene, s = next(stream)
        mode = ("gt", "draft", "target", "draft")[i % 4]
        if mode == "gt":  # a real video through the decoder: what a perfect generator would give
            _, info = render(scene, spec.VIDEO.num_frames, seed=s)
            world.decoder.reset()
            with torch.no_grad():
                f = world.decoder.decode((scene_latents(scene, info.jitters)[None] - mean) / std)
        else:
            f, _ = generate(world, scene.prompt, mode, seed=s)
        frames_l.append(f)
        scenes_l.append(scene)
    run.log("critic", rollouts=len(frames_l), rollout_s=round(time.time() - t0, 1))
    # examples: (video index, prompt scene) pairs, labelled per frame
    g = torch.Generator().manual_seed(derive_seed("critic-noise", run.seed))
    frames, conds, pals, fidx, pidx, labels = [], [], [], [], [], []
    n_frames = 0
    for f, scene in zip(frames_l, scenes_l):
        prompts = [scene, mutate(scene, prng), mutate(scene, prng)]
        feats = [prompt_features(sc) for sc in prompts]
        for x in (f, corrupt(f, g)):  # as decoded, and degraded in pixel space
            frames.append(x.half())
            for sc, (v, pal) in zip(prompts, feats):
                conds.append(v)
                pals.append(pal)
                fidx.append(torch.arange(n_frames, n_frames + len(x)))
                pidx.append(torch.full((len(x),), len(conds) - 1))
                q = torch.tensor([r["quality"] for r in evaluate_blocks(x, sc)])
                frames_per = torch.tensor([e - s for s, e in map(block_frame_range, range(len(q)))])
                labels.append(q.repeat_interleave(frames_per))  # each frame: its block's quality
            n_frames += len(x)
    X, C, P = torch.cat(frames), torch.stack(conds), torch.stack(pals)
    FI, PI, Y = torch.cat(fidx), torch.cat(pidx), torch.cat(labels)
    run.log("critic", examples=len(Y), label_mean=round(Y.mean().item(), 3), label_std=round(Y.std().item(), 3))
    net = CriticNet()
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps, bs = run.budget.critic_steps, 64
    for step in range(steps):
        for gr in opt.param_groups:
            gr["lr"] = 2e-3 * min(1.0, (step + 1) / 20)  # constant after warm-up: the average below does the settling
        idx = torch.from_numpy(rng.choice(len(Y), size=bs))
        pi = PI[idx]
        pred = net(X[FI[idx]].float(), C[pi], P[pi])
        loss = ((pred - Y[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - CRITIC_EMA)
        if step % 100 == 0 or step == steps - 1:
            run.log("critic", step=step, mse=round(loss.item(), 5))
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(run.out / "critic.safetensors"))
