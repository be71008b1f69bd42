"""Checkpoint formats: detection, key conversion, strict low-memory loading, saving, and `sdvg inspect`.

Every Wan2.1 DiT release stores the same tensors under a different wrapper: original Wan naming (HF
`diffusion_pytorch_model*.safetensors`), Self-Forcing `.pt` dicts (`generator`/`generator_ema`/`model`, keys
prefixed `model.`), Krea's single `.safetensors` (prefixed `model.`) and diffusers' `WanTransformer3DModel` folders.
All of them are mapped onto the original naming, which is what `WanDiT` uses. Shapes are checked from file headers
before any data is read, so a wrong file fails in milliseconds with a message saying which preset it looks like.
Only local paths are read (no hub).
"""
from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdvg.config import DIT_PRESETS, DiTConfig
from sdvg.vae import vae_key_to_diffusers, vae_key_to_original, vae_num_res_blocks

from sdvg.tensorfiles import (Source as _Source, check_keys, iter_tensors as _iter_tensors, load_torch_file,
                              open_tensors as _open, params_on_meta, safetensors_header)
from sdvg.wan import DIT_BLOCK_KEY, dit_key_to_diffusers, dit_key_to_original


def _to_original(src: _Source, key: str) -> str:
    k = key[len(src.prefix):]
    if src.naming == "diffusers":
        return dit_key_to_original(k)
    if src.naming == "vae-diffusers":
        return vae_key_to_original(k, vae_num_res_blocks(src.shapes))
    return k


