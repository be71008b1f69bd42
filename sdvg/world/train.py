"""Train every weight of the embedded world from one seed, on a CPU.

    python -m sdvg.world.train --out sdvg/world/weights --seed 0 [--stages vae,target,drafter,critic,recover,card]
                               [--threads 2 --parallel]

Stages run in order (with `--parallel`, side by side as `sdvg.world.parallel.NEEDS` allows) and each writes its
result before the next starts, so a failed late stage is rerun alone (`--stages critic,card`); intermediates
(latents, rollouts) live in --work. Every stage seeds torch, numpy and random from (seed, stage name), so a stage
gives the same weights whether run alone or in the full chain.
Metrics go to stdout and to <out>/train_log.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sdvg.io import append_jsonl
from sdvg.seeding import derive_seed
from sdvg.world import spec
from sdvg.world.data import clip_pairs, scene_latents, scene_stream, video_latents
from sdvg.world.measure import stage_card
from sdvg.world.train_critic import stage_critic


@dataclass(frozen=True)
class Budget:
    """Step counts (fixed, so results depend on the seed only, not on machine speed)."""

    field_steps: int = 10000
    vae_batch: int = 8
    vae_latents: int = 3
    encoder_steps: int = 4000
    target_steps: int = 2400
    target_refine_steps: int = 1600
    target_role_steps: int = 1200
    target_deep_steps: int = 900
    target_grow_steps: int = 450
    drafter_steps: int = 5000
    target_recover_steps: int = 450
    dit_batch: int = 16
    # share of two-object videos: half in the target's half-depth phases (where the text encoder learns which word
    # belongs to which object, and the target the two lanes), 15% in its deepenings (as prompts come: they settle
    # one-object quality, which a half share cost), 40% for the drafter (at 15% its two-object drafts were so bad,
    # 0.24, that the critic rejected them all and SDVG ran those prompts slower than the target; 40% lifts them to 0.40)
    target_two_objects: float = 0.5
    two_objects: float = 0.15
    drafter_two_objects: float = 0.4
    critic_rollouts: int = 512
    critic_steps: int = 3000
    eval_prompts: int = 12  # held-out videos the VAE stage measures
    card_prompts: int | None = None  # prompts per split the card evaluates (None: every prompt of both files)


QUICK = Budget(field_steps=4, encoder_steps=2, target_steps=3, target_refine_steps=2, target_role_steps=2,
               target_deep_steps=2, target_grow_steps=2, drafter_steps=2, target_recover_steps=2, dit_batch=2,
               critic_rollouts=2, critic_steps=3, eval_prompts=2, card_prompts=2)


class Run:
    """Shared state of one training run: paths, seed, budget, log."""

    def __init__(self, out: Path, work: Path, seed: int, budget: Budget) -> None:
        self.out, self.work, self.seed, self.budget = out, work, seed, budget
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "train_log.jsonl"
        self.t0 = time.time()
        self.shares: tuple[Path, str] | None = None  # (threads.json, this stage) when run by `--parallel`

    def seed_stage(self, name: str) -> np.random.Generator:
        s = derive_seed("world", self.seed, name)
        torch.manual_seed(s)
        random.seed(s)
        return np.random.default_rng(s)

    def log(self, stage: str, **metrics) -> None:
        """Print and append a metrics row; under `--parallel` also where a stage takes its current thread share
        (every training loop logs every few dozen steps)."""
        row = {"stage": stage, "t": round(time.time() - self.t0, 1), **metrics}
        print(json.dumps(row), flush=True)
        append_jsonl(self.log_path, row)
        if self.shares is not None:
            from sdvg.world.parallel import read_share

            n = read_share(*self.shares)
            if n is not None and n != torch.get_num_threads():
                torch.set_num_threads(n)


def lr_at(step: int, total: int, peak: float, warmup: int = 20) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---- stage: vae ------------------------------------------------------------------------------------------------
def build_vae(run: Run):
    """The world's Wan VAE: the designed decoder (`sdvg.world.decoder`, its field upsampler fitted here) and an
    untrained encoder; latents_mean/std from the latent design's statistics."""
    from diffusers import AutoencoderKLWan

    from sdvg.world.data import field_pairs
    from sdvg.world.decoder import fit_upsampler, write_decoder

    rng = run.seed_stage("vae")
    mean, std = latent_stats(run)
    vae = AutoencoderKLWan(**spec.VAE_KWARGS, latents_mean=[round(v, 6) for v in mean.tolist()],
                           latents_std=[round(v, 6) for v in std.tolist()])
    # Conv biases start at zero: with PyTorch's default bias init the bias terms dominate what every RMS norm sees
    # on flat-colour frames and the encoder's output barely depends on its input at first.
    with torch.no_grad():
        for m in vae.encoder.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.bias is not None:
                m.bias.zero_()
    pairs = field_pairs(scene_stream(derive_seed("vae-field", run.seed)), 2 * run.budget.vae_batch, rng)
    up = fit_upsampler(pairs, run.budget.field_steps, log=lambda **m: run.log("vae-field", **m))
    write_decoder(vae, up)
    return vae


