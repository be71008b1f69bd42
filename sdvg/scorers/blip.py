"""ImageReward v1.0 network (BLIP ViT + med BERT + reward head) with the reference's exact state_dict names.

Mirrors THUDM/ImageReward `ImageReward/models/BLIP/{vit,med,blip_pretrain}.py` and `ImageReward.py` (maths only).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
HEAD_SIZES = (1024, 128, 64, 16, 1)  # mlp.layers.{0,2,4,6,7}; 1,3,5 are the reference's dropouts
FILES_HELP = ("ImageReward needs local files: `ImageReward.pt` (huggingface.co/THUDM/ImageReward), `med_config.json` "
              "(same repo; optional, the v1.0 values are built in) and a bert-base-uncased tokenizer folder holding "
              "`vocab.txt` (huggingface.co/bert-base-uncased). Put them in one folder, or pass --med-config / "
              "--tokenizer-dir.")


@dataclass(frozen=True)
class ImageRewardConfig:
    """BLIP ViT + med BERT sizes. Defaults are ImageReward v1.0 (ViT-L/16 @ 224, BERT-base with cross-attention)."""

    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vision_mlp_ratio: float = 4.0
    vocab_size: int = 30524
    hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    embed_dim: int = 256  # BLIP's vision_proj/text_proj: in the checkpoint, unused by the reward
    max_length: int = 35  # the reference tokenises with padding='max_length', max_length=35

    @classmethod
    def from_med_config(cls, path: str | Path, **overrides) -> "ImageRewardConfig":
        """Text sizes from BLIP's `med_config.json` (its `encoder_width` is ignored: BLIP sets it to the ViT width)."""
        c = json.loads(Path(path).read_text())
        if c.get("hidden_act", "gelu") != "gelu" or c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only hidden_act='gelu' and absolute position embeddings are supported")
        if not c.get("add_cross_attention", True):
            raise ValueError(f"{path}: ImageReward needs add_cross_attention=true")
        return cls(vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], text_layers=c["num_hidden_layers"],
                   text_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                   max_position_embeddings=c["max_position_embeddings"], layer_norm_eps=c["layer_norm_eps"],
                   pad_token_id=c.get("pad_token_id", 0), **overrides)

    def with_vision_from(self, sd: dict[str, torch.Tensor], vision_heads: int | None = None) -> "ImageRewardConfig":
        """ViT sizes read off a checkpoint's shapes (heads are not in the shapes: width // 64 unless given)."""
        try:
            w = sd["blip.visual_encoder.patch_embed.proj.weight"]
            n_tok = sd["blip.visual_encoder.pos_embed"].shape[1]
            hidden = sd["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
        except KeyError as e:
            raise ValueError(f"checkpoint lacks {e.args[0]!r}; is it an ImageReward state_dict? {FILES_HELP}") from None
        layers = len({k.split(".")[3] for k in sd if k.startswith("blip.visual_encoder.blocks.")})
        width, patch = w.shape[0], w.shape[-1]
        heads = vision_heads or max(1, width // 64)
        return replace(self, vision_width=width, patch_size=patch, vision_layers=layers, vision_heads=heads,
                       image_size=patch * math.isqrt(n_tok - 1), vision_mlp_ratio=hidden / width,
                       embed_dim=sd.get("blip.vision_proj.weight", torch.empty(self.embed_dim, 0)).shape[0])


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None):
    """Multi-head softmax(q k^T / sqrt(d) + mask) v over [B, L, heads*d] tensors."""
    b, lq, c = q.shape
    d = c // heads
    q, k, v = (t.view(b, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.transpose(1, 2).reshape(b, lq, c)


# ---- BLIP ViT (timm VisionTransformer naming) ----------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VitAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(_attention(q, k, v, self.heads))


class VitMlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = VitAttention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = VitMlp(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        n = (c.image_size // c.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.vision_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, c.vision_width))
        self.patch_embed = PatchEmbed(c.patch_size, c.vision_width)
        hidden = int(c.vision_width * c.vision_mlp_ratio)
        self.blocks = nn.ModuleList(VitBlock(c.vision_width, c.vision_heads, hidden) for _ in range(c.vision_layers))
        self.norm = nn.LayerNorm(c.vision_width, eps=1e-6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed[:, : x.shape[1] + 1]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# ---- BLIP med BERT (names as med.py) -------------------------------------------------------------------------------
class BertEmbeddings(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.register_buffer("position_ids", torch.arange(c.max_position_embeddings).expand(1, -1))
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertSelfAttention(nn.Module):
    def __init__(self, c: ImageRewardConfig, kv_width: int) -> None:
        super().__init__()
        self.heads = c.text_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(kv_width, c.hidden_size)
        self.value = nn.Linear(kv_width, c.hidden_size)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return _attention(self.query(x), self.key(kv), self.value(kv), self.heads, mask)


class DenseNorm(nn.Module):
    """BertSelfOutput / BertOutput: LayerNorm(dense(h) + residual)."""

    def __init__(self, n_in: int, c: ImageRewardConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, c: ImageRewardConfig, kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(c, kv_width)
        self.output = DenseNorm(c.hidden_size, c)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, kv, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.attention = BertAttention(c, c.hidden_size)
        self.crossattention = BertAttention(c, c.vision_width)  # BLIP sets encoder_width = vision width
        self.intermediate = BertIntermediate(c)
        self.output = DenseNorm(c.intermediate_size, c)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, self_mask)
        x = self.crossattention(x, image, None)  # image attention mask is all ones: no mask
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(c) for _ in range(c.text_layers))


class BertModel(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(c)
        self.encoder = BertEncoder(c)

    def forward(self, emb: torch.Tensor, attention_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """emb: embeddings output [B, L, H]; attention_mask [B, L] of 0/1 -> last hidden state [B, L, H]."""
        mask = ((1.0 - attention_mask.to(emb.dtype)) * -10000.0)[:, None, None, :]  # med.py's extended mask
        x = emb
        for layer in self.encoder.layer:
            x = layer(x, mask, image)
        return x


class BLIP(nn.Module):
    def __init__(self, c: ImageRewardConfig) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(c)
        self.text_encoder = BertModel(c)
        self.vision_proj = nn.Linear(c.vision_width, c.embed_dim)
        self.text_proj = nn.Linear(c.hidden_size, c.embed_dim)


class RewardHead(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        sizes = (width,) + HEAD_SIZES
        lin = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.layers = nn.Sequential(lin[0], nn.Identity(), lin[1], nn.Identity(), lin[2], nn.Identity(), lin[3], lin[4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ImageRewardModel(nn.Module):
    """`blip.*` + `mlp.*`: the exact state_dict layout of the reference `ImageReward` module."""

    def __init__(self, cfg: ImageRewardConfig = ImageRewardConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.blip = BLIP(cfg)
        self.mlp = RewardHead(cfg.hidden_size)

    def forward(self, images: torch.Tensor, text_emb: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """images [B,3,S,S] (normalised, model dtype); text_emb [1|B, L, H]; -> rewards [B] float32, standardised."""
        image = self.blip.visual_encoder(images)
        b = image.shape[0]
        h = self.blip.text_encoder(text_emb.expand(b, -1, -1), attention_mask.expand(b, -1), image)
        r = self.mlp(h[:, 0, :].float())  # the head runs in float32 (the reference casts the features with .float())
        return ((r - REWARD_MEAN) / REWARD_STD)[:, 0]


__all__ = ["ImageRewardConfig", "ImageRewardModel", "REWARD_MEAN", "REWARD_STD", "FILES_HELP"]
