"""What a video run records and returns: per-block traces, the video's trace, and the outputs `stream` and
`__call__` hand out (small dataclasses, as `sdvg generate` saves them and `sdvg bench` reads them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from sdvg.config import RunConfig


@dataclass
class BlockTrace:
    index: int
    source: str  # "draft" | "target" | "stitch": whose latents were emitted
    accepted: bool | None  # None: no routing happened for this block (forced, or a non-speculative mode)
    score: float | None
    threshold: float | None
    frame_scores: list[float]
    drafter_forwards: int
    target_forwards: int
    ms: dict[str, float]  # draft, decode, score, target, commit; block: the block's critical path
    skipped: str | None = None  # "draft": not drafted, the target made it; "score": accepted unscored (router vvs)
    steps_accepted: int | None = None  # mode "exact": drafter transitions the target accepted (of num_steps - 1)


@dataclass
class VideoTrace:
    """One video's record: its settings, router, per-block traces and totals (`to_dict`: what `sdvg generate` saves)."""

    prompt: str
    run: RunConfig  # the video's settings; run.overlap: pipelined speculation ran (False also when it fell back)
    tau: float | None
    router: str | None
    cache_policy: str
    blocks: list[BlockTrace] = field(default_factory=list)
    wall_s: float = 0.0
    peak_mem_mb: float = 0.0

    @property
    def routed(self) -> list[BlockTrace]:
        return [b for b in self.blocks if b.accepted is not None]

    @property
    def accept_rate(self) -> float | None:
        """Accepted / routed blocks (block 0 when forced is not routed, so it is excluded)."""
        r = self.routed
        return sum(b.accepted for b in r) / len(r) if r else None

    @property
    def drafter_forwards(self) -> int:
        return sum(b.drafter_forwards for b in self.blocks)

    @property
    def target_forwards(self) -> int:
        return sum(b.target_forwards for b in self.blocks)

    def to_dict(self) -> dict:
        """Flat: the run's settings beside the prompt, as saved traces hold them."""
        d = asdict(self)
        return {"prompt": d.pop("prompt"), **d.pop("run"), **d, "accept_rate": self.accept_rate,
                "drafter_forwards": self.drafter_forwards, "target_forwards": self.target_forwards,
                "accepted": [b.accepted for b in self.blocks]}

    @property
    def marks(self) -> str:
        """One letter per block: A accepted draft, R rejected (the target regenerated it), - not routed."""
        return "".join({True: "A", False: "R", None: "-"}[b.accepted] for b in self.blocks)

    def summary(self) -> str:
        acc = "n/a" if self.accept_rate is None else f"{self.accept_rate:.0%}"
        return (f"{self.run.mode}: blocks {self.marks}  accept {acc}  forwards drafter {self.drafter_forwards} "
                f"target {self.target_forwards}  {self.wall_s:.2f}s")


@dataclass
class BlockOutput:
    """What `stream` yields: one block's final frames as soon as they are decided."""

    index: int
    frames: torch.Tensor  # [T, 3, H, W] in [0, 1]
    latents: torch.Tensor  # [1, C, f, h, w]
    trace: BlockTrace
    prompt: str = ""  # the prompt this block was made for (it changes when a `StreamControl` switches it)


@dataclass
class SDVGOutput:
    frames: torch.Tensor  # [T, 3, H, W] float in [0, 1]
    latents: torch.Tensor  # [1, C, F, h, w]
    trace: VideoTrace
