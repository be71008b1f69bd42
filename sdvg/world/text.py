"""The world's text encoder: a small transformers UMT5 encoder with a word-level tokenizer of the grammar.

Same shape of interface as the real UMT5 path (a transformers folder loaded from a local directory; `encode` returns
[B, text_len, dim] with padding positions zeroed, as Wan feeds UMT5 to its DiT), but 64 wide and 32 tokens long.
Prompts are checked against the grammar first, so a word outside the vocabulary fails with the vocabulary listed.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sdvg.text import PromptCache
from sdvg.world.grammar import VOCABULARY, parse, tokenize

TEXT_LEN = 32
SPECIALS = ("<pad>", "</s>", "<unk>")


def build_tokenizer():
    """Word-level fast tokenizer over the grammar's vocabulary (built offline, no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + VOCABULARY)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=TEXT_LEN)


def build_encoder(d_model: int = 64, layers: int = 2, heads: int = 4):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=len(SPECIALS) + len(VOCABULARY), d_model=d_model, d_kv=d_model // heads,
                     d_ff=2 * d_model, num_layers=layers, num_heads=heads, relative_attention_num_buckets=16,
                     relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(cfg)


ROLES = ("other", "colour 1", "colour 2", "turns 1", "turns 2", "background", "shape 1", "shape 2",
         "size 1", "size 2", "motion 1", "motion 2", "article 1", "article 2", "joiner")


def token_roles(prompts: list[str], text_len: int = TEXT_LEN) -> torch.Tensor:
    """[B, text_len] role of each token (an index into ROLES; -100 on padding and </s>): which object (1 or 2) each
    word describes and as what (its article, size, colour, shape, motion or colour change), the "and" that joins two
    objects, the background's colour. A training target for the text encoder (`sdvg.world.train`): UMT5 has relative
    positions only, and trained on the video loss alone the world's encoder barely marked whose word is whose
    (`benchmarks/world_text_binding.py`: 66-85%), so the target painted two objects as one blob of both colours."""
    from sdvg.world.grammar import COLOURS, SHAPES, SIZES

    out = torch.full((len(prompts), text_len), -100, dtype=torch.long)
    for i, p in enumerate(prompts):
        words = tokenize(p)[:text_len - 1]
        k, field, background = 0, None, False  # object so far, the field expected next, inside "on a .. background"
        for j, w in enumerate(words):
            nxt, prev = (words[j + 1] if j + 1 < len(words) else None), (words[j - 1] if j else None)
            if background or w == "on":
                background = True
                role = "background" if w in COLOURS else "other"
            elif w == "and" and nxt in ("a", "an"):  # not "bouncing up and down"
                role = "joiner"
            elif w in ("a", "an") and prev in (None, "and"):  # not "moving in a circle"
                k, field, role = k + 1, "size", f"article {k + 1}"
            elif field == "size" and w in SIZES:
                field, role = "colour", f"size {k}"
            elif field in ("size", "colour") and w in COLOURS:
                field, role = "shape", f"colour {k}"
            elif field == "shape" and w in SHAPES:
                field, role = "motion", f"shape {k}"
            elif w in COLOURS and prev == "turns":
                role = f"turns {k}"
            else:
                role = f"motion {k}" if k else "other"
            out[i, j] = ROLES.index(role)
    return out


def encode_with(model, tokenizer, prompts: list[str], text_len: int = TEXT_LEN) -> torch.Tensor:
    """Differentiable encode (used in training too): [B, text_len, d], padding positions zeroed."""
    for p in prompts:
        parse(p)  # raises PromptError listing the vocabulary
    norm = [" ".join(tokenize(p)) for p in prompts]
    batch = tokenizer(norm, padding="max_length", max_length=text_len, truncation=True, return_tensors="pt")
    dev = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return out * mask.unsqueeze(-1).to(out.dtype)


class WorldTextEncoder:
    """`encode(prompts) -> [B, text_len, text_dim]`; embeddings are cached per prompt (the encoder is frozen)."""

    def __init__(self, model, tokenizer, text_len: int = TEXT_LEN, dtype: torch.dtype = torch.float32) -> None:
        self.model, self.tokenizer, self.text_len, self.dtype = model.eval(), tokenizer, text_len, dtype
        self.text_dim = model.config.d_model
        self._cache = PromptCache()

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> WorldTextEncoder:
        from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

        model = UMT5EncoderModel.from_pretrained(str(path)).to(device)
        tok = PreTrainedTokenizerFast.from_pretrained(str(path))
        return cls(model, tok, dtype=dtype)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        batch = lambda ps: encode_with(self.model, self.tokenizer, ps, self.text_len)  # noqa: E731
        return torch.stack(self._cache.get_or_compute_many(prompts, batch)).to(self.dtype)