def latent_stats(run: Run, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and scale of the raw latents over n videos (stored as Wan's `latents_mean/std`).

    The scale is the std, raised where a channel is heavy-tailed (the contrast channels are ~0 except at edges) so
    that normalised latents stay within about +-3.3 and no channel dominates the flow-matching loss."""
    z, _, _ = video_latents(scene_stream(derive_seed("stats", run.seed)), n)
    z = z.transpose(0, 1).flatten(1)
    mean = z.mean(1)
    peak = torch.quantile((z - mean[:, None]).abs()[:, ::7], 0.999, dim=1)
    return mean, torch.maximum(z.std(1), peak / 3.3)


ENCODER_LR = 1e-3


def window_local_encoder(encoder) -> None:
    """Zero, and keep at zero, every temporal tap of the encoder that reaches before the current 4-frame window
    (the past-frame taps of its causal convs, the first tap of its strided time convs), as the latent design is
    window-local. With them free, an encoder trained on 3-latent-frame clips drifted on 27-frame videos: its
    cached features feed back through the layers, chunk after chunk, into states it never saw in training."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    for m in encoder.modules():
        if isinstance(m, WanCausalConv3d) and m.weight.shape[2] > 1:
            mask = torch.ones_like(m.weight)
            if m.stride[0] == 1:
                mask[:, :, :-1] = 0
            else:
                mask[:, :, 0] = 0
            with torch.no_grad():
                m.weight.mul_(mask)
            m.weight.register_hook(lambda g, mask=mask: g * mask)


EDGE_WEIGHT = 4.0  # extra weight of the distances within 4 px of an outline


def encoder_loss_weights(z: torch.Tensor) -> torch.Tensor:
    """Per-element weights of the encoder's regression of raw latents z [B,14,T,h,w], by what the decoder draws from
    them: distances near an outline (where a shape's edge and corners are placed) count 1 + EDGE_WEIGHT; object
    colours count 1 in cells an object reaches and 0.1 elsewhere (the decoder never shows them there, and far from
    an object the encoder cannot see whose colour is nearest). Pixels encoded then decoded: 0.693 unweighted, 0.757
    so; with the near colours weighted like the outlines, 0.737 (the colours gained less than the shapes lost)."""
    w = torch.ones_like(z)
    w[:, :8] += EDGE_WEIGHT * (z[:, :8].abs() < 0.5).float()
    near = (z[:, :8].amin(1, keepdim=True) < 0.75).float()  # within 6 px of a sub-cell centre, in either frame
    w[:, 8:11] = 0.1 + 0.9 * near
    return w


def train_encoder(run: Run, vae) -> None:
    """The encoder (and quant_conv) regress the designed latents of rendered clips from their pixels."""
    b = run.budget
    window_local_encoder(vae.encoder)
    rng = run.seed_stage("vae-encoder")
    # the VAE sees every colour+shape pair (as a real VAE sees all videos); only the DiTs are kept from held-out pairs
    stream = scene_stream(derive_seed("vae-encoder-data", run.seed), heldout=None)
    s5 = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    enc_params = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    opt = torch.optim.Adam(enc_params, lr=ENCODER_LR)
    for step in range(b.encoder_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, b.encoder_steps, ENCODER_LR)
        x, z = clip_pairs(stream, b.vae_batch, b.vae_latents, rng)
        post = vae.encode(x).latent_dist
        sq = ((post.mean - z) / s5) ** 2
        err, w = sq.mean(), encoder_loss_weights(z)
        loss = (w * sq).mean() / w.mean() + ((post.logvar - 2 * math.log(0.1) - 2 * torch.log(s5)) ** 2).mean() * 0.01
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == b.encoder_steps - 1:
            run.log("vae-encoder", step=step, latent_mse=round(err.item(), 4))


def stage_vae(run: Run) -> None:
    """The designed decoder, then the encoder trained to estimate the latents from pixels. The built VAE and the
    trained one are checkpoints in --work, so a rerun resumes after the last finished one."""
    from diffusers import AutoencoderKLWan

    built, trained = run.work / "vae-built", run.work / "vae-encoder"
    if (trained / "config.json").exists():
        vae = AutoencoderKLWan.from_pretrained(str(trained))
    else:
        if (built / "config.json").exists():
            vae = AutoencoderKLWan.from_pretrained(str(built))
        else:
            vae = build_vae(run)
            vae.save_pretrained(str(built))
        train_encoder(run, vae)
        vae.save_pretrained(str(trained))
    m5 = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    s5 = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    vae.eval()
    vae.save_pretrained(str(run.out / "vae"))
    # whole held-out videos through the streaming decoder, judged by the evaluator
    from sdvg.vae import load_wan_vae
    from sdvg.world.evaluator import evaluate

    dec = load_wan_vae(run.out / "vae")
    from sdvg.world.render import render

    stream = scene_stream(derive_seed("vae-eval", run.seed), heldout=True)
    q_gt, q_rec, q_enc = [], [], []
    with torch.no_grad():
        for _ in range(run.budget.eval_prompts):
            sc, s = next(stream)
            x, info = render(sc, spec.VIDEO.num_frames, seed=s)
            q_gt.append(evaluate(x, sc)["quality"])
            dec.reset()
            q_rec.append(evaluate(dec.decode((scene_latents(sc, info.jitters)[None] - m5) / s5), sc)["quality"])
            dec.reset()  # pixels -> encoder -> decoder
            z = vae.encode(x.permute(1, 0, 2, 3)[None] * 2 - 1).latent_dist.mean
            q_enc.append(evaluate(dec.decode((z - m5) / s5), sc)["quality"])
    run.log("vae", heldout_quality_gt=round(float(np.mean(q_gt)), 4), heldout_quality_decoded=round(float(np.mean(q_rec)), 4),
            heldout_quality_encoded_decoded=round(float(np.mean(q_enc)), 4))


# ---- stages: target, drafter ----------------------------------------------------------------------------------
def latent_batches(run: Run, name: str, heldout: bool = False, batch: int | None = None,
                   p_two: float | None = None):
    """Endless (normalised latents [B,14,27,8,8], prompts) of fresh videos, a share `p_two` of them two-object
    (default `Budget.two_objects`): the latents are analytic (~1 ms per video), so every step sees new scenes. With a
    fixed set of 1024 videos the target learnt its train prompts (0.66) far better than held-out colour+shape pairs
    (0.46)."""
    mean, std = (v.view(1, -1, 1, 1, 1) for v in latent_stats(run))
    p_two = run.budget.two_objects if p_two is None else p_two
    stream = scene_stream(derive_seed("dit-data", run.seed, name), heldout=heldout, p_two=p_two)
    while True:
        z, scenes, _ = video_latents(stream, batch or run.budget.dit_batch)
        yield (z - mean) / std, [s.prompt for s in scenes]


T_PROBS = (0.1, 0.15, 0.25, 0.5)  # how often each of the 4 sampler timesteps is trained (the last decides the output)
CTX_NOISE = 0.2  # largest std of the noise put on the clean context blocks (normalised latent units)
P_BLOCK0 = 0.5  # block 0 is made from the text alone (the hardest, and the cheapest to train); others uniform


@torch.no_grad()
def drafted_block(drafter, ctx_lat: torch.Tensor, ctx: torch.Tensor, gen: torch.Generator, t: float,
                  table) -> torch.Tensor:
    """The drafter's version of the last block of `ctx_lat` (normalised latents [B,C,T,H,W]): its x0 prediction from
    that block noised to timestep t, after the clean blocks before it (how it makes a block's final step)."""
    from sdvg.sampler import add_noise, to_x0

    fpb = spec.VIDEO.frames_per_block
    last = ctx_lat[:, :, -fpb:]
    xt = add_noise(last, torch.randn(last.shape, generator=gen), t, table)
    tt = torch.zeros(ctx_lat.shape[0], ctx_lat.shape[2])
    tt[:, -fpb:] = t
    v = drafter(torch.cat([ctx_lat[:, :, :-fpb], xt], 2), tt, ctx, block_frames=fpb)
    return to_x0(v[:, :, -fpb:], xt, t, table)


def dit_step(dit, lat: torch.Tensor, ctx: torch.Tensor, rng: np.random.Generator, gen: torch.Generator,
             t_list: torch.Tensor, table, drafter=None) -> torch.Tensor:
    """Block-causal teacher forcing: clean blocks 0..b-1 (t = 0, as committed at inference) + block b noised to one
    of the sampler's timesteps; flow-matching loss (v = eps - x0) on block b only. With a `drafter`, half the steps
    put its version of block b-1 in the context (`drafted_block`): an accepted draft, which the target must continue
    from, back onto the prompt's track."""
    from sdvg.sampler import sigma_of

    fpb = spec.VIDEO.frames_per_block
    B = lat.shape[0]
    nb = spec.VIDEO.num_blocks
    b = 0 if rng.random() < P_BLOCK0 else int(rng.integers(1, nb))
    x0 = lat[:, :, :(b + 1) * fpb]
    k = torch.from_numpy(rng.choice(len(t_list), size=B, p=T_PROBS))
    t = t_list[k]
    sig = sigma_of(t, table).view(B, 1, 1, 1, 1)
    eps = torch.randn(x0[:, :, b * fpb:].shape, generator=gen)
    tgt = x0[:, :, b * fpb:]
    xt = (1 - sig) * tgt + sig * eps
    # the context is what the model will see at inference: its own earlier blocks, not the data; a little noise on
    # the clean context (still labelled t = 0) teaches it to continue from imperfect blocks instead of drifting
    ctx_lat = x0[:, :, :b * fpb]
    ctx_lat = ctx_lat + CTX_NOISE * torch.rand(B, 1, 1, 1, 1, generator=gen) * torch.randn(ctx_lat.shape, generator=gen)
    if drafter is not None and b > 0 and rng.random() < 0.5:
        ctx_lat = torch.cat([ctx_lat[:, :, :-fpb], drafted_block(drafter, x0[:, :, :b * fpb], ctx, gen,
                                                                 float(t_list[-1]), table)], 2)
    x_in = torch.cat([ctx_lat, xt], 2)
    tt = torch.zeros(B, x_in.shape[2])
    tt[:, b * fpb:] = t.view(B, 1)
    v = dit(x_in, tt, ctx, block_frames=fpb)
    # objects cover a few latent pixels of a flat background: weight the latent pixels that differ from the
    # frame's background (its per-channel median) 5x, or the loss is all background
    dev = (tgt - tgt.flatten(3).median(-1).values[..., None, None]).abs().amax(1, keepdim=True)
    w = 1 + 4 * (dev > 0.3).float()
    return ((v[:, :, b * fpb:] - (eps - tgt)) ** 2 * w).mean() / w.mean()


@torch.no_grad()
def block0_error(dit, enc, tok, lat: torch.Tensor, prompts: list[str], t_list: torch.Tensor) -> float:
    """x0 error of block 0 predicted from pure noise (t = 1000): from the text alone; compare with the latent
    variance (~1): well below it once the model reads the prompt."""
    from sdvg.world.text import encode_with

    g = torch.Generator().manual_seed(0)
    x0 = lat[:, :, :spec.VIDEO.frames_per_block]
    eps = torch.randn(x0.shape, generator=g)
    v = dit(eps, torch.full(x0.shape[:1], float(t_list[0])), encode_with(enc, tok, prompts, spec.TEXT_LEN))
    return ((eps - v - x0) ** 2).mean().item()


def train_dit(run: Run, name: str, cfg, steps: int, lr: float, train_text: bool, init: Path | None = None,
              out: Path | None = None, phase: str | None = None, role_weight: float = 0.0, p_two: float | None = None,
              store_dtype: torch.dtype = torch.float32, drafter: Path | None = None) -> None:
    """Train a DiT (and, with `train_text`, the text encoder) and save it to `out` (default: the weights folder);
    `init`: a folder holding a previous phase's `<name>.safetensors` (and text_encoder) to continue from;
    `role_weight`: weight of a linear probe's loss on the text encoder's token roles (`sdvg.world.text.token_roles`);
    `p_two`: the share of two-object videos (default `Budget.two_objects`);
    `store_dtype`: the dtype of the saved weights (loaders cast to the dtype they run in);
    `drafter`: a drafter checkpoint whose blocks half the steps' contexts end with (`dit_step`)."""
    from sdvg.checkpoints import save_dit
    from sdvg.config import SamplerConfig
    from sdvg.sampler import schedule_table, timesteps
    from sdvg.wan import WanDiT
    from sdvg.world.text import build_encoder, build_tokenizer, encode_with

    phase = phase or (name if init is None else f"{name}-refine")
    rng = run.seed_stage(phase)
    batches = latent_batches(run, phase, p_two=p_two)
    probe_lat, probe_prompts = next(latent_batches(run, "probe", heldout=True, batch=16))
    dit = WanDiT(cfg)
    out = out or run.out
    # The reference inits the text/time embedding MLPs with std 0.02, which leaves cross-attention nearly blind for
    # the first thousands of steps; with a CPU budget of hundreds, start them at Xavier scale instead.
    for seq in (dit.text_embedding, dit.time_embedding):
        for m in seq:
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
    if init is not None:
        from sdvg.checkpoints import load_dit

        dit.load_state_dict(load_dit(init / f"{name}.safetensors", cfg).state_dict())
    if train_text and init is not None:
        from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

        tok = PreTrainedTokenizerFast.from_pretrained(str(init / "text_encoder"))
        enc = UMT5EncoderModel.from_pretrained(str(init / "text_encoder"))
        params = list(dit.parameters()) + list(enc.parameters())
    elif train_text:
        tok, enc = build_tokenizer(), build_encoder(spec.TEXT_DIM)
        params = list(dit.parameters()) + list(enc.parameters())
    else:
        from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

        tok = PreTrainedTokenizerFast.from_pretrained(str(run.out / "text_encoder"))
        enc = UMT5EncoderModel.from_pretrained(str(run.out / "text_encoder")).requires_grad_(False)
        params = list(dit.parameters())
    probe = None
    if role_weight:
        from sdvg.world.text import ROLES, token_roles

        probe = torch.nn.Linear(spec.TEXT_DIM, len(ROLES))
        params = params + list(probe.parameters())
    draft_model = None
    if drafter is not None:
        from sdvg.checkpoints import load_dit

        draft_model = load_dit(drafter, spec.DRAFTER).eval().requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(derive_seed(phase, "noise", run.seed))
    t_list, table = timesteps(SamplerConfig()), schedule_table(SamplerConfig())
    t0, ema = time.time(), None
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=30)
        lat, prompts = next(batches)
        ctx = encode_with(enc, tok, prompts, spec.TEXT_LEN)
        loss = dit_step(dit, lat, ctx, rng, gen, t_list, table, drafter=draft_model)
        if probe is not None:
            role_loss = torch.nn.functional.cross_entropy(probe(ctx).flatten(0, 1), token_roles(prompts).flatten())
            loss = loss + role_weight * role_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 50 == 0 or step == steps - 1:
            extra = {"role_loss": round(role_loss.item(), 4)} if probe is not None else {}
            run.log(phase, step=step, loss=round(ema, 4), s_per_step=round((time.time() - t0) / (step + 1), 3), **extra,
                    heldout_block0_x0_mse=round(block0_error(dit, enc, tok, probe_lat, probe_prompts, t_list), 4))
    dit.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_dit({k: v.to(store_dtype) for k, v in dit.state_dict().items()}, out / f"{name}.safetensors", fmt="original")
    if train_text:
        enc.eval().save_pretrained(str(out / "text_encoder"))
        tok.save_pretrained(str(out / "text_encoder"))


# weight of the token-role probe in the three half-depth phases: at 0.05 on colour words only, the encoder marked a
# word's object 66-85% of the time and two-object videos came out one blob (0.21); at 1.0 on every word, 100% (held-out
# two-object videos 0.47, the model card)
ROLE_WEIGHT = 1.0
# The target trains at TARGET_FIRST_DEPTH layers in three phases, then each deepening (`deepen`) grows it to the next
# depth and fine-tunes it there (depth up-scaling: deepening a trained model costs far less than training the deep one
# from scratch): (depth, its Budget field of steps, lr, log phase); the last depth is the shipped one.
TARGET_FIRST_DEPTH = 12
TARGET_DEEPENINGS = ((24, "target_deep_steps", 3e-4, "target-deep"),
                     (spec.TARGET.num_layers, "target_grow_steps", 2e-4, f"target-deep{spec.TARGET.num_layers}"))
RECOVER_LR = 1e-4  # the recover stage's peak lr (a fine-tune of the shipped-depth target)
DIT_STORE_DTYPE = torch.float16  # the shipped DiTs' weights (as Wan releases ship half precision): 17 + 1 MB, not 37


def deepen(src, cfg):
    """A `cfg.num_layers`-deep WanDiT that computes exactly what the shallower trained `src` computes: the trained
    layers in order, each followed by its share of copies of itself (spread evenly over the depth) whose output
    projections (self-attention, cross-attention, FFN) are zero, so they start as identities and fine-tuning grows
    them."""
    from sdvg.wan import WanDiT

    n_src, n = len(src.blocks), cfg.num_layers
    if n < n_src:
        raise ValueError(f"cannot deepen {n_src} layers to {n}: fewer layers")
    dit = WanDiT(cfg)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("blocks.")}
    for i in range(n):
        j = i * n_src // n  # the trained layer this one copies; its first copy is the trained layer itself
        block = src.blocks[j].state_dict()
        if i and (i - 1) * n_src // n == j:
            for key in ("self_attn.o", "cross_attn.o", "ffn.2"):
                block[f"{key}.weight"] = torch.zeros_like(block[f"{key}.weight"])
                block[f"{key}.bias"] = torch.zeros_like(block[f"{key}.bias"])
        state.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    dit.load_state_dict(state)
    return dit


