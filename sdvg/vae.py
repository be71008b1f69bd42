"""Streaming Wan2.1 VAE decode: latent blocks in, RGB frames out, as the video is generated.

The Wan VAE decoder is causal in time: diffusers' `AutoencoderKLWan._decode` runs its decoder one latent frame at a
time, carrying a list of cached activations (the last two frames seen by every causal conv). We drive that same
decoder block by block with our own cache, so block b can be decoded as soon as it is denoised: the first latent frame
gives 1 frame and every later one 4 (block 0 of 3 latent frames -> 9 frames, later blocks -> 12), identical to
decoding the whole video at once.

The decoder only ever *replaces* cache entries (`cache[i] = new_tensor`; the cached tensors are fresh clones or
concatenations and are never written in place), so a snapshot is a shallow copy of the list: O(1) extra memory,
which is what lets the speculative loop decode a draft and roll the decode state back when the draft is rejected.

Speed: after the video's first latent frame, a whole block goes through the decoder in one call (every causal conv
already takes a multi-frame chunk plus its cached frames), and `sdvg.vae_fast.fast_modules` swaps in exact faster
equivalents of modules that are slow on CPU. Both are identical to diffusers' frame-by-frame decode to fp32 round-off
(tested).

Decoder rules. `rule="wan"` (default) is upstream Wan / diffusers. `rule="krea"` is Krea Realtime's streaming decoder,
which decodes one latent frame per call and differs in one place: where a one-frame chunk reaches a temporal upsampler
(`upsample3d`'s time conv; with one latent frame per call, the first upsampler only), its cache becomes
`[where(prev == 0, 0, cur), cur]` (prev: the last cached frame, cur: the frame just seen) instead of upstream's
`[prev, cur]`. From the fourth latent frame on, its pixels differ from
upstream's (the Krea preset selects it; see `DECODER_RULES`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdvg.config import DECODER_RULES
from sdvg.vae_fast import fast_modules

# Wan2.1 latent statistics (Wan's `WanVAE.mean/std`, diffusers' AutoencoderKLWan config `latents_mean/std`).
# The DiT works on normalised latents (z - mean) / std; decoding first undoes that: z * std + mean.
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)


@dataclass(frozen=True)
class DecodeState:
    """A decode-cache snapshot: the (shared, never mutated) cached tensors plus the position in the video."""

    cache: tuple
    first_chunk: bool
    frames: int


class StreamingDecoder:
    """Decode a Wan latent video block by block with an explicit causal cache (see module docstring)."""

    def __init__(self, vae, latents_mean, latents_std, fast: bool = True, rule: str = "wan") -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        if rule not in DECODER_RULES:
            raise ValueError(f"unknown decoder rule {rule!r}; choose one of {', '.join(DECODER_RULES)}")
        self.rule = rule
        self._upsample_slots: tuple[int, ...] | None = None  # cache slots of the temporal upsamplers (krea rule)
        if len(latents_mean) != vae.config.z_dim or len(latents_std) != vae.config.z_dim:
            raise ValueError(f"latents_mean/std need {vae.config.z_dim} channels, got {len(latents_mean)}/"
                             f"{len(latents_std)}")
        self.vae = vae.eval().requires_grad_(False)
        self._mean = torch.tensor(latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        if fast:
            fast_modules(vae.decoder)
        self.reset()

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def encoder(self) -> "StreamingEncoder":
        """A streaming encoder over the same VAE and latent statistics (its own cache)."""
        return StreamingEncoder(self.vae, self._mean.flatten().tolist(), self._std.flatten().tolist())

    def fork(self, rule: str | None = None) -> "StreamingDecoder":
        """A decoder over the same VAE weights with its own streaming state (one per pipeline, so two pipelines
        over one model set never share a decode cache); `rule` switches the decoder rule of the copy."""
        import copy

        if rule is not None and rule not in DECODER_RULES:
            raise ValueError(f"unknown decoder rule {rule!r}; choose one of {', '.join(DECODER_RULES)}")
        d = copy.copy(self)
        d.rule = rule or self.rule
        d.reset()
        return d

    def reset(self) -> None:
        """Start a new video."""
        self._cache: list = [None] * self._num_convs
        self._first = True
        self.frames = 0  # latent frames decoded so far

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [1, C, f, h, w] (normalised, as the DiT produces them) -> frames [T, 3, H, W] float32 in [0, 1]."""
        if latents.dim() != 5 or latents.shape[0] != 1:
            raise ValueError(f"expected latents [1, C, f, h, w], got {tuple(latents.shape)}")
        z = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        x = self.vae.post_quant_conv(z.to(self.device, self.dtype))
        # The first latent frame decodes alone (to 1 frame); the rest in one chunk, except for Wan2.2's residual
        # up-blocks, whose `first_chunk` logic assumes one latent frame per call, and for Krea's rule (frame by frame).
        krea = self.rule == "krea"
        chunk = 1 if (self.vae.config.is_residual or krea) else x.shape[2]
        slots = self._krea_slots() if krea else ()
        outs, i = [], 0
        while i < x.shape[2]:
            n = 1 if self._first else min(chunk, x.shape[2] - i)
            before = [self._cache[j] for j in slots]
            outs.append(self.vae.decoder(x[:, :, i:i + n], feat_cache=self._cache, feat_idx=[0],
                                         first_chunk=self._first))
            for k, (j, prev) in enumerate(zip(slots, before)):
                # Krea: [where(prev == 0, 0, cur), cur] instead of [prev, cur], where a one-frame chunk reaches the
                # upsampler (the k-th temporal upsampler sees n * 2**k frames: in practice the first one only)
                if torch.is_tensor(prev) and n * 2 ** k < 2:
                    cur = self._cache[j][:, :, -1:]
                    self._cache[j] = torch.cat([torch.where(prev[:, :, -1:] == 0, 0, cur), cur], 2)
            self._first = False
            self.frames += n
            i += n
        out = torch.cat(outs, 2)
        if self.vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

            out = unpatchify(out, patch_size=self.vae.config.patch_size)
        out = out.float().clamp(-1.0, 1.0)
        return (out[0].permute(1, 0, 2, 3) + 1.0) / 2.0

    def _krea_slots(self) -> tuple[int, ...]:
        """Cache slots of the temporal upsamplers, found once by watching a tiny decode (the slot order is the
        decoder's call order, which its module tree does not spell out)."""
        if self._upsample_slots is None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

            found: list[int] = []
            mods = [m for m in self.vae.decoder.modules() if isinstance(m, WanResample) and m.mode == "upsample3d"]
            def seen(_m, args, kwargs):
                found.append((kwargs["feat_idx"] if "feat_idx" in kwargs else args[2])[0])

            hooks = [m.register_forward_pre_hook(seen, with_kwargs=True) for m in mods]
            try:
                z = torch.zeros(1, self.vae.config.z_dim, 1, 1, 1, device=self.device, dtype=self.dtype)
                self.vae.decoder(z, feat_cache=[None] * self._num_convs, feat_idx=[0], first_chunk=True)
            finally:
                for h in hooks:
                    h.remove()
            if len(found) != len(mods):
                raise RuntimeError("could not locate the temporal upsamplers' cache slots in this diffusers version")
            self._upsample_slots = tuple(found)
        return self._upsample_slots

    def snapshot(self) -> DecodeState:
        return DecodeState(tuple(self._cache), self._first, self.frames)

    def restore(self, state: DecodeState) -> None:
        self._cache, self._first, self.frames = list(state.cache), state.first_chunk, state.frames


