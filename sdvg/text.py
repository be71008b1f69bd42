"""Text encoders: the prompt -> `[B, text_len, text_dim]` context both DiTs attend to.

Wan2.1 (and Self-Forcing / Krea after it) encodes a prompt with the umT5-XXL encoder: the cleaned prompt is
tokenised to exactly `text_len` (512) tokens with `</s>` appended, padded and truncated, run through the encoder
with the attention mask, and then every position past the real tokens is set to zero (`u[v:] = 0`). The DiT's
cross-attention sees those zero rows unmasked, so the zeros (not the encoder's padding outputs) are part of the
reference maths. Prompts are cached, so a prompt is encoded once however many blocks or videos use it.
"""
from __future__ import annotations

import html
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """[B, text_len, text_dim], rows past each prompt's tokens zero."""
        ...


def clean_prompt(text: str) -> str:
    """Wan's `clean='whitespace'`: ftfy (when installed), HTML unescaping twice, whitespace collapsed."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class PromptCache:
    """A bounded least-recently-used cache of per-prompt values (text embeddings, a scorer's text features): the one
    per-prompt cache of the package. Bounded because a benchmark sweeps hundreds of prompts and a server runs on."""

    def __init__(self, size: int = 1024) -> None:
        self.size, self._d = size, OrderedDict()

    def get(self, key):
        if key in self._d:
            self._d.move_to_end(key)
        return self._d.get(key)

    def put(self, key, value) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)

    def get_or_compute(self, key, compute):
        """The cached value, else `compute()` stored."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    def get_or_compute_many(self, keys: list, compute_batch) -> list:
        """The values of `keys`, the missing ones computed in one `compute_batch(missing_keys)` call (each distinct
        key once) and stored. Returned from this call, not re-read, so a batch larger than the cache still works."""
        found = {k: self.get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, v in found.items() if v is None]
        if missing:
            for k, v in zip(missing, compute_batch(missing)):
                found[k] = v
                self.put(k, v)
        return [found[k] for k in keys]


# ---------------------------------------------------------------- umT5
_T5_BLOCK = [("norm1.weight", "layer.0.layer_norm.weight"), ("attn.q.weight", "layer.0.SelfAttention.q.weight"),
             ("attn.k.weight", "layer.0.SelfAttention.k.weight"), ("attn.v.weight", "layer.0.SelfAttention.v.weight"),
             ("attn.o.weight", "layer.0.SelfAttention.o.weight"),
             ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
             ("norm2.weight", "layer.1.layer_norm.weight"), ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
             ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"), ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight")]


def t5_key_to_hf(key: str) -> list[str]:
    """Wan `models_t5_umt5-xxl-enc-bf16.pth` key -> transformers UMT5EncoderModel key(s) (embeddings are tied)."""
    if key == "token_embedding.weight":
        return ["shared.weight", "encoder.embed_tokens.weight"]
    if key == "norm.weight":
        return ["encoder.final_layer_norm.weight"]
    m = re.match(r"^blocks\.(\d+)\.(.*)$", key)
    if m:
        for a, b in _T5_BLOCK:
            if m.group(2) == a:
                return [f"encoder.block.{m.group(1)}.{b}"]
    raise ValueError(f"unexpected tensor {key!r} for a Wan umT5 encoder checkpoint")


def t5_key_to_wan(key: str) -> str | None:
    """Inverse of `t5_key_to_hf` (None for the tied duplicate)."""
    if key == "shared.weight":
        return "token_embedding.weight"
    if key == "encoder.embed_tokens.weight":
        return None
    if key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    m = re.match(r"^encoder\.block\.(\d+)\.(.*)$", key)
    for a, b in _T5_BLOCK:
        if m and m.group(2) == b:
            return f"blocks.{m.group(1)}.{a}"
    raise ValueError(f"unexpected UMT5 tensor {key!r}")


