"""Memory a video needs, checked before any work: the KV caches (bounded by the cache's capacity) and the returned
frames; a video that cannot fit is refused with what it needs (`TooLargeError`)."""
from __future__ import annotations

import resource
import sys

import torch

from sdvg.config import CacheConfig, DiTConfig, VideoConfig


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class TooLargeError(ValueError):
    """A video that cannot fit in memory, refused before any work (the message states the memory it needs)."""


def memory_needed(dits: list[DiTConfig | None], video: VideoConfig, cache: CacheConfig, dtype: torch.dtype,
                  keep_frames: bool = True) -> tuple[int, int]:
    """(DiT-device bytes, host bytes) a video needs beyond the weights: the KV caches, bounded by the cache's
    capacity whatever the length, and, when the whole video is returned (`__call__`, not `stream`), its float32
    frames and latents on the host, which grow with the length."""
    elt = torch.empty((), dtype=dtype).element_size()
    cap = cache.capacity(video.latent_frames, video.frames_per_block)
    kv = sum(2 * c.num_layers * (cap * video.tokens_per_frame + c.text_len) * c.dim * elt for c in dits if c)
    host = 0
    if keep_frames:
        h, w = video.latent_hw
        c_in = next(c.in_dim for c in dits if c)
        host = 4 * (video.num_frames * 3 * video.height * video.width + video.latent_frames * c_in * h * w)
    return kv, host


def available_memory(device: torch.device | str) -> int | None:
    """Free bytes on a device (CUDA: free memory; CPU: MemAvailable), None when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for ln in f:
                if ln.startswith("MemAvailable:"):
                    return int(ln.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(dits: list[DiTConfig | None], video: VideoConfig, cache: CacheConfig, dtype: torch.dtype,
                 device: torch.device | str, keep_frames: bool = True) -> None:
    """Refuse up front (TooLargeError) a video whose caches or frames cannot fit, stating what it needs."""
    kv, host = memory_needed(dits, video, cache, dtype, keep_frames)
    device = torch.device(device)
    need = {device.type: kv}
    need["cpu"] = need.get("cpu", 0) + host
    gb = 2**30
    for dev, n in need.items():
        free = available_memory(device if dev == device.type else "cpu")
        if free is not None and n > free:
            raise TooLargeError(
                f"this video needs at least {n / gb:.1f} GiB of {dev} memory ({video.num_blocks} blocks of "
                f"{video.width}x{video.height}: KV caches {kv / gb:.1f} GiB, returned frames {host / gb:.1f} GiB) "
                f"but {free / gb:.1f} GiB is free; use fewer --num-blocks, a smaller --height/--width or "
                f"--window-frames")
