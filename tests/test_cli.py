"""`sdvg generate` end to end on tiny random models: mp4 + JSON written, errors clear, nothing half-written."""
import json

import pytest

from sdvg.cli import main
from sdvg.io import video_stem


def test_generate_writes_mp4_and_trace(tmp_path, capsys):
    rc = main(["generate", "a red circle", "--models", "tiny", "--out", str(tmp_path), "--tau", "0.001",
               "--no-progress"])
    assert rc == 0
    stem = video_stem("a red circle", "seed0")
    assert (tmp_path / f"{stem}.mp4").stat().st_size > 0
    trace = json.loads((tmp_path / f"{stem}.json").read_text())
    assert trace["video"] == f"{stem}.mp4" and trace["prompt"] == "a red circle"
    assert trace["mode"] == "sdvg" and trace["tau"] == 0.001 and len(trace["blocks"]) == 3
    assert "quality" in trace
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_generate_prompt_file_modes_and_config(tmp_path):
    pf = tmp_path / "p.txt"
    pf.write_text("a red circle\na blue square\n")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"mode": "target", "models": "tiny", "no_progress": True}))
    assert main(["generate", "--prompts-file", str(pf), "--config", str(cfg), "--out", str(tmp_path / "o")]) == 0
    names = [f"{video_stem(p, f'p{i}', 'seed0')}.json" for i, p in enumerate(["a red circle", "a blue square"])]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.json")) == sorted(names)
    assert json.loads((tmp_path / "o" / names[0]).read_text())["mode"] == "target"


@pytest.mark.parametrize("argv, msg", [
    (["generate", "", "--models", "tiny"], "empty prompt"),
    (["generate", "x", "--models", "tiny", "--tau", "abc"], "tau must be a number"),
    (["generate", "x", "--models", "tiny", "--mode", "fast"], "invalid choice"),
])
def test_generate_argument_errors(argv, msg, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2 and msg in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_generate_runtime_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["generate", "--prompts-file", str(empty), "--models", "tiny", "--out", str(tmp_path)]) == 2
    assert "no prompts" in capsys.readouterr().err
    assert main(["generate", "x", "--target", str(tmp_path / "missing.pt"), "--vae", str(tmp_path),
                 "--text-encoder", str(tmp_path)]) == 2


def test_help_lists_commands(capsys):
    assert main([]) == 0
    assert "generate" in capsys.readouterr().out