def stage_target(run: Run) -> None:
    """The target and the world's text encoder, trained together at `TARGET_FIRST_DEPTH` (the encoder is frozen
    afterwards), then deepened and fine-tuned by each of `TARGET_DEEPENINGS` (the last writes the shipped target).
    A rerun resumes after the last finished phase: each leaves its checkpoint in --work."""
    import shutil

    from sdvg.checkpoints import load_dit, save_dit

    phase1, phase2, phase3 = (run.work / f"target_phase{i}" for i in (1, 2, 3))
    depths = [TARGET_FIRST_DEPTH] + [d for d, *_ in TARGET_DEEPENINGS]
    cfgs = [replace(spec.TARGET, num_layers=n) for n in depths]
    outs = [phase3] + [run.work / f"target_depth{d}" for d in depths[1:-1]] + [run.out]
    # the deepenings still to run: those after the last intermediate depth already written (never the shipped one)
    start = max((k for k in range(1, len(outs) - 1) if (outs[k] / "target.safetensors").exists()), default=0)
    b = run.budget
    # every half-depth phase trains the text encoder with a probe of its token roles (which object each word
    # describes): trained on the video loss alone, the target painted two objects as one blob of both colours
    half_depth = dict(train_text=True, role_weight=ROLE_WEIGHT, p_two=b.target_two_objects)
    if start == 0:
        if not (phase1 / "target.safetensors").exists():
            train_dit(run, "target", cfgs[0], b.target_steps, 2e-3, out=phase1, **half_depth)
        if not (phase2 / "target.safetensors").exists():
            # a second, lower-lr phase (its own warm-up and cosine): the colour channels are the last to settle
            train_dit(run, "target", cfgs[0], b.target_refine_steps, 5e-4, init=phase1, out=phase2, **half_depth)
        if not (phase3 / "target.safetensors").exists():
            train_dit(run, "target", cfgs[0], b.target_role_steps, 3e-4, init=phase2, out=phase3,
                      phase="target-roles", **half_depth)
        # the text encoder is final from here on (the drafter trains on it too)
        shutil.copytree(phase3 / "text_encoder", run.out / "text_encoder", dirs_exist_ok=True)
    # the deep target costs what a target should against the drafter, the decode and the critic (the model card's
    # Cost): the 14B's block is ~10x the 1.3B's and well over 8x a decode + ImageReward
    for k in range(start, len(TARGET_DEEPENINGS)):
        depth, budget_field, lr, phase = TARGET_DEEPENINGS[k]
        init = run.work / f"target_depth{depth}_init"
        if not (init / "target.safetensors").exists():
            src = load_dit(outs[k] / "target.safetensors", cfgs[k])
            save_dit(deepen(src, cfgs[k + 1]), init / "target.safetensors")
        train_dit(run, "target", cfgs[k + 1], getattr(b, budget_field), lr, train_text=False, init=init,
                  out=outs[k + 1], phase=phase, p_two=b.two_objects, store_dtype=DIT_STORE_DTYPE)
    shutil.rmtree(run.work / "target_before_recover", ignore_errors=True)  # the recover stage starts from this one


