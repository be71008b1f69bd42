import json

import pytest
import torch

from sdvg.io import append_jsonl, atomic_path, export_to_video, read_jsonl, read_prompts, safe_name, write_json
from sdvg.seeding import derive_seed, video_seed


def test_read_prompts_skips_blank_and_comments_keeps_duplicates(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a cat\n\n# comment\na cat\n  a dog  \n")
    assert read_prompts(f) == ["a cat", "a cat", "a dog"]


def test_read_prompts_csv_first_column(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('prompt,concept\n"a cat, sleeping",animal\na dog,animal\n')
    assert read_prompts(f) == ["a cat, sleeping", "a dog"]


def test_empty_prompt_file_is_a_clear_error(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no prompts"):
        read_prompts(f)
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    write_json(target, {"a": torch.tensor([1.0])})
    assert json.loads(target.read_text()) == {"a": [1.0]}


def test_jsonl_ignores_torn_last_line(tmp_path):
    f = tmp_path / "r.jsonl"
    append_jsonl(f, {"k": 1})
    with open(f, "a") as fh:
        fh.write('{"k": 2')  # a run killed mid-write
    assert read_jsonl(f) == [{"k": 1}]


def test_export_to_video_writes_readable_mp4(tmp_path):
    import imageio.v2 as imageio
    frames = torch.rand(9, 3, 32, 32)
    p = export_to_video(frames, tmp_path / "v.mp4", fps=16)
    r = imageio.get_reader(p)
    n = sum(1 for _ in r)
    assert n == 9


def test_seeds_are_stable_and_distinct():
    assert video_seed(0, 1, 0) == video_seed(0, 1, 0)
    assert len({video_seed(0, i, s) for i in range(50) for s in range(3)}) == 150
    assert 0 <= derive_seed("a", 1) < 2**63 and derive_seed("a", 1) != derive_seed("a", 2)
    assert safe_name("a/b: c?") == "ab c"
