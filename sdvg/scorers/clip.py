"""CLIP text-image similarity per frame, from a local transformers CLIP folder (e.g. openai/clip-vit-large-patch14)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdvg.scorers.base import check_frames
from sdvg.scorers.preprocess import CLIP_MEAN, CLIP_STD, reward_preprocess
from sdvg.text import PromptCache


class CLIPScorer:
    """score = 100 * cos(image embedding, text embedding), clamped at 0 (torchmetrics' CLIPScore convention;
    `clamp=False` keeps negative similarities, which gives a router a signal below zero too).

    Preprocessing follows CLIPImageProcessor on uint8 images (shortest edge -> `size` with Pillow bicubic, centre crop,
    rescale, normalise), done Pillow-exactly on tensors; the crop offset uses torchvision's rounding, which differs from
    the HF processor's floor by one pixel only when the excess is odd. Text features are cached per prompt.
    """

    def __init__(self, model, tokenizer, *, size: int, crop: int, mean=CLIP_MEAN, std=CLIP_STD,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, clamp: bool = True) -> None:
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(device=self.device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer, self.size, self.crop, self.mean, self.std, self.clamp = tokenizer, size, crop, mean, std, clamp
        self._text = PromptCache()

    @classmethod
    def from_pretrained(cls, local_dir: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, clamp: bool = True) -> "CLIPScorer":
        from transformers import AutoTokenizer, CLIPModel

        d = Path(local_dir)
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d} is not a transformers CLIP folder (config.json, weights, tokenizer files); "
                                    "download e.g. openai/clip-vit-large-patch14 there")
        model = CLIPModel.from_pretrained(str(d), local_files_only=True)
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        size = crop = model.config.vision_config.image_size
        mean, std = CLIP_MEAN, CLIP_STD
        pp = d / "preprocessor_config.json"
        if pp.is_file():
            c = json.loads(pp.read_text())
            s = c.get("size", size)
            size = s.get("shortest_edge", size) if isinstance(s, dict) else int(s)
            cs = c.get("crop_size", crop)
            crop = cs.get("height", crop) if isinstance(cs, dict) else int(cs)
            mean, std = tuple(c.get("image_mean", mean)), tuple(c.get("image_std", std))
        return cls(model, tok, size=size, crop=crop, mean=mean, std=std, device=device, dtype=dtype, clamp=clamp)

    def text_features(self, prompt: str) -> torch.Tensor:
        return self._text.get_or_compute(prompt, lambda: self._text_features(prompt))

    def _text_features(self, prompt: str) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        t = self.tokenizer([prompt], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        with torch.inference_mode():
            f = self.model.get_text_features(input_ids=t["input_ids"].to(self.device),
                                             attention_mask=t["attention_mask"].to(self.device))
        f = getattr(f, "pooler_output", f)  # transformers 5 may return an output object
        return torch.nn.functional.normalize(f.float(), dim=-1)

    @torch.inference_mode()
    def score(self, frames: torch.Tensor, prompt: str) -> torch.Tensor:
        check_frames(frames)
        x = reward_preprocess(frames.to(self.device), self.size, crop=self.crop, mean=self.mean, std=self.std)
        f = self.model.get_image_features(pixel_values=x.to(self.dtype))
        f = torch.nn.functional.normalize(getattr(f, "pooler_output", f).float(), dim=-1)
        s = 100.0 * (f @ self.text_features(prompt).t())[:, 0]
        return (s.clamp(min=0) if self.clamp else s).cpu()


__all__ = ["CLIPScorer"]