def umt5_config_from_wan(shapes: dict[str, tuple[int, ...]]):
    """UMT5Config of a Wan umT5 encoder checkpoint (umT5-XXL: 24 layers, 64 heads, d_model 4096, d_ff 10240)."""
    from transformers import UMT5Config

    vocab, d_model = shapes["token_embedding.weight"]
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=shapes["blocks.0.attn.q.weight"][0] // heads,
                      d_ff=shapes["blocks.0.ffn.fc1.weight"][0], num_layers=layers, num_heads=heads,
                      relative_attention_num_buckets=buckets, relative_attention_max_distance=128,
                      feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
                      layer_norm_epsilon=1e-6, dropout_rate=0.0)


def _load_wan_t5(pth: Path, device, dtype):
    from transformers import UMT5EncoderModel

    from sdvg.checkpoints import check_keys, load_torch_file, params_on_meta

    sd = load_torch_file(pth, "Wan umT5 checkpoint")
    try:
        cfg = umt5_config_from_wan({k: tuple(v.shape) for k, v in sd.items()})
    except (KeyError, ValueError) as e:
        raise ValueError(f"{pth}: not a Wan umT5 encoder checkpoint (missing {e})") from None
    with params_on_meta():
        model = UMT5EncoderModel(cfg)
    hf = {}
    for k, v in sd.items():
        t = v.to(device=device, dtype=dtype, copy=True)
        for name in t5_key_to_hf(k):
            hf[name] = t
    check_keys(pth, {k: tuple(v.shape) for k, v in model.state_dict().items()},
               {k: tuple(v.shape) for k, v in hf.items()})
    model.load_state_dict(hf, strict=True, assign=True)
    model.tie_weights() if hasattr(model, "tie_weights") else None
    return model.to(device)


