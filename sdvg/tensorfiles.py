"""Checkpoint files, read lazily: safetensors headers (and shards), memory-mapped `.pt` dicts, wrapper prefixes,
which naming a file uses, one-tensor-at-a-time iteration, and the strict key check. Shared by the DiT, VAE, text
encoder and ImageReward loaders; it knows file layouts, not models.
"""
from __future__ import annotations

import json
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def safetensors_header(path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """name -> (shape, dtype) from the JSON header only (a 28 GB file costs one small read).

    The file's size is checked against the header's tensor offsets, so a truncated file (an interrupted download
    or copy) or an empty one is a clear ValueError here, not a failure deep inside a load.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: not a safetensors file ({size} bytes: empty or cut short)")
        n = struct.unpack("<Q", raw)[0]
        if n > 100_000_000 or 8 + n > size:
            raise ValueError(f"{path}: not a safetensors file, or truncated (header length {n}, file {size} bytes)")
        try:
            head = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in head.items() if k != "__metadata__"), default=0)
            out = {k: (tuple(v["shape"]), _ST_DTYPES.get(v["dtype"], torch.float32)) for k, v in head.items()
                   if k != "__metadata__"}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise ValueError(f"{path}: not a safetensors file (unreadable header)") from None
    if 8 + n + end > size:
        raise ValueError(f"{path}: truncated: its header describes {8 + n + end:,} bytes but the file has {size:,} "
                         f"(an interrupted download or copy?)")
    return out


def load_torch_file(path: str | Path, what: str = "checkpoint"):
    """`torch.load(weights_only=True)` (memory-mapped when possible) with every failure as one ValueError line:
    an empty or text file, a truncated zip, or a pickle that holds more than tensors (never executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not a {what}")
    try:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a file we read"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{path}: cannot read as a {what} ({type(e).__name__}{': ' + msg[:200] if msg else ''})") \
            from None


def clean_key(key: str) -> str:
    for w in _WRAPPERS:
        key = key.replace(w, "")
    return key[len("module."):] if key.startswith("module.") else key


def naming(keys) -> str:
    keys = set(keys)
    if any(k.startswith(("blip.", "mlp.")) for k in keys) and any(k.startswith("blip.") for k in keys):
        return "imagereward"
    if any(k.startswith("decoder.") for k in keys):
        return "vae-diffusers" if any(".conv_in." in k or k.startswith("post_quant_conv") for k in keys) \
            else "vae-original"
    if any(k.startswith(("condition_embedder.", "proj_out.")) or ".attn1." in k for k in keys):
        return "diffusers"
    if any(k.startswith(("patch_embedding.", "head.head.")) or ".self_attn." in k for k in keys):
        return "original"
    return "unknown"


@dataclass
class Source:
    """Where the tensors of one checkpoint live; `shapes` is in the file's own naming without wrapper prefixes."""

    files: list[Path]
    fmt: str
    naming: str
    prefix: str = ""
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)
    where: dict[str, Path] = field(default_factory=dict)  # key (with prefix) -> safetensors file
    pt: dict | None = None  # the chosen (memory-mapped) state dict of a .pt
    variants: tuple[str, ...] = ()
    variant: str | None = None
    config: dict | None = None


