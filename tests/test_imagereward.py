"""ImageReward: key layout vs the reference table, Pillow-exact preprocessing, loading, batching, dtypes, errors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdvg.scorers.imagereward import ImageRewardConfig, ImageRewardModel, ImageRewardScorer
from sdvg.scorers.preprocess import CLIP_MEAN, CLIP_STD, pil_resize, reward_preprocess, to_uint8_values

from _shared import needs_shared, shared_path

TABLE = shared_path("data", "checkpoint_keys", "imagereward_v1.tsv")
needs_table = needs_shared("data", "checkpoint_keys", "imagereward_v1.tsv")
WORDS = ["a", "red", "cat", "##s", "on", "the", "mat", ".", "dog", "blue"]
TINY = ImageRewardConfig(image_size=32, patch_size=16, vision_width=32, vision_layers=2, vision_heads=2,
                         vocab_size=6 + len(WORDS) + 2, hidden_size=16, text_layers=2, text_heads=2,
                         intermediate_size=32, max_position_embeddings=40, embed_dim=8)


def tiny_model(seed: int = 0) -> ImageRewardModel:
    torch.manual_seed(seed)
    m = ImageRewardModel(TINY)
    with torch.no_grad():
        for name, p in m.named_parameters():  # unit-scale activations: differences stay at round-off level
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name.lower() and name.endswith("weight") else 0))
    return m.eval()


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    """A folder laid out like the real download: ImageReward.pt, med_config.json, vocab.txt."""
    m = tiny_model()
    torch.save(m.state_dict(), tmp_path / "ImageReward.pt")
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS))
    med = dict(vocab_size=TINY.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, max_position_embeddings=40, layer_norm_eps=1e-12, hidden_act="gelu",
               pad_token_id=0, type_vocab_size=2, add_cross_attention=True, encoder_width=16)
    (tmp_path / "med_config.json").write_text(json.dumps(med))
    return tmp_path


def load(files: Path, **kw) -> ImageRewardScorer:
    return ImageRewardScorer.from_pretrained(files / "ImageReward.pt", config=TINY, **kw)


@needs_table
def test_full_size_layout_matches_reference_table():
    with torch.device("meta"):
        m = ImageRewardModel()
    rows = [tuple(l.rstrip("\n").split("\t")) for l in TABLE.read_text().splitlines() if l and not l.startswith("#")]
    got = [(k, "x".join(map(str, v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in m.state_dict().items()]
    assert got == rows  # names, shapes, dtypes and order
    assert len(got) == 625


@needs_table
def test_sizes_inferred_from_the_real_table():
    """The real checkpoint's shapes (as meta tensors) give the v1.0 config and pass the strict check."""
    from sdvg.scorers.imagereward import check_state

    sd = {}
    for line in TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, dtype = line.split("\t")
            sd[name] = torch.empty([int(d) for d in shape.split("x")], dtype=getattr(torch, dtype), device="meta")
    cfg = ImageRewardConfig().with_vision_from(sd)
    assert cfg == ImageRewardConfig()
    with torch.device("meta"):
        check_state(ImageRewardModel(cfg), sd)


def test_pillow_resize_is_bit_exact():
    g = torch.Generator().manual_seed(0)
    for (h, w), (oh, ow) in [((48, 83), (22, 38)), ((37, 53), (64, 91)), ((30, 20), (13, 9)), ((120, 208), (56, 97))]:
        u = to_uint8_values(torch.rand(2, 3, h, w, generator=g))
        ours = pil_resize(u, (oh, ow))
        for i in range(2):
            arr = u[i].permute(1, 2, 0).numpy().astype(np.uint8)
            ref = np.asarray(Image.fromarray(arr).resize((ow, oh), Image.BICUBIC))
            assert np.array_equal(ours[i].permute(1, 2, 0).numpy(), ref.astype(np.float64)), (h, w, oh, ow)