class UMT5TextEncoder:
    """umT5 encoder (transformers) + tokenizer, with Wan's tokenisation, padding zeroing and a prompt cache."""

    def __init__(self, model, tokenizer, text_len: int = 512, cache_size: int = 256) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.text_len = tokenizer, text_len
        self._cache = PromptCache(cache_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def text_dim(self) -> int:
        return self.model.config.d_model

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.bfloat16, text_len: int = 512,
                        tokenizer_dir: str | Path | None = None) -> "UMT5TextEncoder":
        """Local files only. Accepts a transformers UMT5 folder (config.json + weights + tokenizer files), a diffusers
        pipeline folder (`text_encoder/` + `tokenizer/`), or a Wan release folder / file
        (`models_t5_umt5-xxl-enc-bf16.pth` + `google/umt5-xxl/` tokenizer)."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        p = Path(local_dir)
        if not p.exists():
            raise FileNotFoundError(f"text encoder {p} does not exist")
        wan_pth = p if p.is_file() else next(iter(sorted(p.glob("models_t5_*.pth"))), None)
        if (p / "text_encoder" / "config.json").is_file():
            model_dir, tok = p / "text_encoder", p / "tokenizer"
        elif (p / "config.json").is_file():
            model_dir, tok = p, p
        elif wan_pth is not None:
            model_dir, tok = None, wan_pth.parent / "google" / "umt5-xxl"
        else:
            raise ValueError(f"{p}: no umT5 text encoder found (expected a transformers folder with config.json, a "
                             "diffusers folder with text_encoder/ and tokenizer/, or Wan's models_t5_*.pth)")
        tok = Path(tokenizer_dir) if tokenizer_dir else tok
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tok), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise ValueError(f"{tok}: cannot load the umT5 tokenizer ({e}); pass tokenizer_dir") from None
        if model_dir is None:
            model = _load_wan_t5(wan_pth, torch.device(device), dtype)
        else:
            try:
                model = UMT5EncoderModel.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True)
            except (OSError, ValueError) as e:
                raise ValueError(f"{model_dir}: cannot load UMT5EncoderModel ({e})") from None
            model = model.to(device)
        return cls(model, tokenizer, text_len=text_len)

    @torch.no_grad()
    def _run(self, prompts: list[str]) -> torch.Tensor:
        t = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                           max_length=self.text_len, add_special_tokens=True, return_tensors="pt")
        ids, mask = t["input_ids"].to(self.device), t["attention_mask"].to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        lens = mask.gt(0).sum(dim=1)
        keep = torch.arange(out.shape[1], device=out.device)[None, :] < lens[:, None]
        return out.masked_fill(~keep[..., None], 0.0).float()  # padding rows exactly zero; fp32 is lossless

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack(self._cache.get_or_compute_many(prompts, self._run))


# ---------------------------------------------------------------- precomputed
class PrecomputedTextEncoder:
    """Embeddings computed elsewhere: a `.pt` dict {prompt: Tensor[L, dim]} or a `.safetensors` whose metadata
    `prompts` (JSON list) names tensors `emb.0`, `emb.1`, ... Rows past L are zero-padded up to `text_len`."""

    def __init__(self, path: str | Path, text_len: int = 512) -> None:
        self.path, self.text_len = Path(path), text_len
        if not self.path.is_file():
            raise FileNotFoundError(f"precomputed embeddings {self.path} do not exist")
        from sdvg.checkpoints import load_torch_file, safetensors_header

        if self.path.suffix == ".safetensors":
            from safetensors import safe_open

            safetensors_header(self.path)  # empty or truncated: one clear line
            with safe_open(str(self.path), framework="pt") as f:
                meta = f.metadata() or {}
                if "prompts" not in meta:
                    raise ValueError(f"{self.path}: no 'prompts' metadata (write it with save_precomputed)")
                prompts = json.loads(meta["prompts"])
                self._emb = {p: f.get_tensor(f"emb.{i}") for i, p in enumerate(prompts)}
        else:
            obj = load_torch_file(self.path, "precomputed-embeddings file")
            if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in obj.items()):
                raise ValueError(f"{self.path}: expected a dict {{prompt: Tensor[L, dim]}}")
            self._emb = dict(obj)
        for p, e in list(self._emb.items()):
            e = e[0] if e.dim() == 3 and e.shape[0] == 1 else e
            if e.dim() != 2 or e.shape[0] > text_len:
                raise ValueError(f"{self.path}: embedding of {p!r} has shape {tuple(e.shape)}; want [L<={text_len}, dim]")
            self._emb[p] = e
        self._clean = {clean_prompt(p): p for p in self._emb}

    @property
    def prompts(self) -> list[str]:
        return list(self._emb)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            key = p if p in self._emb else self._clean.get(clean_prompt(p))
            if key is None:
                some = ", ".join(repr(q) for q in list(self._emb)[:3])
                raise ValueError(f"prompt {p!r} is not in {self.path} ({len(self._emb)} prompts, e.g. {some})")
            e = self._emb[key].float()
            out.append(torch.cat([e, e.new_zeros(self.text_len - e.shape[0], e.shape[1])]))
        return torch.stack(out)


def save_precomputed(embeddings: dict[str, torch.Tensor], path: str | Path, trim: bool = True) -> Path:
    """Write {prompt: [text_len or L, dim]} for `PrecomputedTextEncoder`; `trim` drops trailing all-zero rows."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    clean = {}
    for k, e in embeddings.items():
        e = e[0] if e.dim() == 3 else e
        if trim:
            nz = e.abs().sum(-1).nonzero()
            e = e[: int(nz.max()) + 1 if len(nz) else 1]
        clean[k] = e.detach().contiguous().cpu()
    if p.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"emb.{i}": e for i, e in enumerate(clean.values())}, str(p),
                  metadata={"prompts": json.dumps(list(clean))})
    else:
        torch.save(clean, p)
    return p


__all__ = ["TextEncoder", "UMT5TextEncoder", "PrecomputedTextEncoder", "save_precomputed", "clean_prompt",
           "t5_key_to_hf", "t5_key_to_wan", "umt5_config_from_wan"]
