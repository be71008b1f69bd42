"""`sdvg serve`: live speculative generation over WebSocket, with a web page.

One WebSocket per client session (Starlette on uvicorn). The client sends JSON text messages (`start`, `prompt`,
`tau`, `stop`); the server answers with JSON text (`started`, `done`, `error`) and streams each block as soon as it
is final as ONE binary message (`pack_block`): the magic `SDVG`, a little-endian u32 header length, a JSON header
(the block's trace: accepted / rejected / forced, score, threshold, per-stage ms, time-to-block, the frames' byte
sizes) and the frames, JPEG each. Each session generates in its own thread with its own pipeline (own KV caches and
decode state over the shared weights); a bounded queue per session means a slow client slows only its own stream.
"""
from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from sdvg.config import RunConfig

MAGIC = b"SDVG"
MAX_MESSAGE = 16 * 1024  # bytes of a client message; longer ones get an error reply
QUEUE_BLOCKS = 4  # blocks a session may run ahead of its client
PAGE = Path(__file__).with_name("serve_page.html")
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # time-to-block histogram (s)
FOREVER = 10**9  # "until stopped": blocks; the KV cache rolls past the trained length, memory stays flat


def encode_frames(frames, fmt: str = "jpeg", quality: int = 85) -> list[bytes]:
    """frames [T, 3, H, W] in [0, 1] -> one image file per frame ("jpeg" or "webp"; "raw": RGB bytes)."""
    from PIL import Image

    u8 = (frames.clamp(0, 1) * 255).round().to("cpu").byte().permute(0, 2, 3, 1).contiguous().numpy()
    if fmt == "raw":
        return [f.tobytes() for f in u8]
    out = []
    for f in u8:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format=fmt.upper(), quality=quality)
        out.append(buf.getvalue())
    return out


def pack_block(header: dict, frames: list[bytes]) -> bytes:
    head = json.dumps({**header, "frame_sizes": [len(f) for f in frames]}).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(frames)


def unpack_block(data: bytes) -> tuple[dict, list[bytes]]:
    """The inverse of `pack_block` (clients and tests)."""
    if data[:4] != MAGIC:
        raise ValueError("not an sdvg block message")
    (n,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8:8 + n])
    frames, i = [], 8 + n
    for size in header["frame_sizes"]:
        frames.append(data[i:i + size])
        i += size
    return header, frames


