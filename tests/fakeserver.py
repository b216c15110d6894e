"""Scripted servers for the clients' tests (Python, Unity, Godot): they answer `info`, `health`, `ping`,
`cancel` and `subscribe` as a real server does, and `get_track` as each test needs.

`DirectorServer` streams made-up tracks (a 440 Hz tone) and, on command, cuts a track's stream short with an
error, for the engine clients' music players. `BadRepliesServer` sends undecodable messages; its `get_track`
by context name:

* `broken_own`: one message for the request that cannot be decoded but carries the request's id (a `chunk`
  without its payload frame). The client must fail that request.
* `nil_noise`: an undecodable message whose id is readably nil (an `event` whose `final` is not a bool), then
  a valid final `error` (unknown_context). The noise belongs to no request: the request ends with that error.
* `unreadable_a` / `unreadable_b`: held until both are open, then one message whose body is not msgpack at all.
  The client cannot tell which request lost a message, so it must fail every open request (instead of leaving
  them waiting forever: get_track has no timeout in the engine clients).
* `gap_busy`: a header and a chunk, then a seq gap and a final `busy` (a backlog the server dropped).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from pathlib import Path

import msgpack
import numpy as np
import xxhash
import zmq

from troubadour import protocol as P

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors" / "vectors.json"


def _info_body() -> dict:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    body = next(v for v in vectors if v["name"] == "info_reply")["decoded"]["body"]
    return {k: v for k, v in body.items() if k not in ("id", "seq", "final")}


class ScriptedServer:
    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.seen: list[str] = []          # request types and get_track contexts, in arrival order
        self.track_ids: dict = {}          # get_track context -> request id (the last one)
        self.cancelled: list = []          # targets of cancel requests
        self._info = _info_body()
        self.subscriber, self.event_seq = None, 0
        self._commands: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self, ident, frames):
        self.sock.send_multipart([ident, b"", *frames])

    def call(self, fn, *args) -> None:
        """Run fn(*args) on the server's thread (which owns the socket) and wait for it."""
        done = threading.Event()
        self._commands.put((fn, args, done))
        assert done.wait(10)

    def _run(self):
        while not self._stop.is_set():
            while not self._commands.empty():
                fn, args, done = self._commands.get()
                fn(*args)
                done.set()
            if not self.sock.poll(20):
                continue
            ident, _, *frames = self.sock.recv_multipart()
            try:
                msg = P.decode(frames)
            except P.ProtocolError:
                continue
            self._answer(ident, msg.type, msg.body)

    def _answer(self, ident, kind, body):
        rid = body["id"]
        self.seen.append(kind if kind != P.GET_TRACK else body.get("context"))
        if kind == P.INFO:
            self._send(ident, P.reply(rid, 0, True, P.INFO, **self._info))
        elif kind == P.HEALTH:
            self._send(ident, P.reply(rid, 0, True, P.HEALTH, status="ok", queue=0, generating=0, generated=0,
                                      uptime_s=1.0))
        elif kind == P.PING:
            self._send(ident, P.reply(rid, 0, True, P.PONG))
        elif kind == P.CANCEL:
            self.cancelled.append(body["target"])
            self._send(ident, P.reply(rid, 0, True, P.CANCELLED, target=body["target"], found=False))
        elif kind == P.SUBSCRIBE:
            self._send(ident, P.reply(rid, 0, True, P.SUBSCRIBED, events=["track_ready"]))
            self.subscriber, self.event_seq = ident, 0
        elif kind == P.GET_TRACK:
            self.track_ids[body.get("context")] = rid
            self.get_track(ident, rid, body)
        else:
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="internal", message=f"fake: no {kind}"))

    def get_track(self, ident, rid, body):
        raise NotImplementedError

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


