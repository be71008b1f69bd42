"""Files in and out: prompt files, mp4 export, JSON traces, all written atomically (temp name, then rename)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
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
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompt file {p} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                         f"save it as UTF-8") from None
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
def atomic_path(path: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block finishes.

    `replace=False` never replaces an existing file, even one that appeared meanwhile (a concurrent run): it raises
    FileExistsError instead. The temporary name is `.STEM.PID.XXXXXXXX.tmp.SUFFIX` (see `clean_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and fails if `path` exists
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: check, then rename (a small race window)
                if path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_TEMP = re.compile(r"^\..+?\.(?:(\d+)\.)?[A-Za-z0-9_]{8}\.tmp(?:\.[^.]+)?$")


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False, idle_s: float = 60.0) -> int:
    """Remove temporary files that `atomic_path` left behind in a killed run; returns how many.

    Only names of its own pattern are touched, and only those whose writer process is gone (the PID in the name is
    not running on this machine) and that were not modified for `idle_s` seconds, so a concurrent run's file in
    progress is kept.
    """
    root = Path(folder)
    if not root.is_dir():
        return 0
    now, n = time.time(), 0
    for f in (root.rglob(".*.tmp*") if recursive else root.glob(".*.tmp*")):
        m = _TEMP.match(f.name)
        if not m or not f.is_file():
            continue
        try:
            if m.group(1) and _alive(int(m.group(1))) or now - f.stat().st_mtime < idle_s:
                continue
            f.unlink()
            n += 1
        except OSError:
            continue
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def prepare_out_dir(path: str | os.PathLike, recursive_clean: bool = False) -> Path:
    """Create the output folder and prove it writable before any model is loaded (one clear line if not), and
    clean stale temporary files of killed runs in it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--out {p} is a file, not a folder; give a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sdvg-write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {p} is not a writable folder ({e.strerror or type(e).__name__})") from None
    clean_stale_temps(p, recursive=recursive_clean)
    return p


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


def export_to_video(frames: torch.Tensor, path: str | os.PathLike, fps: int = 16, replace: bool = True) -> Path:
    """Write an H.264 mp4 (yuv420p, so every player opens it); small videos are upscaled to even sizes ≥ 64 px."""
    import imageio.v2 as imageio

    arr = to_uint8(frames)
    h, w = arr.shape[1:3]
    scale = max(1, -(-256 // max(h, w)))  # tiny videos are hard to see: nearest-neighbour upscale
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    path = Path(path)
    with atomic_path(path, replace=replace) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, pixelformat="yuv420p",
                                    macro_block_size=2, ffmpeg_log_level="error")
        try:
            for f in arr:
                writer.append_data(f)
        finally:
            writer.close()
    return path


def save_strip(rows: list[tuple[str, torch.Tensor, list[bool | None] | None]], blocks: list[tuple[int, int]],
               path: str | os.PathLike, scale: int = 2) -> Path:
    """A PNG contact sheet to *look at* a run: one row per video (its label on the left), the last frame of every
    block, and under each block a bar: green = the drafter's block was accepted, red = the target made it
    (rejected draft or target-only), none = no routing (draft-only). rows: (label, frames [T,3,H,W], accepted per
    block or None); blocks: each block's [start, end) frame range."""
    from PIL import Image, ImageDraw

    H, W = rows[0][1].shape[-2:]
    h, w, bar, pad, left = H * scale, W * scale, 4, 2, 110
    sheet = Image.new("RGB", (left + len(blocks) * (w + pad), len(rows) * (h + bar + 2 * pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames, accepted) in enumerate(rows):
        y = pad + r * (h + bar + 2 * pad)
        draw.text((4, y + h // 2 - 6), label, fill="black")
        for b, (_, end) in enumerate(blocks):
            x = left + b * (w + pad)
            img = Image.fromarray(to_uint8(frames[end - 1:end])[0]).resize((w, h), Image.NEAREST)
            sheet.paste(img, (x, y))
            if accepted is not None and b < len(accepted):
                draw.rectangle([x, y + h + 1, x + w - 1, y + h + bar], fill="#2a2" if accepted[b] else "#c22")
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path


NAME_BYTES = 120  # a file name's stem, in UTF-8 bytes: well under the 255-byte limit of every common filesystem


def safe_name(text: str, max_bytes: int = 80) -> str:
    """A readable slug of a prompt: letters (any script), digits, spaces, '-', '_' and '.'; at most `max_bytes`
    UTF-8 bytes (cut on a character boundary); never hidden, never a path; 'video' if nothing is left."""
    s = re.sub(r"[^\w\-. ]+", "", text)
    s = re.sub(r"\s+", " ", s).strip(" .-")
    s = s.encode("utf-8")[:max(max_bytes, 0)].decode("utf-8", "ignore").rstrip(" .-")
    return s or "video"


def video_stem(prompt: str, *parts: str | int, verbatim: bool = False, max_bytes: int = NAME_BYTES) -> str:
    """The one output name (no suffix) of a video, shared by `generate` and `bench`.

    Default: `SLUG-PART...-HASH`, HASH = 8 hex of the full prompt and the parts, so prompts that slug alike (`a/b/c`
    and `abc`; `..` and `~`) or are cut alike, and distinct (prompt, seed, sample), never share a name. `verbatim`
    (VBench's layout): `PROMPT-PART...` when the prompt is itself a safe, short file name, else the default form.
    Always at most `max_bytes` UTF-8 bytes, one path component, never hidden.
    """
    tag = "".join(f"-{p}" for p in parts)
    if re.search(r"[/\\\0]", tag):
        raise ValueError(f"name parts must not contain path separators: {parts}")
    if verbatim and safe_name(prompt, max_bytes) == prompt and len((prompt + tag).encode()) <= max_bytes:
        return prompt + tag
    h = hashlib.blake2b("\0".join([prompt, *map(str, parts)]).encode("utf-8", "surrogatepass"),
                        digest_size=4).hexdigest()
    tail = f"{tag}-{h}"
    return safe_name(prompt, max_bytes - len(tail.encode())) + tail