class StreamingEncoder:
    """Encode a video block by block with the Wan encoder's causal cache: pixels in, normalised latents out.

    The counterpart of `StreamingDecoder` (same input/output conventions, reversed): the first call takes 1 + 4k
    frames (the first frame encodes alone, as in `AutoencoderKLWan._encode`), later calls 4k frames; each 4-frame
    window gives one latent frame, identical to encoding the whole video at once. The posterior mean is returned,
    normalised by the VAE's latent statistics, ready for a DiT (what the recompute cache policy needs to turn
    decoded frames back into context). `snapshot`/`restore` work as the decoder's do.
    """

    def __init__(self, vae, latents_mean, latents_std, fast: bool = True) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae.eval().requires_grad_(False)
        self._mean = torch.tensor(latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._num_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.encoder.modules())
        if fast:
            fast_modules(vae.encoder)
        self.reset()

    def reset(self) -> None:
        """Start a new video."""
        self._cache: list = [None] * self._num_convs
        self.frames = 0  # pixel frames encoded so far

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [T, 3, H, W] in [0, 1] -> latents [1, C, f, h, w] (normalised; f = T // 4, plus 1 on the first call)."""
        if frames.dim() != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames [T, 3, H, W], got {tuple(frames.shape)}")
        T, first = frames.shape[0], self.frames == 0
        if (T - 1 if first else T) % 4 or T == 0:
            raise ValueError(f"the Wan encoder takes 1 + 4k frames first, then 4k frames per call; got {T} frames "
                             f"({'first' if first else 'a later'} call)")
        p = next(self.vae.parameters())
        x = (frames.to(p.device, p.dtype) * 2.0 - 1.0).permute(1, 0, 2, 3)[None]
        if self.vae.config.patch_size is not None:
            from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

            x = patchify(x, patch_size=self.vae.config.patch_size)
        rest = x[:, :, 1 if first else 0:]
        chunks = ([x[:, :, :1]] if first else []) + (list(rest.split(4, dim=2)) if rest.shape[2] else [])
        out = torch.cat([self.vae.encoder(c, feat_cache=self._cache, feat_idx=[0]) for c in chunks], 2)
        self.frames += T
        mu = self.vae.quant_conv(out)[:, :self.vae.config.z_dim].float()
        return (mu - self._mean.to(mu.device)) / self._std.to(mu.device)

    def snapshot(self) -> tuple:
        return tuple(self._cache), self.frames

    def restore(self, state: tuple) -> None:
        self._cache, self.frames = list(state[0]), state[1]


# ---------------------------------------------------------------- key conversion (original Wan VAE <-> diffusers)
_RES = [("residual.0.", "norm1."), ("residual.2.", "conv1."), ("residual.3.", "norm2."), ("residual.6.", "conv2."),
        ("shortcut.", "conv_shortcut.")]


def vae_key_to_diffusers(key: str, num_res_blocks: int = 2) -> str:
    """Original `WanVAE_` key -> diffusers `AutoencoderKLWan` key (the decoder's flat list is regrouped)."""
    for a, b in (("conv1.", "quant_conv."), ("conv2.", "post_quant_conv.")):
        if key.startswith(a):
            return b + key[len(a):]
    part, rest = key.split(".", 1)
    if re.match(r"(downsamples|upsamples|middle)\.", rest):
        for a, b in _RES:
            rest = re.sub(r"^(\w+\.\d+\.)" + re.escape(a), lambda m: m.group(1) + b, rest)
    rest = re.sub(r"^conv1\.", "conv_in.", rest)
    rest = re.sub(r"^head\.0\.", "norm_out.", rest)
    rest = re.sub(r"^head\.2\.", "conv_out.", rest)
    rest = re.sub(r"^middle\.1\.", "mid_block.attentions.0.", rest)
    rest = re.sub(r"^middle\.([02])\.", lambda m: f"mid_block.resnets.{int(m.group(1)) // 2}.", rest)
    rest = re.sub(r"^downsamples\.", "down_blocks.", rest)

    def up(m: re.Match) -> str:
        i, r = divmod(int(m.group(1)), num_res_blocks + 2)
        return f"up_blocks.{i}.resnets.{r}." if r <= num_res_blocks else f"up_blocks.{i}.upsamplers.0."
    rest = re.sub(r"^upsamples\.(\d+)\.", up, rest)
    return f"{part}.{rest}"


def vae_key_to_original(key: str, num_res_blocks: int = 2) -> str:
    """Inverse of `vae_key_to_diffusers`."""
    for a, b in (("quant_conv.", "conv1."), ("post_quant_conv.", "conv2.")):
        if key.startswith(a):
            return b + key[len(a):]
    part, rest = key.split(".", 1)
    rest = re.sub(r"^conv_in\.", "conv1.", rest)
    rest = re.sub(r"^norm_out\.", "head.0.", rest)
    rest = re.sub(r"^conv_out\.", "head.2.", rest)
    rest = re.sub(r"^mid_block\.attentions\.0\.", "middle.1.", rest)
    rest = re.sub(r"^mid_block\.resnets\.(\d)\.", lambda m: f"middle.{2 * int(m.group(1))}.", rest)
    rest = re.sub(r"^down_blocks\.", "downsamples.", rest)
    rest = re.sub(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.",
                  lambda m: f"upsamples.{int(m.group(1)) * (num_res_blocks + 2) + int(m.group(2))}.", rest)
    rest = re.sub(r"^up_blocks\.(\d+)\.upsamplers\.0\.",
                  lambda m: f"upsamples.{int(m.group(1)) * (num_res_blocks + 2) + num_res_blocks + 1}.", rest)
    if re.match(r"(downsamples|upsamples|middle)\.", rest):
        for a, b in _RES:
            rest = re.sub(r"^(\w+\.\d+\.)" + re.escape(b), lambda m: m.group(1) + a, rest)
    return f"{part}.{rest}"


def vae_num_res_blocks(keys, default: int = 2) -> int:
    """Residual blocks per level, read off the key layout (needed to regroup the decoder's flat list)."""
    keys = list(keys)
    ups = sorted({int(m.group(1)) for k in keys if (m := re.match(r"decoder\.upsamples\.(\d+)\.resample\.", k))})
    if ups:
        return ups[0] - 1
    res = {int(m.group(1)) for k in keys if (m := re.match(r"decoder\.up_blocks\.0\.resnets\.(\d+)\.", k))}
    return max(res) if res else default


# ---------------------------------------------------------------- loading
def vae_config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict:
    """AutoencoderKLWan(...) arguments implied by original-naming VAE shapes (so tiny files load too)."""
    nrb = vae_num_res_blocks(shapes)
    base = shapes["encoder.conv1.weight"][0]
    downs = sorted(int(k.split(".")[2]) for k in shapes if k.startswith("encoder.downsamples.")
                   and ".resample.1.weight" in k)
    mult = [shapes[f"encoder.downsamples.{i * (nrb + 1)}.residual.2.weight"][0] // base
            for i in range(len(downs) + 1)]
    temporal = [f"encoder.downsamples.{n}.time_conv.weight" in shapes for n in downs]
    return dict(base_dim=base, z_dim=shapes["conv2.weight"][0], dim_mult=mult, num_res_blocks=nrb,
                attn_scales=[], temperal_downsample=temporal)


def expected_vae_shapes(num_res_blocks: int, found: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Original-naming shapes of the AutoencoderKLWan the found shapes describe (for strict checks)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        vae = AutoencoderKLWan(**vae_config_from_shapes(found))
    return {vae_key_to_original(k, num_res_blocks): tuple(v.shape) for k, v in vae.state_dict().items()}


def _latent_stats(vae) -> tuple[list[float], list[float]]:
    """The config's statistics (diffusers defaults to the Wan2.1 values for z_dim 16)."""
    z = vae.config.z_dim
    mean, std = list(vae.config.latents_mean or []), list(vae.config.latents_std or [])
    if len(mean) == z and len(std) == z:
        return mean, std
    return [0.0] * z, [1.0] * z  # test-size VAEs: identity normalisation


def load_wan_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 config: dict | None = None, rule: str = "wan") -> StreamingDecoder:
    """`Wan2.1_VAE.pth` (original naming, converted), a VAE `.safetensors`, or a diffusers `vae/` folder; `rule`:
    the streaming decoder's cache rule ("wan", or "krea" for Krea Realtime's decoder)."""
    from diffusers import AutoencoderKLWan

    from sdvg.tensorfiles import check_keys, iter_tensors, open_tensors, params_on_meta

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"VAE checkpoint {p} does not exist")
    if p.is_dir() and (p / "Wan2.1_VAE.pth").is_file():
        p = p / "Wan2.1_VAE.pth"  # a Wan release folder
    elif p.is_dir() and (p / "vae" / "config.json").is_file():
        p = p / "vae"  # a diffusers pipeline folder
    if p.is_dir() and (p / "config.json").is_file():
        cfg = json.loads((p / "config.json").read_text())
        if cfg.get("_class_name") not in (None, "AutoencoderKLWan"):
            raise ValueError(f"{p}: config.json is for {cfg.get('_class_name')}, not AutoencoderKLWan")
        config = config or {k: v for k, v in cfg.items() if not k.startswith("_")}
    src = open_tensors(p)
    if src.naming not in ("vae-original", "vae-diffusers"):
        raise ValueError(f"{p}: not a Wan VAE checkpoint (looks like {src.fmt!r})")
    nrb = vae_num_res_blocks(src.shapes)
    to_orig = (lambda k: k) if src.naming == "vae-original" else (lambda k: vae_key_to_original(k, nrb))
    found = {to_orig(k[len(src.prefix):]): s for k, (s, _) in src.shapes.items()}
    try:
        kw = dict(config) if config else vae_config_from_shapes(found)
    except KeyError as e:
        raise ValueError(f"{p}: a Wan VAE file without {e}; cannot infer its config") from None
    with params_on_meta():
        vae = AutoencoderKLWan.from_config(kw)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    if src.naming == "vae-original":  # report problems in the file's own naming
        expected = {vae_key_to_original(k, nrb): s for k, s in expected.items()}
        check_keys(p, expected, found, hint="Expected the Wan2.1 VAE (Wan2.1_VAE.pth, AutoencoderKLWan)")
    else:
        check_keys(p, expected, {vae_key_to_diffusers(k, nrb): s for k, s in found.items()},
                   hint="Expected a diffusers AutoencoderKLWan")
    device = torch.device(device)
    sd = {vae_key_to_diffusers(to_orig(k[len(src.prefix):]), nrb): t.to(device, dtype, copy=True)
          for k, t in iter_tensors(src)}
    vae.load_state_dict(sd, strict=True, assign=True)
    vae.to(device)
    return StreamingDecoder(vae, *_latent_stats(vae), rule=rule)


