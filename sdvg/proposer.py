"""Pipelined speculation: the drafter runs ahead of the verifier on its own thread.

With the drafter's context `own` (the paper's), the drafter's blocks never depend on a routing decision: it commits
its own draft whatever the router says. So a proposer thread can draft blocks b+1 .. b+L while the main loop
decodes, scores and (on a rejection) regenerates block b. The drafter sees exactly the calls of the sequential loop
in the same order (denoise b, commit b, denoise b+1, ...), so the video is bit for bit the same; only the wall time
changes. The thread uses the caller's intra-op thread count (OpenMP's is per thread), so kernels split work the same
way and give the same bits.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass

import torch

from sdvg.sampler import BlockModel, block_noise


@dataclass
class Proposal:
    """One block drafted ahead: its latents, the (x_t, x0) of each step, its draft ms and drafter forwards."""

    block: int
    draft: torch.Tensor
    states: dict
    ms: float
    forwards: int
    ready: "torch.cuda.Event | None" = None  # CUDA: recorded on the proposer's stream after the draft


class Proposer:
    """Drafts blocks `first .. last - 1` on a thread, at most `lookahead` blocks ahead of the consumer."""

    def __init__(self, drafter: BlockModel, seed: int, shape: tuple[int, ...], num_steps: int, first: int, last: int,
                 lookahead: int = 2) -> None:
        self.d, self.seed, self.shape, self.num_steps = drafter, seed, shape, num_steps
        self.first, self.last = first, last
        self._q: queue.Queue = queue.Queue(maxsize=max(1, lookahead))
        self._stop = threading.Event()
        self._threads = torch.get_num_threads()
        # CUDA: the drafter gets its own stream, so its kernels overlap the verifier's on the same GPU
        self._stream = torch.cuda.Stream(drafter.device) if drafter.device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, daemon=True, name="sdvg-proposer")
        self._thread.start()

    def _run(self) -> None:
        torch.set_num_threads(self._threads)
        ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        try:
            with ctx:
                for b in range(self.first, self.last):
                    f0, t0 = self.d.forwards, time.perf_counter()
                    noise, step_noises = block_noise(self.seed, b, self.shape, self.num_steps, device=self.d.device)
                    draft, states = self.d.trajectory(b, noise, step_noises)
                    ready = None
                    if self._stream is not None:
                        ready = torch.cuda.Event()
                        ready.record(self._stream)
                        ready.synchronize()  # this thread only: the draft's wall time
                    ms = 1000 * (time.perf_counter() - t0)
                    self.d.commit(b, draft)  # own context: the drafter keeps its draft whatever the router decides
                    if not self._put(Proposal(b, draft, states, ms, self.d.forwards - f0, ready)):
                        return
        except BaseException as e:  # re-raised in the consumer's thread
            self._put(e)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def take(self, block: int) -> Proposal:
        item = self._q.get()
        if isinstance(item, BaseException):
            raise item
        if item.block != block:
            raise RuntimeError(f"proposer out of step: drafted block {item.block}, the loop is at {block}")
        if item.ready is not None:  # the consumer's stream waits for the draft, and owns its memory from now on
            cur = torch.cuda.current_stream(self.d.device)
            cur.wait_event(item.ready)
            for x in [item.draft, *(t for pair in item.states.values() for t in pair)]:
                if x.is_cuda:
                    x.record_stream(cur)
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
