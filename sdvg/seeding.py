"""Seeds that depend only on what a video is, never on which process or rank makes it."""
from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from its parts (blake2b, so it is the same on every machine and Python)."""
    h = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def video_seed(base_seed: int, prompt_index: int, sample_index: int = 0) -> int:
    """Per-video seed from (base seed, prompt index, sample index): results do not depend on the number of ranks."""
    return derive_seed("video", base_seed, prompt_index, sample_index)
