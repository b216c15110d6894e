"""Per-request output state on the server: sequencing, backpressure, and fan-out of live tracks.

Everything here runs on the server's I/O thread.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from . import protocol as P
from .delivery import Delivery, split_native

# A client that stops reading gets at most this many queued messages (≈ a minute of audio) before its
# stream is dropped; memory stays bounded and the track is still generated and cached.
MAX_OUTBOX = 128


class Reply:
    """One request's replies: seq numbering, exactly one final message, a bounded outbox."""

    def __init__(self, envelope: list, req_id, kind: str):
        self.envelope = envelope
        self.id = req_id
        self.kind = kind
        self.seq = 0
        self.closed = False          # the final message is queued
        self.dropped = False
        self.outbox: deque = deque()
        self.source: Iterator | None = None   # lazily produced messages (cached replays)
        self.job = None              # the GenJob this request waits on, if any
        self.stream = None           # TrackStream when this request receives a track

    @property
    def client(self) -> bytes:
        return bytes(self.envelope[0])

    def send(self, msg_type: str, payload=None, final: bool = False, **fields) -> None:
        if self.closed:
            return
        self.outbox.append(P.reply(self.id, self.seq, final, msg_type, payload, **fields))
        self.seq += 1
        self.closed = final

    def fail(self, exc: BaseException) -> None:
        if not self.closed:
            self.outbox.append(P.error_frames(self.id, self.seq, exc))
            self.seq += 1
            self.closed = True

    def done(self) -> bool:
        return self.closed and not self.outbox and self.source is None

    def refill(self, low_water: int = 4) -> None:
        """Pull lazily produced messages while the outbox is short."""
        while self.source is not None and len(self.outbox) < low_water:
            try:
                next(self.source)
            except StopIteration:
                self.source = None


@dataclass
class TrackStream:
    """Sends one track to one request: header, chunks (or one whole message), end."""

    reply: Reply
    delivery: Delivery
    header: dict
    stream: bool
    parts: list = field(default_factory=list)   # non-streamed: payload pieces until the end

    def start(self) -> None:
        if self.stream:
            self.reply.send(P.TRACK, **self.header)

    def feed(self, audio: np.ndarray, last: bool) -> None:
        for offset, frames, data in self.delivery.feed(audio, last):
            if self.stream:
                self.reply.send(P.CHUNK, data, offset=offset, frames=frames, bytes=len(data))
            else:
                self.parts.append(data)
        if last:
            d = self.delivery
            if self.stream:
                self.reply.send(P.END, final=True, frames=d.frames, bytes=d.bytes, sha256=d.sha.hexdigest())
            else:
                self.reply.send(P.TRACK, b"".join(self.parts), final=True, **self.header,
                                bytes=d.bytes, sha256=d.sha.hexdigest())


def track_header(spec, cached: bool, delivery: Delivery) -> dict:
    info = spec.info
    header = {"track_id": spec.key, "cached": cached, "prompt": spec.prompt, "params": spec.params.to_dict(),
              **delivery.header()}
    if spec.context is not None:
        header.update(context=spec.context, variant=spec.variant)
    for key in ("bpm", "meter", "loop"):
        if info.get(key) is not None:
            header[key] = info[key]
    return header


def replay(ts: TrackStream, audio: np.ndarray, chunk_samples: int) -> Iterator[None]:
    """A cached track as a lazy message source, cut where the engine cuts live audio."""
    ts.start()
    yield
    for _, piece, last in split_native(audio, chunk_samples):
        ts.feed(piece, last)
        yield


class LiveTrack:
    """A track being generated: the chunks so far, for listeners that join late (dedup)."""

    def __init__(self, job, native_frames: int):
        self.job = job
        self.native_frames = native_frames
        self.chunks: list[np.ndarray] = []
        self.streams: list[TrackStream] = []
        self.finished = False

    def attach(self, ts: TrackStream) -> None:
        ts.start()
        for i, piece in enumerate(self.chunks):
            ts.feed(piece, self.finished and i == len(self.chunks) - 1)
        if not self.finished:
            self.streams.append(ts)

    def detach(self, ts: TrackStream) -> None:
        if ts in self.streams:
            self.streams.remove(ts)

    def add(self, audio: np.ndarray, last: bool) -> None:
        self.chunks.append(audio)
        self.finished = last
        for ts in list(self.streams):
            ts.feed(audio, last)
        if last:
            self.streams.clear()