def test_generate_from_real_format_checkpoints(tmp_path, capsys):
    """The checkpoint path end to end: Self-Forcing .pt drafter, Krea .safetensors target, Wan2.1_VAE.pth,
    precomputed text embeddings, `sdvg inspect`, then `sdvg generate` with them."""
    from sdvg.checkpoints import save_dit
    from sdvg.loading import load_tiny_models
    from sdvg.text import save_precomputed
    from sdvg.vae import save_wan_vae

    m = load_tiny_models(seed=0)
    save_dit(m.drafter, tmp_path / "self_forcing_dmd.pt", fmt="self-forcing", ema=m.drafter)
    save_dit(m.target, tmp_path / "krea.safetensors", fmt="krea")
    save_wan_vae(m.decoder.vae, tmp_path / "Wan2.1_VAE.pth")
    prompt = "a red circle"
    save_precomputed({prompt: m.text_encoder.encode([prompt])}, tmp_path / "emb.safetensors")
    assert main(["inspect", str(tmp_path / "krea.safetensors")]) == 0
    assert "krea" in capsys.readouterr().out.lower()
    argv = ["generate", prompt, "--drafter", str(tmp_path / "self_forcing_dmd.pt"), "--drafter-preset", "tiny-drafter",
            "--target", str(tmp_path / "krea.safetensors"), "--target-preset", "tiny", "--vae",
            str(tmp_path / "Wan2.1_VAE.pth"), "--text-encoder", str(tmp_path / "emb.safetensors"), "--scorer",
            "sharpness", "--height", "32", "--width", "32", "--num-blocks", "3", "--tau", "0.001", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    trace = json.loads((tmp_path / "out" / f"{video_stem(prompt, 'seed0')}.json").read_text())
    ref = m.pipeline(tau=0.001)(prompt, seed=trace["seed"])
    assert [b["accepted"] for b in trace["blocks"]] == [b.accepted for b in ref.trace.blocks]
    assert main(argv[:4] + ["--drafter-preset", "wan2.1-14b"] + argv[6:] + ["--overwrite"]) == 2
    assert "preset" in capsys.readouterr().err


def test_setup_paper_runs_the_krea_recipe_from_real_format_checkpoints(tmp_path):
    """`--setup paper` (with the tiny shapes' presets): recompute caches of 3 frames with the re-encoded anchor,
    Krea's 5 passes and decoder for the target, the percentile router (ImageReward prior) at 72%; the same video as the Python API
    configured by hand."""
    from sdvg.checkpoints import save_dit
    from sdvg.config import KREA_SAMPLER, CacheConfig
    from sdvg.loading import load_tiny_models
    from sdvg.text import save_precomputed
    from sdvg.vae import save_wan_vae

    m = load_tiny_models(seed=0, num_blocks=4)
    save_dit(m.drafter, tmp_path / "sf.pt", fmt="self-forcing", ema=m.drafter)
    save_dit(m.target, tmp_path / "krea.safetensors", fmt="krea")
    save_wan_vae(m.decoder.vae, tmp_path / "Wan2.1_VAE.pth")
    prompt = "a red circle"
    save_precomputed({prompt: m.text_encoder.encode([prompt])}, tmp_path / "emb.safetensors")
    argv = ["generate", prompt, "--setup", "paper", "--drafter", str(tmp_path / "sf.pt"), "--drafter-preset",
            "tiny-drafter", "--target", str(tmp_path / "krea.safetensors"), "--target-preset", "tiny-krea",
            "--vae", str(tmp_path / "Wan2.1_VAE.pth"), "--text-encoder", str(tmp_path / "emb.safetensors"),
            "--scorer", "sharpness", "--height", "32", "--width", "32", "--num-blocks", "4", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 0
    trace = json.loads((tmp_path / "out" / f"{video_stem(prompt, 'seed0')}.json").read_text())
    assert trace["router"] == "percentile-prior" and trace["cache_policy"] == "recompute"
    m.cache = m.drafter_cache = m.target_cache = CacheConfig(policy="recompute", recompute_frames=3)
    m.target_sampler, m.decoder_rule = KREA_SAMPLER, "krea"
    ref = m.pipeline(router="percentile-prior", accept_rate=0.72, seed=0)(prompt, seed=trace["seed"])
    assert [b["accepted"] for b in trace["blocks"]] == [b.accepted for b in ref.trace.blocks]
    assert [b["target_forwards"] for b in trace["blocks"]] == [b.target_forwards for b in ref.trace.blocks]
    assert trace["blocks"][0]["target_forwards"] == 5  # Krea's 5 passes
    assert [b["score"] for b in trace["blocks"]] == [b.score for b in ref.trace.blocks]


def test_speed_flags(tmp_path, capsys):
    """--overlap gives the same video as the sequential loop; --fp8-target without torchao says how to get it."""
    import importlib.util

    base = ["generate", "a red circle", "--models", "tiny", "--no-progress", "--tau", "0.001"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), "--overlap", "--scorer-batch", "5"]) == 0
    a, b = (json.loads(next((tmp_path / d).glob("*.json")).read_text()) for d in "ab")
    assert a["accepted"] == b["accepted"] and not a["overlap"] and b["overlap"]
    if importlib.util.find_spec("torchao") is None:
        assert main(base + ["--out", str(tmp_path / "c"), "--fp8-target"]) == 2
        assert "pip install torchao" in capsys.readouterr().err
