"""ImageReward v1.0 in plain PyTorch: loads the official `ImageReward.pt` with its own key names.

The maths follows THUDM/ImageReward (`ImageReward.score`): a BLIP ViT-L/16 image encoder (timm-style pre-norm blocks,
LayerNorm eps 1e-6, exact GELU) feeds every layer of a BLIP "med" BERT through cross-attention (no token-type
embeddings, no pooler, self-attention padding mask additive -10000 as in med.py); the hidden state of the *first
token* -- the tokenizer's [CLS], not BLIP's [ENC] -- goes through a 5-layer linear head (no activations; its dropouts
are identity at inference) and is standardised with the reference's mean/std.

Differences from the PyPI package, all for speed and portability: frames are scored as one batch under
`inference_mode`; preprocessing runs on tensors on the scorer's device but is Pillow-exact (`preprocess.py`);
the prompt's tokens and embedding output are cached; weights load from local files only (mmap, weights_only).
"""
from __future__ import annotations

from pathlib import Path

import torch

from sdvg.scorers.blip import FILES_HELP, REWARD_MEAN, REWARD_STD, ImageRewardConfig, ImageRewardModel
from sdvg.scorers.preprocess import reward_preprocess
from sdvg.text import PromptCache

# ---- loading --------------------------------------------------------------------------------------------------------
def load_tokenizer(path: str | Path):
    """bert-base-uncased WordPiece from a local folder (or its `vocab.txt`), plus BLIP's two added tokens.

    BLIP's `init_tokenizer` adds `[DEC]` (bos) then `[ENC]`, which is why the vocabulary is 30522 + 2 = 30524; they
    only matter if a prompt contains them literally. ImageReward feeds the tokenizer's own [CLS] first, not [ENC].
    """
    from transformers import BertTokenizer

    p = Path(path)
    folder = p.parent if p.is_file() else p
    if not (folder / "vocab.txt").is_file() and not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no vocab.txt or tokenizer.json in {folder}. {FILES_HELP}")
    tok = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat `blip.*`/`mlp.*` state_dict from `ImageReward.pt` (torch.load, mmap, weights_only) or a .safetensors."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ImageReward checkpoint {p} not found. {FILES_HELP}")
    from sdvg.checkpoints import load_torch_file, safetensors_header

    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        safetensors_header(p)  # empty or truncated: one clear line
        return load_file(str(p))
    sd = load_torch_file(p, "ImageReward checkpoint")
    if not isinstance(sd, dict):
        raise ValueError(f"{p} does not hold a state_dict (got {type(sd).__name__})")
    return sd


def check_state(model: ImageRewardModel, sd: dict[str, torch.Tensor], path: str | Path = "ImageReward") -> None:
    """Strict key/shape check (`sdvg.tensorfiles.check_keys`); only `position_ids`, a plain arange, may be absent."""
    from sdvg.tensorfiles import check_keys

    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    optional = "blip.text_encoder.embeddings.position_ids"
    if optional not in sd:
        want.pop(optional, None)
    check_keys(path, want, {k: tuple(v.shape) for k, v in sd.items()},
               hint=f"Expected ImageReward v1.0 (blip.* + mlp.*). {FILES_HELP}")


def _find(base: Path, names: list[str]) -> Path | None:
    return next((base / n for n in names if (base / n).exists()), None)


class ImageRewardScorer:
    """Per-frame ImageReward (higher is better), batched: a block of frames is one forward pass.

    `full_frame=True` letterboxes the whole frame instead of the reference's centre crop (see `reward_preprocess`).
    `max_batch` bounds the frames per forward (None: all at once).
    """

    def __init__(self, model: ImageRewardModel, tokenizer, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, full_frame: bool = False, max_batch: int | None = None) -> None:
        self.device, self.dtype = torch.device(device), dtype
        model.blip.to(device=self.device, dtype=dtype)
        model.mlp.to(device=self.device, dtype=torch.float32)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.full_frame, self.max_batch = tokenizer, full_frame, max_batch
        self._text = PromptCache()

    @classmethod
    def from_pretrained(cls, ckpt_path: str | Path, med_config: str | Path | None = None,
                        tokenizer_dir: str | Path | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, full_frame: bool = False,
                        config: ImageRewardConfig | None = None, vision_heads: int | None = None,
                        **kw) -> "ImageRewardScorer":
        """Load local files. `ckpt_path` is `ImageReward.pt` or the folder holding it; `med_config` and
        `tokenizer_dir` default to `med_config.json` and a folder with `vocab.txt` next to it (the folder itself, or
        `bert-base-uncased/` / `tokenizer/` inside it). `config` overrides the sizes inferred from the files;
        `vision_heads` the ViT's attention heads, which the weights do not hold (guessed: width // 64)."""
        p = Path(ckpt_path)
        if p.is_dir():
            p = _find(p, ["ImageReward.pt", "ImageReward.safetensors"]) or p / "ImageReward.pt"
        base = p.parent
        sd = load_state(p)
        if med_config is not None and not Path(med_config).is_file():
            raise FileNotFoundError(f"med_config {med_config} not found. {FILES_HELP}")
        med = Path(med_config) if med_config is not None else _find(base, ["med_config.json"])
        if tokenizer_dir is None:
            tokenizer_dir = next((d for d in (base, base / "bert-base-uncased", base / "tokenizer")
                                  if (d / "vocab.txt").is_file() or (d / "tokenizer.json").is_file()), None)
            if tokenizer_dir is None:
                raise FileNotFoundError(f"no tokenizer (vocab.txt) next to {p}. {FILES_HELP}")
        if config is None:
            config = ImageRewardConfig.from_med_config(med) if med is not None else ImageRewardConfig()
            config = config.with_vision_from(sd, vision_heads)
        with torch.device("meta"):
            model = ImageRewardModel(config)
        check_state(model, sd, p)
        model.load_state_dict(sd, strict=False, assign=True)
        emb = model.blip.text_encoder.embeddings
        emb.position_ids = torch.arange(config.max_position_embeddings)[None]
        return cls(model, load_tokenizer(tokenizer_dir), device=device, dtype=dtype, full_frame=full_frame, **kw)

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings output [1, 35, H] in the model dtype, attention mask [1, 35]); cached per prompt."""
        return self._text.get_or_compute(prompt, lambda: self._encode_prompt(prompt))

    def _encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.tokenizer(prompt, padding="max_length", truncation=True, max_length=self.model.cfg.max_length,
                           return_tensors="pt")
        ids, mask = t["input_ids"].to(self.device), t["attention_mask"].to(self.device)
        if int(ids.max()) >= self.model.cfg.vocab_size:
            raise ValueError(f"token id {int(ids.max())} >= vocab_size {self.model.cfg.vocab_size}: "
                             "tokenizer and checkpoint do not match")
        with torch.inference_mode():
            return self.model.blip.text_encoder.embeddings(ids), mask

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        """frames [F,3,H,W] in [0,1] (any device) -> rewards [F] float32 on CPU."""
        emb, mask = self.encode_prompt(prompt)
        n = frames.shape[0]
        step = self.max_batch or max(n, 1)
        out = []
        for i in range(0, n, step):
            x = reward_preprocess(frames[i:i + step].to(self.device), self.model.cfg.image_size, self.full_frame)
            out.append(self.model(x.to(self.dtype), emb, mask).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


__all__ = ["ImageRewardConfig", "ImageRewardModel", "ImageRewardScorer", "load_tokenizer", "load_state",
           "check_state", "REWARD_MEAN", "REWARD_STD", "FILES_HELP"]