@dataclass
class Metrics:
    """Server-wide counters, exposed at /metrics in Prometheus' text format."""

    blocks: dict[str, int] = field(default_factory=lambda: {"accepted": 0, "rejected": 0, "forced": 0})
    sessions: int = 0
    sessions_total: int = 0
    busy_total: int = 0
    ttb_counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    ttb_sum: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def block(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.blocks[kind] += 1
            self.ttb_sum += seconds
            self.ttb_counts[next((i for i, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))] += 1

    def text(self) -> str:
        with self.lock:
            routed = self.blocks["accepted"] + self.blocks["rejected"]
            lines = ["# TYPE sdvg_blocks_total counter"]
            lines += [f'sdvg_blocks_total{{decision="{k}"}} {v}' for k, v in self.blocks.items()]
            lines += ["# TYPE sdvg_accept_rate gauge",
                      f"sdvg_accept_rate {self.blocks['accepted'] / routed if routed else 0.0}",
                      "# TYPE sdvg_sessions_active gauge", f"sdvg_sessions_active {self.sessions}",
                      "# TYPE sdvg_sessions_total counter", f"sdvg_sessions_total {self.sessions_total}",
                      "# TYPE sdvg_busy_total counter", f"sdvg_busy_total {self.busy_total}",
                      "# TYPE sdvg_time_to_block_seconds histogram"]
            acc = 0
            for b, c in zip(BUCKETS + (float("inf"),), self.ttb_counts):
                acc += c
                le = "+Inf" if b == float("inf") else f"{b}"
                lines.append(f'sdvg_time_to_block_seconds_bucket{{le="{le}"}} {acc}')
            lines += [f"sdvg_time_to_block_seconds_sum {self.ttb_sum}", f"sdvg_time_to_block_seconds_count {acc}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class StartRequest:
    """A client's `start` message, checked (the same checks as the CLI's flags)."""

    prompt: str
    seed: int = 0
    mode: str = "sdvg"
    tau: float | None = None
    router: str = "threshold"
    accept_rate: float = 0.5
    stitch_steps: int = 0
    num_blocks: int | None = None  # None: until stopped

    @classmethod
    def parse(cls, msg: dict, max_blocks: int) -> "StartRequest":
        from sdvg.routers import router_names
        from sdvg.settings import check_int, check_prompt, check_rate, check_tau

        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(msg) - known - {"type"})
        if extra:
            raise ValueError(f"unknown fields {extra} in start; known: {sorted(known)}")
        req = cls(**{k: v for k, v in msg.items() if k != "type"})
        check_prompt(req.prompt)
        req.run_config()  # seed, mode and stitch_steps: the pipeline's own checks
        if req.tau is not None:
            check_tau(req.tau)
        if req.router not in router_names():
            raise ValueError(f"unknown router {req.router!r}; choose one of {', '.join(router_names())}")
        check_rate(req.accept_rate)
        if req.num_blocks is not None:
            check_int(req.num_blocks, "num_blocks", 1)
            if req.num_blocks > max_blocks:
                raise ValueError(f"num_blocks must be <= {max_blocks} (or null: until stopped)")
        return req

    def run_config(self) -> RunConfig:
        """The session's video settings (checked when built)."""
        return RunConfig(mode=self.mode, seed=self.seed, stitch_steps=self.stitch_steps)


class Session:
    """One client's generation: a worker thread running the pipeline's stream, blocks handed to the event loop
    through a bounded queue."""

    def __init__(self, models, req: StartRequest, loop: asyncio.AbstractEventLoop, metrics: Metrics,
                 fmt: str = "jpeg") -> None:
        from sdvg.live import StreamControl

        self.req, self.loop, self.metrics, self.fmt = req, loop, metrics, fmt
        self.control = StreamControl()
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_BLOCKS)
        video = replace(models.video, num_blocks=req.num_blocks or FOREVER)
        self.pipe = replace(models, video=video).pipeline(router=req.router if req.mode == "sdvg" else None,
                                                          tau=req.tau, accept_rate=req.accept_rate, seed=req.seed)
        self.target_steps = (self.pipe.target or self.pipe.drafter).num_steps
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"sdvg-session-{req.seed}")

    def start(self) -> None:
        self.thread.start()

    def _put(self, item) -> bool:
        """Hand an item to the event loop; blocks while the client is behind. False once the session is stopped."""
        if self.loop.is_closed() or self.control.stopped:
            return False
        coro = self.queue.put(item)
        try:
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the server's loop closed under us (shutdown)
            coro.close()
            return False
        while True:
            try:
                fut.result(timeout=0.2)
                return True
            except TimeoutError:
                if self.control.stopped:
                    fut.cancel()
                    return False

    def _run(self) -> None:
        saved, t_prev = 0, time.perf_counter()
        try:
            stream = self.pipe.stream(self.req.prompt, **asdict(self.req.run_config()), control=self.control)
            for out in stream:
                bt = out.trace
                now = time.perf_counter()
                ttb, t_prev = now - t_prev, now
                kind = "forced" if bt.accepted is None else ("accepted" if bt.accepted else "rejected")
                baseline = self.target_steps + (1 if out.index else 0)  # target-only: its steps + a commit/rebuild
                saved += baseline - bt.target_forwards
                self.metrics.block(kind, ttb)
                header = dict(type="block", index=out.index, prompt=out.prompt, decision=kind, source=bt.source,
                              score=bt.score,
                              threshold=bt.threshold, ms={k: round(v, 2) for k, v in bt.ms.items()},
                              ttb_ms=round(1000 * ttb, 2), drafter_forwards=bt.drafter_forwards,
                              target_forwards=bt.target_forwards, target_forwards_saved=saved,
                              format=self.fmt, height=out.frames.shape[-2], width=out.frames.shape[-1])
                if not self._put(pack_block(header, encode_frames(out.frames, self.fmt))):
                    stream.close()
                    return
            self._put({"type": "done", "blocks": self.req.num_blocks, "stopped": self.control.stopped})
        except Exception as e:  # a failure of this session is reported on its socket, not raised into the server
            self._put({"type": "error", "error": f"{type(e).__name__}: {e}"})