def open_tensors(path: str | Path, ema: bool = True) -> Source:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    config = None
    if p.is_dir():
        if not any(p.glob("*.safetensors*")) and (p / "transformer" / "config.json").is_file():
            p = p / "transformer"  # a diffusers pipeline folder
        if (p / "config.json").is_file():
            config = json.loads((p / "config.json").read_text())
        idx = sorted(p.glob("*.safetensors.index.json"))
        files = sorted(p.glob("*.safetensors"))
        if idx:
            p = idx[0]
        elif len(files) == 1:
            p = files[0]
        elif files:
            raise ValueError(f"{path}: several .safetensors files and no .index.json: {[f.name for f in files]}")
        else:
            pth = sorted(p.glob("*.pt")) + sorted(p.glob("*.pth"))
            if len(pth) != 1:
                raise ValueError(f"{path}: found no checkpoint file (.safetensors, .safetensors.index.json, .pt)")
            p = pth[0]
    elif p.name.endswith(".safetensors") and (p.parent / "config.json").is_file():
        config = json.loads((p.parent / "config.json").read_text())
    if p.name.endswith(".index.json"):
        wm = json.loads(p.read_text())["weight_map"]
        files = sorted({p.parent / f for f in wm.values()})
        src = Source(files=[p, *files], fmt="sharded", naming="unknown", config=config)
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{p}: shard {f.name} listed in the index is missing")
            for k, v in safetensors_header(f).items():
                src.shapes[k], src.where[k] = v, f
    elif p.suffix == ".safetensors":
        src = Source(files=[p], fmt="safetensors", naming="unknown", config=config)
        src.shapes = safetensors_header(p)
        src.where = {k: p for k in src.shapes}
    else:
        obj = load_torch_file(p, "torch checkpoint")
        if not isinstance(obj, dict):
            raise ValueError(f"{p}: expected a dict of tensors, got {type(obj).__name__}")
        subs = tuple(k for k in ("generator", "generator_ema", "model", "critic", "state_dict")
                     if isinstance(obj.get(k), dict))
        src = Source(files=[p], fmt="pt", naming="unknown", variants=subs)
        if subs:
            pick = [k for k in (("generator_ema", "generator") if ema else ("generator", "generator_ema"))
                    + ("model", "state_dict") if k in subs]
            if not pick:
                raise ValueError(f"{p}: a training checkpoint holding only {list(subs)}; no generator weights")
            src.variant, obj = pick[0], obj[pick[0]]
            src.fmt = "self-forcing"
        src.pt = {clean_key(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        src.shapes = {k: (tuple(v.shape), v.dtype) for k, v in src.pt.items()}
    if src.fmt != "pt" and src.fmt != "self-forcing":
        src.shapes = {clean_key(k): v for k, v in src.shapes.items()}
        src.where = {clean_key(k): v for k, v in src.where.items()}
    keys = list(src.shapes)
    if keys and all(k.startswith("model.") for k in keys):
        src.prefix = "model."
        if src.fmt == "safetensors":
            src.fmt = "krea"
    src.naming = naming(k[len(src.prefix):] for k in keys)
    if src.fmt in ("safetensors", "sharded", "pt"):
        src.fmt = {"diffusers": "diffusers", "original": "original", "vae-original": "wan-vae",
                   "vae-diffusers": "diffusers-vae", "imagereward": "imagereward"}.get(src.naming, src.fmt)
    return src


def iter_tensors(src: Source, keys: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(file key, tensor) one at a time, so host memory holds at most one tensor beyond the model."""
    keys = list(src.shapes) if keys is None else keys
    if src.pt is not None:
        for k in keys:
            yield k, src.pt[k]
        return
    from safetensors import safe_open

    by_file: dict[Path, list[str]] = {}
    for k in keys:
        by_file.setdefault(src.where[k], []).append(k)
    for f, ks in by_file.items():
        with safe_open(str(f), framework="pt", device="cpu") as h:
            names = {clean_key(n): n for n in h.keys()}
            for k in ks:
                yield k, h.get_tensor(names[k])


def check_keys(path, expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], hint: str = "") -> None:
    """Raise a ValueError naming the file, the first missing/unexpected/mis-shaped tensors and a hint."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    bad = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or bad):
        return

    def few(ks, f=str):
        return ", ".join(f(k) for k in ks[:5]) + (f", ... (+{len(ks) - 5})" if len(ks) > 5 else "")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors ({few(unexpected)})")
    if bad:
        shape = lambda s: "x".join(map(str, s)) or "scalar"  # noqa: E731
        parts.append(f"{len(bad)} shape mismatches ({few(bad, lambda k: f'{k}: file {shape(found[k])}, model {shape(expected[k])}')})")
    raise ValueError(f"{path}: does not fit the model: " + "; ".join(parts) + (f". {hint}" if hint else ""))


@contextmanager
def params_on_meta():
    """Build modules with parameters on `meta` and buffers real (so RoPE tables etc. are still computed)."""
    orig = nn.Module.register_parameter

    def register(self, name, param):
        orig(self, name, param)
        if param is not None and param.device.type != "meta":
            self._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = orig


__all__ = ["safetensors_header", "load_torch_file", "clean_key", "naming", "Source", "open_tensors", "iter_tensors",
           "check_keys", "params_on_meta"]