def stage_drafter(run: Run) -> None:
    """The drafter: the same recipe for a 3-layer, 96-wide DiT (the model card's Cost: its multiply-adds and wall
    time against the target's), on the frozen text encoder. Its step budget sets the drafter/target gap: this toy
    task saturates small models (the model card's Drafter line gives what 2500 and 6000 steps measured)."""
    train_dit(run, "drafter", spec.DRAFTER, run.budget.drafter_steps, 3e-3, train_text=False,
              p_two=run.budget.drafter_two_objects, store_dtype=DIT_STORE_DTYPE)


def stage_recover(run: Run) -> None:
    """The target, fine-tuned to continue from the drafter's blocks: an accepted draft becomes the target's context,
    and a target trained on real contexts only (plus Gaussian noise) carried a draft's lumpy shape into its own next
    block as a smear. Half the steps end the context with the drafter's version of the previous block
    (`drafted_block`); the loss is still the real next block, so the target learns to steer back onto the prompt's
    track. Reads the target stage's weights from --work (copied there on the first run), so a rerun starts over."""
    import shutil

    base = run.work / "target_before_recover"
    if not (base / "target.safetensors").exists():
        base.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.out / "target.safetensors", base / "target.safetensors")
    train_dit(run, "target", spec.TARGET, run.budget.target_recover_steps, RECOVER_LR, train_text=False, init=base,
              phase="target-recover", store_dtype=DIT_STORE_DTYPE, drafter=run.out / "drafter.safetensors")