def save_wan_vae(vae, path: str | Path, fmt: str = "original") -> Path:
    """Write an AutoencoderKLWan as `Wan2.1_VAE.pth` (original naming, flat) or a diffusers folder."""
    p = Path(path)
    if fmt == "diffusers":
        vae.save_pretrained(str(p), safe_serialization=True)
        return p
    if fmt != "original":
        raise ValueError(f"unknown VAE format {fmt!r}; choose original or diffusers")
    nrb = vae.config.num_res_blocks
    p.parent.mkdir(parents=True, exist_ok=True)
    torch.save({vae_key_to_original(k, nrb): v.detach().contiguous() for k, v in vae.state_dict().items()}, p)
    return p


def decoded_frames(latent_frames: int, first: bool, stride: int = 4) -> int:
    """Frames a block of `latent_frames` decodes to (the video's first latent frame gives one)."""
    return latent_frames * stride - (stride - 1 if first else 0)


__all__ = ["StreamingDecoder", "StreamingEncoder", "DECODER_RULES", "DecodeState", "load_wan_vae", "save_wan_vae", "vae_config_from_shapes",
           "vae_key_to_diffusers", "vae_key_to_original", "vae_num_res_blocks",
           "expected_vae_shapes", "WAN21_LATENTS_MEAN", "WAN21_LATENTS_STD", "decoded_frames"]