class DirectorServer(ScriptedServer):
    """Tracks of `SECONDS` s, mono pcm_s16le at the requested rate, 120 bpm 4/4 looping, streamed in 1 s chunks.
    A context named in `hold()` streams only its first second on its next request and waits; `fail()` then ends
    that stream with an error (a track cut short, as when the server dies or the engine fails); `swap()` pushes a
hot-swap event as `regenerate` does."""

    SECONDS = 4

    def __init__(self):
        self.held: dict = {}        # context -> None (hold the next request) or (ident, rid, next seq)
        self.requests: dict = {}    # context -> get_track requests seen
        super().__init__()

    def hold(self, context: str) -> None:
        self.call(self.held.__setitem__, context, None)

    def fail(self, context: str, code: str) -> None:
        def send():
            ident, rid, seq = self.held.pop(context)
            self._send(ident, P.reply(rid, seq, True, P.ERROR, code=code, message=f"fake: {context} cut short"))
        self.call(send)

    def swap(self, context: str) -> None:
        """Tell the subscriber its context was regenerated (`regenerate`: new audio, the same track id)."""
        def send():
            self._send(self.subscriber, P.event_frames(self.event_seq, "track_ready", context=context, variant=0,
                                                       track_id=self._track_id(context), reason="hot_swap"))
            self.event_seq += 1
        self.call(send)

    @staticmethod
    def _track_id(context: str) -> str:
        return hashlib.sha256(context.encode()).hexdigest()[:32]

    def get_track(self, ident, rid, body):
        ctx = body.get("context")
        self.requests[ctx] = self.requests.get(ctx, 0) + 1
        rate = int(body.get("sample_rate") or 32000)
        t = np.arange(rate * self.SECONDS) / rate
        pcm = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
        head = dict(track_id=self._track_id(ctx), cached=False,
                    context=ctx, variant=0, fallback=False, sample_rate=rate, channels=1, frames=len(pcm) // 2,
                    format="pcm_s16le", bpm=120.0, meter="4/4", loop=True, prompt="a tone",
                    params={"duration": float(self.SECONDS)})
        self._send(ident, P.reply(rid, 0, False, P.TRACK, **head))
        second = 2 * rate
        hold = ctx in self.held and self.held[ctx] is None
        for seq, start in enumerate(range(0, len(pcm), second), 1):
            piece = pcm[start:start + second]
            self._send(ident, P.reply(rid, seq, False, P.CHUNK, piece, offset=start // 2, frames=len(piece) // 2,
                                      bytes=len(piece)))
            if hold:
                self.held[ctx] = (ident, rid, seq + 1)
                return
        self._send(ident, P.reply(rid, seq + 1, True, P.END, frames=len(pcm) // 2, bytes=len(pcm),
                                  sha256=hashlib.sha256(pcm).hexdigest(), xxh3_64=xxhash.xxh3_64_hexdigest(pcm)))


class BadRepliesServer(ScriptedServer):
    def __init__(self):
        self._held: dict = {}              # unreadable_*: context -> request id
        super().__init__()

    def get_track(self, ident, rid, body):
        if body.get("context") == "broken_own":
            chunk = msgpack.packb({"id": rid, "seq": 0, "final": False, "offset": 0, "frames": 1, "bytes": 4})
            self._send(ident, [P.HEADER, b"chunk", chunk])                   # no payload frame
        elif body.get("context") == "nil_noise":
            self._send(ident, [P.HEADER, b"event", msgpack.packb({"id": None, "seq": 0, "final": "no"})])
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="unknown_context", field="context",
                                      message="fake: no such context"))
        elif body.get("context") == "gap_busy":   # a dropped backlog: a seq gap, then the final busy
            pcm = b"\x00\x01" * 800
            self._send(ident, P.reply(rid, 0, False, P.TRACK, track_id="t", cached=False, sample_rate=32000,
                                      channels=1, frames=3200, format="pcm_s16le", prompt="p", params={}))
            self._send(ident, P.reply(rid, 1, False, P.CHUNK, pcm, offset=0, frames=800, bytes=len(pcm)))
            self._send(ident, P.reply(rid, 7, True, P.ERROR, code="busy", message="fake: the stream was dropped"))
        elif str(body.get("context")).startswith("unreadable_"):
            self._held[body["context"]] = rid
            if len(self._held) == 2:
                self._held.clear()
                self._send(ident, [P.HEADER, b"chunk", b"\xc1", b"\x00" * 4])   # 0xc1: never valid msgpack
        else:
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="unknown_context", field="context",
                                      message="fake: no such context"))


class ClosingServer(DirectorServer):
    """Streams `last_words` whole and then closes its socket (ZeroMQ sends what is queued, then the TCP close):
    a client must take the messages that arrived before the close, not drop them with the connection."""

    def get_track(self, ident, rid, body):
        super().get_track(ident, rid, body)
        if body.get("context") == "last_words":
            self.sock.close(linger=5000)
            self._stop.set()