STAGES = {"vae": stage_vae, "target": stage_target, "drafter": stage_drafter, "critic": stage_critic,
          "recover": stage_recover, "card": stage_card}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="sdvg/world/weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list from {','.join(STAGES)}")
    p.add_argument("--work", default=None, help="intermediates (default: <tmp>/sdvg-world-work-<seed>)")
    p.add_argument("--threads", type=int, default=1,
                   help="1 (as shipped) gives bit-identical reruns; more threads are faster but round differently "
                        "from run to run in the DiT stages")
    p.add_argument("--parallel", action="store_true",
                   help="run independent stages side by side, sharing --threads among them (fastest on 2+ cores; "
                        "not bit-reproducible): `--threads 2 --parallel` trained everything in 100 min on 2 cores")
    p.add_argument("--thread-shares", default=None, help=argparse.SUPPRESS)  # set by --parallel for its children
    p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test of the script)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else Path(tempfile.gettempdir()) / f"sdvg-world-work-{args.seed}"
    run = Run(out, work, args.seed, QUICK if args.quick else Budget())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        sys.exit(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    run.log("start", seed=args.seed, stages=stages, budget=asdict(run.budget), threads=args.threads,
            parallel=args.parallel, torch=torch.__version__, at=round(time.time(), 1))
    if args.parallel:
        from sdvg.world.parallel import run_stages

        child = ["--out", str(out), "--work", str(work), "--seed", str(args.seed)] + ["--quick"] * args.quick
        run_stages(stages, child, args.threads, work, run.log)
    else:
        if args.thread_shares:
            run.shares = (Path(args.thread_shares), stages[0])
        for s in stages:
            t = time.time()
            STAGES[s](run)
            run.log(s, done_s=round(time.time() - t, 1))
    run.log("end", total_s=round(time.time() - run.t0, 1))


if __name__ == "__main__":
    main()