def reference_transform(frame: torch.Tensor, n_px: int) -> torch.Tensor:
    """ImageReward's Compose on a PIL image: Resize(n_px, BICUBIC) -> CenterCrop -> ToTensor -> Normalize."""
    arr = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    img = Image.fromarray(arr)
    w, h = img.size
    short, long = min(w, h), max(w, h)
    size = (n_px, int(n_px * long / short)) if w <= h else (int(n_px * long / short), n_px)
    img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - n_px) / 2.0)), int(round((w - n_px) / 2.0))
    img = img.crop((left, top, left + n_px, top + n_px))
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.mark.parametrize("hw", [(48, 83), (83, 48), (32, 32), (61, 40), (33, 65)])
def test_preprocess_matches_reference_compose(hw):
    frames = torch.rand(3, 3, *hw, generator=torch.Generator().manual_seed(1))
    ours = reward_preprocess(frames, 32)
    ref = torch.stack([reference_transform(f, 32) for f in frames])
    assert torch.equal(ours, ref)


def test_full_frame_keeps_whole_frame_and_pads_with_mean():
    frames = torch.rand(2, 3, 30, 52)
    x = reward_preprocess(frames, 32, full_frame=True)
    assert x.shape == (2, 3, 32, 32)
    rh = int(32 * 30 / 52)  # 18 rows of content, the rest is padding (0 after Normalize)
    top = (32 - rh) // 2
    assert torch.all(x[:, :, :top] == 0) and torch.all(x[:, :, top + rh:] == 0)
    assert x[:, :, top:top + rh].abs().sum() > 0


