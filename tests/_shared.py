"""Where the tests find the project's shared data (reference key tables of the real checkpoints): `shared/` beside the
checkout, or `/work/shared`. Tests that need it skip with a reason that names what is missing and where it was looked
for, never silently."""
from __future__ import annotations

from pathlib import Path

import pytest

_ROOTS = (Path(__file__).resolve().parents[1] / "shared", Path(__file__).resolve().parents[2] / "shared",
          Path("/work/shared"))


def shared_path(*parts: str) -> Path:
    """The first existing `<root>/<parts>` (else the first candidate, which does not exist)."""
    cands = [r.joinpath(*parts) for r in _ROOTS]
    return next((c for c in cands if c.exists()), cands[0])


def needs_shared(*parts: str) -> pytest.MarkDecorator:
    path = shared_path(*parts)
    looked = ", ".join(str(r.joinpath(*parts)) for r in _ROOTS)
    return pytest.mark.skipif(not path.exists(), reason=f"needs the shared data file {'/'.join(parts)} "
                                                        f"(not found at {looked})")
