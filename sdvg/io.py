"""Files in and out: prompt files, mp4 export, JSON traces, all written atomically (temp name, then rename)."""
from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def read_prompts(path: str | os.PathLike) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped. Duplicates are kept (one video each).

    A `.csv` file (e.g. MovieGenVideoBenchWithTag.csv) uses its first column, skipping a header named 'prompt'.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".csv":
        import csv
        rows = list(csv.reader(text.splitlines()))
        if rows and rows[0] and rows[0][0].strip().lower() == "prompt":
            rows = rows[1:]
        prompts = [r[0].strip() for r in rows if r and r[0].strip()]
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"prompt file {p} has no prompts (one prompt per line; '#' lines are comments)")
    return prompts


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n", encoding="utf-8")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON line with a single write + fsync, so a killed run leaves whole lines only."""
    line = json.dumps(row, default=_jsonable) + "\n"
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:  # a torn last line (killed mid-write) must not swallow this row
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed mid-write) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for ln in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return rows


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[T, 3, H, W] in [0, 1] -> [T, H, W, 3] uint8."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [T, 3, H, W], got {tuple(frames.shape)}")
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def export_to_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = 16) -> Path:
    """Write an H.264 mp4 (yuv420p, so every player opens it); small videos are upscaled to even sizes ≥ 64 px."""
    import imageio.v2 as imageio

    arr = to_uint8(frames)
    h, w = arr.shape[1:3]
    scale = max(1, -(-256 // max(h, w)))  # tiny videos are hard to see: nearest-neighbour upscale
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                    macro_block_size=2, ffmpeg_log_level="error")
        try:
            for f in arr:
                writer.append_data(f)
        finally:
            writer.close()
    return path


def safe_name(text: str, max_len: int = 80) -> str:
    """A file name from a prompt: keeps letters, digits, spaces, '-', '_' and '.'."""
    s = re.sub(r"[^\w\-. ]+", "", text).strip()
    s = re.sub(r"\s+", " ", s)[:max_len].rstrip(" .")
    return s or "video"