# ---------------------------------------------------------------- presets and configs from shapes
def dit_heads(dim: int, config: dict | None = None, num_heads: int | None = None) -> tuple[int, str | None]:
    """Attention heads of a DiT of width `dim` (the weights' shapes do not hold them) and, when guessed, why:
    an explicit `num_heads`, else a diffusers config.json, else a preset of that width, else head_dim 128 (every
    Wan2.1 size) -- a guess that is wrong for small custom models."""
    if num_heads:
        return num_heads, None
    if config and "num_attention_heads" in config:
        return config["num_attention_heads"], None
    for name, cfg in DIT_PRESETS.items():
        if cfg.dim == dim:
            return cfg.num_heads, f"num_heads={cfg.num_heads} (from preset {name}, which has this width)"
    heads = max(1, dim // 128)
    return heads, f"num_heads={heads} (head_dim 128, as in Wan2.1; no config.json or preset says)"


def infer_dit_config(shapes: dict[str, tuple[int, ...]], config: dict | None = None,
                     num_heads: int | None = None, text_len: int | None = None) -> DiTConfig | None:
    """The DiTConfig a set of original-naming shapes implies (heads: see `dit_heads`; text_len: given, else the
    DiTConfig default, 512 as in Wan2.1)."""
    try:
        pe = shapes["patch_embedding.weight"]
        dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
        layers = 1 + max(int(m.group(1)) for k in shapes if (m := DIT_BLOCK_KEY.match(k)))
        ffn = shapes["blocks.0.ffn.0.weight"][0]
        text_dim = shapes["text_embedding.0.weight"][1]
        freq = shapes["time_embedding.0.weight"][1]
        out_dim = shapes["head.head.weight"][0] // math.prod(patch)
    except (KeyError, ValueError, IndexError):
        return None
    heads, _ = dit_heads(dim, config, num_heads)
    try:
        return DiTConfig(dim=dim, ffn_dim=ffn, num_heads=heads, num_layers=layers, in_dim=in_dim, out_dim=out_dim,
                         text_dim=text_dim, freq_dim=freq, patch_size=patch,
                         **({"text_len": text_len} if text_len else {}),
                         qk_norm="blocks.0.self_attn.norm_q.weight" in shapes,
                         cross_attn_norm="blocks.0.norm3.weight" in shapes)
    except ValueError:
        return None


def match_preset(cfg: DiTConfig | None) -> str | None:
    if cfg is None:
        return None
    for name, p in DIT_PRESETS.items():
        if (p.dim, p.ffn_dim, p.num_layers, p.in_dim, p.out_dim, p.text_dim, p.freq_dim) == \
                (cfg.dim, cfg.ffn_dim, cfg.num_layers, cfg.in_dim, cfg.out_dim, cfg.text_dim, cfg.freq_dim):
            return name
    return None


def _describe(cfg: DiTConfig | None) -> str:
    if cfg is None:
        return "an unrecognised DiT"
    name = match_preset(cfg)
    if name is None:
        return (f"a DiT with dim {cfg.dim}, {cfg.num_layers} blocks, ffn {cfg.ffn_dim}, matching no preset "
                "(truncated or custom?)")
    size = {"wan2.1-1.3b": "1.3B", "wan2.1-14b": "14B"}.get(name, name)
    return (f"a {size} checkpoint (dim {cfg.dim}, {cfg.num_layers} blocks); use the preset {name!r} "
            f"(--target-preset/--drafter-preset {name})")


# ---------------------------------------------------------------- public API
@dataclass
class CheckpointInfo:
    path: str
    format: str  # self-forcing | krea | original | diffusers | wan-vae | diffusers-vae | imagereward | unknown
    kind: str  # dit | vae | imagereward | unknown
    preset: str | None
    num_tensors: int
    num_params: int
    dtypes: dict[str, int]
    variants: tuple[str, ...] = ()
    variant: str | None = None
    sharded: bool = False
    config: DiTConfig | None = None
    guessed: tuple[str, ...] = ()  # config values the file does not hold, and how they were chosen


def detect_format(path: str | Path, ema: bool = True, num_heads: int | None = None,
                  text_len: int | None = None) -> CheckpointInfo:
    """Identify a checkpoint from headers only (safetensors JSON header, or a memory-mapped .pt)."""
    src = _open(path, ema)
    return _info(path, src, num_heads, text_len)


def _info(path, src: _Source, num_heads: int | None = None, text_len: int | None = None,
          vision_heads: int | None = None) -> CheckpointInfo:
    kind = {"original": "dit", "diffusers": "dit", "vae-original": "vae", "vae-diffusers": "vae",
            "imagereward": "imagereward"}.get(src.naming, "unknown")
    cfg = infer_dit_config({_to_original(src, k): s for k, (s, _) in src.shapes.items()}, src.config, num_heads,
                           text_len) if kind == "dit" else None
    guessed: tuple[str, ...] = ()
    if cfg is not None:
        why = dit_heads(cfg.dim, src.config, num_heads)[1]
        guessed = ((why + "; set it with --num-heads",) if why else ()) + (() if text_len else (
            f"text_len={cfg.text_len} (the Wan default; not stored in the weights; set it with --text-len)",))
    width = next((s[0] for k, (s, _) in src.shapes.items() if k.endswith("visual_encoder.patch_embed.proj.weight")),
                 None)
    if kind == "imagereward" and width and not vision_heads:
        guessed = (f"vision_heads={max(1, width // 64)} (ViT width {width} // 64, as in the released ImageReward; "
                   f"not stored in the weights; set it with --scorer-heads)",)
    return CheckpointInfo(path=str(path), format=src.fmt if src.naming != "unknown" else "unknown", kind=kind,
                          preset=match_preset(cfg), num_tensors=len(src.shapes),
                          num_params=sum(math.prod(s) for s, _ in src.shapes.values()),
                          dtypes=dict(Counter(str(d).replace("torch.", "") for _, d in src.shapes.values())),
                          variants=src.variants, variant=src.variant,
                          sharded=any(f.name.endswith(".index.json") for f in src.files), config=cfg,
                          guessed=guessed)


def load_state_dict_any(path: str | Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of any supported checkpoint, in original naming (Wan DiT / Wan VAE), prefixes stripped."""
    src = _open(path, ema)
    return {_to_original(src, k): t for k, t in _iter_tensors(src)}


def _expected_dit(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    from sdvg.wan import WanDiT

    with torch.device("meta"):
        m = WanDiT(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def load_dit(path: str | Path, cfg: DiTConfig | str, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32, ema: bool = True):
    """A WanDiT with the weights of any supported DiT checkpoint, checked strictly before any data is read.

    Host memory stays near one copy: the model is built with meta parameters and each tensor is read, cast, moved and
    assigned one at a time (safetensors via `safe_open`, .pt via `torch.load(mmap=True)`).
    """
    from sdvg.config import dit_preset
    from sdvg.wan import WanDiT

    cfg = dit_preset(cfg) if isinstance(cfg, str) else cfg
    src = _open(path, ema)
    if src.naming not in ("original", "diffusers"):
        raise ValueError(f"{path}: not a Wan DiT checkpoint (looks like {src.fmt!r}: {src.naming})")
    names = {k: _to_original(src, k) for k in src.shapes}
    found = {names[k]: s for k, (s, _) in src.shapes.items()}
    check_keys(path, _expected_dit(cfg), found, hint=f"This is {_describe(infer_dit_config(found, src.config))}")
    with params_on_meta():
        model = WanDiT(cfg)
    device = torch.device(device)
    sd = {}
    for k, t in _iter_tensors(src):
        sd[names[k]] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype, copy=True)
    model.load_state_dict(sd, strict=True, assign=True)
    model.to(device)  # non-persistent buffers
    return model.eval().requires_grad_(False)


def _state(model_or_sd) -> dict[str, torch.Tensor]:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, nn.Module) else dict(model_or_sd)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def _save_st(sd: dict[str, torch.Tensor], path: Path, max_shard_bytes: int | None) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    if not max_shard_bytes:
        save_file(sd, str(path), metadata={"format": "pt"})
        return
    shards, cur, size = [], {}, 0
    for k, v in sd.items():
        nb = v.numel() * v.element_size()
        if cur and size + nb > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k], size = v, size + nb
    shards.append(cur)
    stem = path.name[: -len(".safetensors")]
    wm = {}
    for i, sh in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, str(path.parent / name), metadata={"format": "pt"})
        wm.update({k: name for k in sh})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (path.parent / f"{path.name}.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2))


def diffusers_dit_config(cfg: DiTConfig) -> dict:
    return {"_class_name": "WanTransformer3DModel", "_diffusers_version": "0.42.1", "patch_size": list(cfg.patch_size),
            "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_dim,
            "out_channels": cfg.out_dim, "text_dim": cfg.text_dim, "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim,
            "num_layers": cfg.num_layers, "cross_attn_norm": cfg.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None, "eps": cfg.eps, "image_dim": None,
            "added_kv_proj_dim": None, "rope_max_seq_len": 1024}


def save_dit(model, path: str | Path, fmt: str = "original", *, ema=None, max_shard_bytes: int | None = None,
             cfg: DiTConfig | None = None) -> Path:
    """Write a DiT (module or original-naming state dict) in a real release layout.

    fmt: original (`diffusion_pytorch_model.safetensors`, sharded with an index when `max_shard_bytes`),
    diffusers (a `WanTransformer3DModel` folder), self-forcing (`{'generator', 'generator_ema'?}` .pt),
    ode-init (`{'model': ...}` .pt), krea (single safetensors, `model.` prefix). `ema` adds generator_ema.
    Returns the path a loader should be given.
    """
    sd, p = _state(model), Path(path)
    cfg = cfg or getattr(model, "cfg", None)
    if fmt in ("original", "diffusers"):
        if p.suffix != ".safetensors":
            p.mkdir(parents=True, exist_ok=True)
            f = p / "diffusion_pytorch_model.safetensors"
        else:
            f = p
        if fmt == "diffusers":
            sd = {dit_key_to_diffusers(k): v for k, v in sd.items()}
            cfg = cfg or infer_dit_config({k: tuple(v.shape) for k, v in _state(model).items()})
            f.parent.mkdir(parents=True, exist_ok=True)
            (f.parent / "config.json").write_text(json.dumps(diffusers_dit_config(cfg), indent=2))
        _save_st(sd, f, max_shard_bytes)
        return p
    if fmt == "krea":
        _save_st({"model." + k: v for k, v in sd.items()}, p, None)
        return p
    if fmt in ("self-forcing", "ode-init"):
        obj = {"generator" if fmt == "self-forcing" else "model": {"model." + k: v for k, v in sd.items()}}
        if ema is not None:
            obj["generator_ema"] = {"model." + k: v for k, v in _state(ema).items()}
        p.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, p)
        return p
    raise ValueError(f"unknown checkpoint format {fmt!r}; choose original, diffusers, self-forcing, ode-init, krea")


# ---------------------------------------------------------------- inspect
@dataclass
class InspectReport:
    info: CheckpointInfo
    ok: bool
    message: str


def inspect_checkpoint(path: str | Path, preset: str | None = None, ema: bool = True,
                       num_heads: int | None = None, text_len: int | None = None,
                       vision_heads: int | None = None) -> InspectReport:
    """Identify a file and try a strict (shape-only) load onto a meta-device model (`num_heads`: see `dit_heads`)."""
    src = _open(path, ema)
    info = _info(path, src, num_heads, text_len, vision_heads)
    found = {_to_original(src, k): s for k, (s, _) in src.shapes.items()}
    try:
        if info.kind == "dit":
            from sdvg.config import dit_preset

            cfg = dit_preset(preset) if preset else (DIT_PRESETS[info.preset] if info.preset else info.config)
            if cfg is None:
                raise ValueError(f"{path}: cannot infer a DiT config; pass --preset")
            if num_heads or text_len:
                from dataclasses import replace

                cfg = replace(cfg, num_heads=num_heads or cfg.num_heads, text_len=text_len or cfg.text_len)
            check_keys(path, _expected_dit(cfg), found, hint=f"This is {_describe(info.config)}")
            return InspectReport(info, True, f"strict load onto WanDiT({preset or info.preset or 'inferred'}): ok")
        if info.kind == "vae":
            from sdvg.vae import expected_vae_shapes

            check_keys(path, expected_vae_shapes(vae_num_res_blocks(found), found), found)
            return InspectReport(info, True, "strict load onto AutoencoderKLWan (config read from the shapes): ok")
        if info.kind == "imagereward":
            ok = any(k.startswith("mlp.") for k in found)
            return InspectReport(info, ok, "ImageReward layout (blip.*, mlp.*)" + ("" if ok else ": no mlp.* head"))
        return InspectReport(info, False, f"{path}: unrecognised tensor naming (first keys: {list(found)[:5]})")
    except ValueError as e:
        return InspectReport(info, False, str(e))


def format_report(r: InspectReport) -> str:
    i = r.info
    lines = [f"path:      {i.path}", f"format:    {i.format}" + (" (sharded)" if i.sharded else ""),
             f"kind:      {i.kind}"]
    if i.variants:
        lines.append(f"contains:  {', '.join(i.variants)} (using {i.variant})")
    if i.kind == "dit":
        c = i.config
        lines.append(f"preset:    {i.preset or 'none matches'}" + (
            f" (dim {c.dim}, {c.num_layers} blocks, ffn {c.ffn_dim}, {c.num_heads} heads)" if c else ""))
    lines += [f"guessed:   {g}" for g in i.guessed]
    lines += [f"tensors:   {i.num_tensors}", f"params:    {i.num_params:,}",
              f"dtypes:    {', '.join(f'{k} x{v}' for k, v in sorted(i.dtypes.items()))}",
              f"check:     {'OK' if r.ok else 'FAILED'}: {r.message}"]
    return "\n".join(lines)


def inspect_main(argv: list[str] | None = None) -> int:
    from sdvg.flags import Parser

    ap = Parser(prog="sdvg inspect", description="identify a checkpoint and check it loads strictly "
                                 "(reads headers only)")
    ap.add_argument("path")
    ap.add_argument("--preset", help="DiT preset to check against (default: the one the shapes match)")
    ap.add_argument("--no-ema", action="store_true", help="Self-Forcing .pt: check 'generator' not 'generator_ema'")
    ap.add_argument("--num-heads", type=int, default=None,
                    help="DiT attention heads (not stored in the weights; guessed from a preset of the same width or "
                         "head_dim 128 otherwise)")
    ap.add_argument("--text-len", type=int, default=None, help="text tokens the DiT was trained with (not stored in "
                    "the weights; default 512 as in Wan2.1)")
    ap.add_argument("--scorer-heads", type=int, default=None, help="ImageReward ViT attention heads (not stored in "
                    "the weights; default width // 64)")
    a = ap.parse_args(argv)
    r = inspect_checkpoint(a.path, a.preset, ema=not a.no_ema, num_heads=a.num_heads, text_len=a.text_len,
                           vision_heads=a.scorer_heads)
    print(format_report(r), file=sys.stdout if r.ok else sys.stderr)
    return 0 if r.ok else 1


__all__ = ["CheckpointInfo", "InspectReport", "detect_format", "load_dit", "load_state_dict_any", "save_dit",
           "inspect_checkpoint", "format_report", "inspect_main", "dit_key_to_diffusers", "dit_key_to_original",
           "vae_key_to_diffusers", "vae_key_to_original", "vae_num_res_blocks", "infer_dit_config", "dit_heads",
           "match_preset",
           "check_keys", "params_on_meta", "safetensors_header", "load_torch_file"]
