"""Weight-free scorers, aggregation, the factory, and CLIP on a tiny random CLIP saved to disk."""
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

from sdvg.scorers import (FlickerScorer, Scorer, SharpnessScorer, aggregate, build_scorer, register_scorer,
                          scorer_names)


def test_sharpness_orders_sharp_over_blurry():
    g = torch.Generator().manual_seed(0)
    sharp = torch.rand(1, 3, 32, 32, generator=g)
    blurry = torch.nn.functional.avg_pool2d(sharp, 5, stride=1, padding=2)
    flat = torch.full((1, 3, 32, 32), 0.5)
    s = SharpnessScorer().score(torch.cat([sharp, blurry, flat]), "any")
    assert s.shape == (3,) and s.dtype == torch.float32
    assert s[0] > s[1] > s[2] and s[2] == 0
    assert abs(float(s[0]) - 0.74) < 0.15  # uniform noise: 20 * var(luma)
    assert isinstance(SharpnessScorer(), Scorer)


def test_flicker_stateless_and_carry():
    f = torch.zeros(3, 3, 8, 8)
    f[1] += 0.5  # a jump into frame 1 and out of it into frame 2
    s = FlickerScorer().score(f, "")
    torch.testing.assert_close(s, torch.tensor([0.0, -0.5, -0.5]))
    sc = FlickerScorer(carry=True)
    sc.score(f, "")
    nxt = torch.full((2, 3, 8, 8), 0.25)
    torch.testing.assert_close(sc.score(nxt, ""), torch.tensor([-0.25, 0.0]))  # vs the previous call's last frame
    sc.reset()
    torch.testing.assert_close(sc.score(nxt, ""), torch.tensor([0.0, 0.0]))
    sc.remember(torch.ones(1, 3, 8, 8))
    torch.testing.assert_close(sc.score(nxt, ""), torch.tensor([-0.75, 0.0]))
    with pytest.raises(ValueError, match="reset"):
        sc.score(torch.zeros(1, 3, 4, 4), "")


def test_aggregate():
    s = torch.tensor([3.0, -1.0, 2.0, 0.0])
    assert aggregate(s, "min") == -1.0 and aggregate(s, "mean") == 1.0
    assert aggregate(s, "quantile", 0.0) == -1.0 and aggregate(s, "quantile", 1.0) == 3.0
    assert float(aggregate(s, "quantile", 0.5)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="min"):
        aggregate(s, "max")
    with pytest.raises(ValueError):
        aggregate(torch.zeros(0))


def test_factory_names_and_errors():
    assert {"imagereward", "clip", "sharpness", "flicker"} <= set(scorer_names())
    assert isinstance(build_scorer("sharpness"), SharpnessScorer)
    assert build_scorer("flicker", carry=True).carry
    with pytest.raises(ValueError, match="choose one of.*imagereward"):
        build_scorer("nope")
    with pytest.raises(ValueError, match="ImageReward.pt"):
        build_scorer("imagereward", path=None)
    with pytest.raises(FileNotFoundError, match="ImageReward.pt"):
        build_scorer("imagereward", path="/nonexistent/ImageReward.pt")
    register_scorer("const", lambda **_: SharpnessScorer())
    assert "const" in scorer_names()


@pytest.fixture()
def clip_dir(tmp_path: Path) -> Path:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=16),
                     projection_dim=8)
    CLIPModel(cfg).save_pretrained(tmp_path)
    chars = string.ascii_lowercase + ".,!"
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(str(tmp_path)).save_pretrained(tmp_path)
    return tmp_path


def test_clip_scorer(clip_dir):
    from sdvg.scorers.clip import CLIPScorer
    from sdvg.scorers.preprocess import reward_preprocess

    sc = build_scorer("clip", path=str(clip_dir))
    frames = torch.rand(4, 3, 40, 60, generator=torch.Generator().manual_seed(1))
    s = sc.score(frames, "a red cat")
    assert s.shape == (4,) and s.dtype == torch.float32 and (s >= 0).all() and (s <= 100).all()
    single = torch.cat([sc.score(f[None], "a red cat") for f in frames])
    torch.testing.assert_close(s, single, rtol=1e-5, atol=1e-5)
    raw = CLIPScorer.from_pretrained(clip_dir, clamp=False).score(frames, "a red cat")
    torch.testing.assert_close(raw.clamp(min=0), s)
    # by hand: cosine of the projected features, x100
    m, tok = sc.model, sc.tokenizer
    with torch.no_grad():
        t = tok(["a red cat"], return_tensors="pt")
        tf = m.get_text_features(**t)
        imf = m.get_image_features(pixel_values=reward_preprocess(frames, 32))
        tf, imf = (getattr(x, "pooler_output", x) for x in (tf, imf))
        ref = 100 * torch.nn.functional.cosine_similarity(imf, tf, dim=-1)
    torch.testing.assert_close(raw, ref, rtol=1e-4, atol=1e-4)
    assert len(sc._text) == 1


def test_clip_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="CLIP"):
        build_scorer("clip", path=str(tmp_path))