def create_app(models, *, max_sessions: int = 4, max_blocks: int = 10_000, fmt: str = "jpeg"):
    """The ASGI app: `/` (the page), `/ws` (sessions), `/healthz`, `/metrics`."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    metrics = Metrics()
    slots = threading.BoundedSemaphore(max_sessions)

    async def page(request):
        return HTMLResponse(PAGE.read_text())

    async def healthz(request):
        return JSONResponse({"ok": True, "models": models.name, "sessions": metrics.sessions,
                             "max_sessions": max_sessions})

    async def prom(request):
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    async def ws_endpoint(ws: WebSocket):
        await ws.accept()
        if not slots.acquire(blocking=False):
            with metrics.lock:
                metrics.busy_total += 1
            await ws.send_json({"type": "error", "error": f"busy: {max_sessions} sessions are running; try later"})
            await ws.close(code=1013)
            return
        with metrics.lock:
            metrics.sessions += 1
            metrics.sessions_total += 1
        session: Session | None = None
        sender: asyncio.Task | None = None
        info = dict(type="hello", models=models.name, fps=16, height=models.video.height, width=models.video.width,
                    default_tau=models.default_tau, taus=list(models.default_taus))
        await ws.send_json(info)

        async def send_loop(s: Session):
            try:
                while True:
                    item = await s.queue.get()
                    if isinstance(item, bytes):
                        await ws.send_bytes(item)
                    else:
                        await ws.send_json(item)
                        if item["type"] in ("done", "error"):
                            return
            except Exception:  # the client went away: stop generating for it
                s.control.stop()

        async def stop_session():
            nonlocal session, sender
            if session is not None:
                session.control.stop()
                await asyncio.to_thread(session.thread.join)
            if sender is not None:
                sender.cancel()
            session = sender = None

        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text is None or len(text) > MAX_MESSAGE:
                    await ws.send_json({"type": "error", "error": f"send JSON text messages of at most "
                                                                  f"{MAX_MESSAGE} bytes"})
                    continue
                try:
                    m = json.loads(text)
                    if not isinstance(m, dict) or "type" not in m:
                        raise ValueError('a message is a JSON object with a "type"')
                    kind = m["type"]
                    if kind == "start":
                        if session is not None and session.thread.is_alive():
                            raise ValueError("a stream is running: send stop first")
                        await stop_session()
                        req = StartRequest.parse(m, max_blocks)
                        session = Session(models, req, asyncio.get_running_loop(), metrics, fmt)
                        sender = asyncio.create_task(send_loop(session))
                        session.start()
                        await ws.send_json({"type": "started", **{k: getattr(req, k) for k in
                                                                  req.__dataclass_fields__}})
                    elif kind == "prompt":
                        if session is None:
                            raise ValueError("no stream: send start first")
                        session.control.set_prompt(m.get("prompt"), int(m.get("blend_blocks", 0)),
                                                   m.get("interp", "linear"))
                        await ws.send_json({"type": "ack", "of": "prompt", "prompt": m.get("prompt")})
                    elif kind == "tau":
                        if session is None:
                            raise ValueError("no stream: send start first")
                        session.control.set_tau(m.get("tau"))
                        await ws.send_json({"type": "ack", "of": "tau", "tau": m.get("tau")})
                    elif kind == "stop":
                        await stop_session()
                        await ws.send_json({"type": "stopped"})
                    else:
                        raise ValueError(f"unknown message type {kind!r}; send start, prompt, tau or stop")
                except (ValueError, TypeError) as e:
                    await ws.send_json({"type": "error", "error": str(e)})
        except WebSocketDisconnect:
            pass
        finally:  # no await here: on a dropped connection this task may already be cancelled
            if session is not None:
                session.control.stop()  # its thread ends within a block
            if sender is not None:
                sender.cancel()
            slots.release()
            with metrics.lock:
                metrics.sessions -= 1

    app = Starlette(routes=[Route("/", page), Route("/healthz", healthz), Route("/metrics", prom),
                            WebSocketRoute("/ws", ws_endpoint)])
    app.state.metrics = metrics
    return app


def serve_main(argv: list[str]) -> int:
    from sdvg.flags import Parser, add_model_args, check_model_args, load_models, parse_args

    p = Parser(prog="sdvg serve", description="live speculative generation over WebSocket, with a web page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-sessions", type=int, default=4, help="concurrent sessions; more get a 'busy' reply")
    p.add_argument("--format", choices=("jpeg", "webp", "raw"), default="jpeg", help="frame encoding on the wire")
    p.add_argument("--config", help="JSON/TOML file of flag values")
    add_model_args(p)
    args = parse_args(p, argv)
    check_model_args(args)
    import uvicorn

    models = load_models(args)
    print(f"sdvg serve: {models.name} models on http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(create_app(models, max_sessions=args.max_sessions, fmt=args.format), host=args.host,
                port=args.port, log_level="warning", ws_max_size=MAX_MESSAGE * 4)
    return 0


__all__ = ["create_app", "serve_main", "pack_block", "unpack_block", "encode_frames", "StartRequest", "Metrics"]