def naive_reward(m: ImageRewardModel, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A literal transcription of the reference forward (vit.py + med.py + ImageReward.score) for one image."""
    c, ve, te = m.cfg, m.blip.visual_encoder, m.blip.text_encoder
    x = ve.patch_embed.proj(image[None]).flatten(2).transpose(1, 2)
    x = torch.cat([ve.cls_token, x], 1) + ve.pos_embed
    for b in ve.blocks:
        h = b.norm1(x)
        qkv = b.attn.qkv(h).reshape(1, -1, 3, c.vision_heads, c.vision_width // c.vision_heads).permute(2, 0, 3, 1, 4)
        a = (qkv[0] @ qkv[1].transpose(-2, -1)) * (c.vision_width // c.vision_heads) ** -0.5
        x = x + b.attn.proj((a.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(1, -1, c.vision_width))
        x = x + b.mlp.fc2(torch.nn.functional.gelu(b.mlp.fc1(b.norm2(x))))
    img = ve.norm(x)

    def attn(mod, hs, kv, add_mask):
        d = c.hidden_size // c.text_heads
        split = lambda t: t.view(1, -1, c.text_heads, d).permute(0, 2, 1, 3)
        s = split(mod.self.query(hs)) @ split(mod.self.key(kv)).transpose(-1, -2) / math.sqrt(d)
        ctx = ((s + add_mask).softmax(-1) @ split(mod.self.value(kv))).permute(0, 2, 1, 3).reshape(1, -1, c.hidden_size)
        return mod.output.LayerNorm(mod.output.dense(ctx) + hs)

    e = te.embeddings
    h = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(torch.arange(ids.shape[1])[None]))
    ext = (1.0 - mask[:, None, None, :].float()) * -10000.0
    for layer in te.encoder.layer:
        h = attn(layer.attention, h, h, ext)
        h = attn(layer.crossattention, h, img, 0.0)
        h = layer.output.LayerNorm(layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(h))) + h)
    return (m.mlp.layers(h[:, 0, :]) - 0.16717362830052426) / 1.0333394966054072


def test_matches_literal_reference_forward(files):
    sc = load(files)
    frames = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(2))
    prompt = "A red cat on the mat."
    t = sc.tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert t["input_ids"][0, 0] == sc.tokenizer.cls_token_id  # [CLS] first, not BLIP's [ENC]
    assert t["input_ids"][0, 0] != sc.tokenizer.convert_tokens_to_ids("[ENC]")
    got = sc.score(frames, prompt)
    with torch.no_grad():
        ref = torch.cat([naive_reward(sc.model, reference_transform(f, 32), t["input_ids"], t["attention_mask"])
                         for f in frames])[:, 0]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_batch_equals_one_by_one_and_is_deterministic(files):
    sc = load(files)
    frames = torch.rand(5, 3, 36, 64, generator=torch.Generator().manual_seed(3))
    batched = sc.score(frames, "a blue dog")
    single = torch.cat([sc.score(f[None], "a blue dog") for f in frames])
    assert batched.dtype == torch.float32 and batched.shape == (5,) and batched.device.type == "cpu"
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)
    assert torch.equal(batched, sc.score(frames, "a blue dog"))
    assert not torch.equal(batched, sc.score(frames, "a red cat"))
    assert load(files, max_batch=2).score(frames, "a blue dog").allclose(batched, atol=1e-6)


def test_prompt_encoding_cached(files):
    sc = load(files)
    a = sc.encode_prompt("the mat")
    assert sc.encode_prompt("the mat") is a and len(sc._text) == 1


def test_bf16_runs_close_to_fp32(files):
    frames = torch.rand(4, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    ref = load(files).score(frames, "a cat")
    bf = load(files, dtype=torch.bfloat16)
    assert next(bf.model.blip.parameters()).dtype == torch.bfloat16
    out = bf.score(frames, "a cat")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.1


def test_loads_from_folder_with_defaults(files):
    """Folder path: med_config.json and vocab.txt are found next to the checkpoint; ViT sizes from the shapes."""
    cfg = ImageRewardConfig.from_med_config(files / "med_config.json").with_vision_from(
        torch.load(files / "ImageReward.pt"), vision_heads=2)
    assert cfg == TINY
    sc = ImageRewardScorer.from_pretrained(files)  # heads inferred as max(1, 32 // 64) = 1: loads, runs
    assert sc.model.cfg.vision_heads == 1 and sc.score(torch.rand(1, 3, 32, 32), "a").shape == (1,)
    exact = ImageRewardScorer.from_pretrained(files, config=TINY)
    given = ImageRewardScorer.from_pretrained(files, vision_heads=2)  # the flag --scorer-heads
    assert given.model.cfg.vision_heads == 2
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(given.score(x, "a red circle"), exact.score(x, "a red circle"), atol=0, rtol=0)


def test_inspect_says_the_vit_heads_are_guessed(files, capsys):
    from sdvg.cli import main

    assert main(["inspect", str(files / "ImageReward.pt")]) == 0
    out = capsys.readouterr().out
    assert "guessed:   vision_heads=1 (ViT width 32 // 64" in out and "--scorer-heads" in out
    assert main(["inspect", str(files / "ImageReward.pt"), "--scorer-heads", "2"]) == 0
    assert "guessed" not in capsys.readouterr().out


def test_position_ids_may_be_absent(files):
    sd = torch.load(files / "ImageReward.pt")
    del sd["blip.text_encoder.embeddings.position_ids"]
    torch.save(sd, files / "ImageReward.pt")
    sc = load(files)
    assert torch.equal(sc.model.blip.text_encoder.embeddings.position_ids[0], torch.arange(40))


def test_errors_name_the_files(files, tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageReward.pt"):
        ImageRewardScorer.from_pretrained(files / "nope.pt", config=TINY)
    with pytest.raises(FileNotFoundError, match="med_config"):
        load(files, med_config=files / "missing.json")
    (files / "vocab.txt").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load(files)


@pytest.mark.parametrize("edit", ["missing", "shape", "unexpected"])
def test_strict_keys(files, edit):
    sd = torch.load(files / "ImageReward.pt")
    if edit == "missing":
        del sd["mlp.layers.7.bias"]
    elif edit == "shape":
        sd["blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"] = torch.zeros(16, 16)
    else:
        sd["module.extra"] = torch.zeros(1)
    torch.save(sd, files / "ImageReward.pt")
    with pytest.raises(ValueError, match={"missing": "mlp.layers.7.bias", "shape": "crossattention.self.key",
                                        "unexpected": "module.extra"}[edit]):
        load(files)


def test_safetensors_copy_loads_the_same(files):
    from safetensors.torch import save_file

    sd = torch.load(files / "ImageReward.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, files / "ImageReward.safetensors")
    frames = torch.rand(2, 3, 32, 32)
    a = load(files).score(frames, "a cat")
    b = ImageRewardScorer.from_pretrained(files / "ImageReward.safetensors", config=TINY).score(frames, "a cat")
    assert torch.allclose(a, b, atol=1e-6)  # same weights; thread count may differ between loads
