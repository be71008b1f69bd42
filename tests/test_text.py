"""Text encoders on a tiny random umT5 with an offline word-level tokenizer."""
from __future__ import annotations

import pytest
import torch

from sdvg.text import (PrecomputedTextEncoder, TextEncoder, UMT5TextEncoder, clean_prompt, save_precomputed,
                       t5_key_to_wan)

WORDS = "a red blue green circle square moves left right slowly quickly on the grass".split()
TEXT_LEN = 8


@pytest.fixture(scope="module")
def umt5_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    d = tmp_path_factory.mktemp("umt5")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>") \
        .save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(vocab), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                     relative_attention_num_buckets=8, relative_attention_max_distance=16,
                     feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", dropout_rate=0.0)
    UMT5EncoderModel(cfg).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def enc(umt5_dir):
    return UMT5TextEncoder.from_pretrained(umt5_dir, dtype=torch.float32, text_len=TEXT_LEN)


def test_padding_zeroed_and_reference_maths(enc):
    prompts = ["a red circle", "a blue square moves left"]
    out = enc.encode(prompts)
    assert isinstance(enc, TextEncoder) and out.shape == (2, TEXT_LEN, 16) and out.dtype == torch.float32
    for row, n in zip(out, (3 + 1, 5 + 1)):  # words + </s>
        assert row[:n].abs().sum(-1).gt(0).all() and row[n:].eq(0).all()
    # the reference: encoder(ids, mask) then u[v:] = 0 with v = number of real tokens
    t = enc.tokenizer(prompts, padding="max_length", truncation=True, max_length=TEXT_LEN, return_tensors="pt")
    ref = enc.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state.clone()
    for u, v in zip(ref, t["attention_mask"].gt(0).sum(1)):
        u[v:] = 0.0
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


def test_truncation_cleaning_determinism_and_cache(enc):
    long = " ".join(WORDS)
    out = enc.encode([long])
    assert out.shape == (1, TEXT_LEN, 16) and out[0].abs().sum(-1).gt(0).all()
    assert torch.equal(enc.encode(["  a red\n circle "]), enc.encode(["a red circle"]))
    assert clean_prompt("a &amp;amp; b\t c ") == "a & b c"
    single = enc.encode(["green square"])
    batched = enc.encode(["a red circle", "green square"])
    fresh = UMT5TextEncoder(enc.model, enc.tokenizer, text_len=TEXT_LEN)
    torch.testing.assert_close(fresh.encode(["a red circle", "green square"]), batched, atol=1e-6, rtol=0)
    assert torch.equal(batched[1], single[0])
    calls = []
    h = enc.model.register_forward_hook(lambda *a: calls.append(1))
    enc.encode(["a red circle", "a red circle"])  # cached: no forward
    h.remove()
    assert calls == []


def test_wan_t5_checkpoint_layout(tmp_path, umt5_dir, enc):
    """Wan's models_t5_umt5-xxl-enc-bf16.pth naming loads into the same encoder."""
    import shutil

    sd = {t5_key_to_wan(k): v for k, v in enc.model.state_dict().items() if t5_key_to_wan(k)}
    assert "blocks.0.ffn.gate.0.weight" in sd and "token_embedding.weight" in sd and len(sd) == 1 + 1 + 10 * 2
    torch.save(sd, tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    (tmp_path / "google").mkdir()
    shutil.copytree(umt5_dir, tmp_path / "google" / "umt5-xxl")
    wan = UMT5TextEncoder.from_pretrained(tmp_path, dtype=torch.float32, text_len=TEXT_LEN)
    torch.testing.assert_close(wan.encode(["a red circle"]), enc.encode(["a red circle"]), atol=1e-6, rtol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        UMT5TextEncoder.from_pretrained(tmp_path / "nope")
    with pytest.raises(ValueError, match="no umT5 text encoder"):
        UMT5TextEncoder.from_pretrained(tmp_path)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_precomputed(tmp_path, enc, suffix):
    prompts = ["a red circle", "a blue square moves left"]
    path = save_precomputed(dict(zip(prompts, enc.encode(prompts))), tmp_path / f"emb{suffix}")
    pre = PrecomputedTextEncoder(path, text_len=TEXT_LEN)
    assert pre.prompts == prompts
    torch.testing.assert_close(pre.encode(prompts[::-1]), enc.encode(prompts[::-1]), atol=0, rtol=0)
    torch.testing.assert_close(pre.encode(["a  red circle "]), enc.encode(["a red circle"]), atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"prompt 'a green circle' is not in .*emb"):
        pre.encode(["a green circle"])
    with pytest.raises(FileNotFoundError):
        PrecomputedTextEncoder(tmp_path / "missing.pt")


def test_prompt_cache_is_bounded_lru():
    from sdvg.text import PromptCache

    c, calls = PromptCache(size=2), []
    get = lambda p: c.get_or_compute(p, lambda: calls.append(p) or p.upper())  # noqa: E731
    assert [get("a"), get("b"), get("a"), get("c")] == ["A", "B", "A", "C"]  # "b" is now least recently used
    assert get("a") == "A" and get("b") == "B" and calls == ["a", "b", "c", "b"]


def test_prompt_cache_batches_the_missing_once_even_beyond_its_size():
    from sdvg.text import PromptCache

    c, batches = PromptCache(size=2), []
    run = lambda ps: batches.append(list(ps)) or [p.upper() for p in ps]  # noqa: E731
    assert c.get_or_compute_many(["a", "b", "a", "c"], run) == ["A", "B", "A", "C"]  # 3 distinct > size 2
    assert batches == [["a", "b", "c"]] and len(c) == 2
    assert c.get_or_compute_many(["c", "d"], run) == ["C", "D"] and batches[-1] == ["d"]
