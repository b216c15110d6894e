"""Per-request output state on the server: sequencing, backpressure, and fan-out of live tracks.

Everything here runs on the server's I/O thread.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import zmq

from . import protocol as P
from .delivery import MAX_PIECE_BYTES, Delivery, split_native
from .prebuilt import Prebuilt

# A client that stops reading gets at most this many queued messages (≈ a minute of audio) before its
# stream is dropped; memory stays bounded and the track is still generated and cached.
MAX_OUTBOX = 128
MAX_EVENTS_QUEUED = 2048   # per subscriber, a few hundred bytes each
# cached replays: delivered bytes per chunk message, at most; the rest of the 1 MiB limit is room for the
# resampler, whose output per piece varies by a few samples
PIECE_BYTES = MAX_PIECE_BYTES * 15 // 16


class Reply:
    """One request's replies: seq numbering, exactly one final message, a bounded outbox."""

    def __init__(self, envelope: list, req_id, kind: str):
        self.envelope = envelope
        self.id = req_id
        self.key = (self.client, req_id)   # where the server files it
        self.kind = kind
        self.seq = 0
        self.closed = False          # the final message is queued
        self.dropped = False
        self.outbox: deque = deque()
        self.source: Iterator | None = None   # lazily produced messages (cached replays)
        self.job = None              # the GenJob this request waits on, if any
        self.stream = None           # TrackStream when this request receives a track
        self.trailer: list = []      # other requests' final messages that must follow this one's (cancel)
        self.stalled_since: float | None = None   # when its client stopped taking messages (server._flush)

    @property
    def client(self) -> bytes:
        return bytes(self.envelope[0])

    def send(self, msg_type: str, payload=None, final: bool = False, **fields) -> None:
        if self.closed:
            return
        self.outbox.append(P.reply(self.id, self.seq, final, msg_type, payload, **fields))
        self.seq += 1
        self.closed = final

    def send_prebuilt(self, message) -> None:
        """A prebuilt.Prebuilt message (a remembered track's header, chunk or end), stamped with this
        request's id and the next seq."""
        if self.closed:
            return
        self.outbox.append(message.frames(self.id, self.seq))
        self.seq += 1
        self.closed = message.final

    def send_after(self, other: "Reply", msg_type: str, **fields) -> None:
        """Queue this request's final message behind everything `other` still has to send (its own final
        included): send passes serve requests in turn, so only one queue keeps that order on the wire."""
        frames = P.reply(self.id, self.seq, True, msg_type, **fields)
        self.seq += 1
        self.closed = True
        other.outbox.append(frames)
        other.trailer.append(frames)

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


class Subscription:
    def __init__(self, envelope: list, events: list, waiting: dict | None = None):
        self.envelope = envelope
        self.events = set(events)
        # client -> Subscription with events to send (the server's): send passes visit those alone, so
        # thousands of idle (or vanished, not yet known gone) subscribers cost nothing per pass
        self.waiting = waiting
        self.seq = 0
        # One reload can queue an event per variant at once; a subscriber that does not read loses the oldest.
        self.outbox: deque = deque(maxlen=MAX_EVENTS_QUEUED)
        self.source = None
        self.stalled_since = None
        self.after: Reply | None = None   # the `subscribed` reply, which must reach the client before any event

    @property
    def client(self) -> bytes:
        return bytes(self.envelope[0])

    def refill(self) -> None:
        pass

    def push(self, name: str, **fields) -> None:
        if name in self.events:
            self.outbox.append(P.event_frames(self.seq, name, **fields))
            self.seq += 1
            if self.waiting is not None:
                self.waiting[self.client] = self


class PrefetchState:
    def __init__(self, reply: Reply, jobs: list):
        self.reply = reply
        self.pending: dict = {}   # track key -> the (context, variant) jobs waiting on it (two may share one)
        for spec, cached in jobs:
            if not cached:
                self.pending.setdefault(spec.key, []).append((spec.context, spec.variant))
        self.cached = sum(1 for _, cached in jobs if cached)
        self.generated = 0
        self.failed: list = []

    def finish_if_done(self) -> None:
        if not self.pending:
            self.reply.send(P.DONE, final=True, generated=self.generated, cached=self.cached, failed=self.failed)


@dataclass
class TrackStream:
    """Sends one track to one request: header, chunks (or one whole message), end."""

    reply: Reply
    delivery: Delivery
    header: dict
    stream: bool
    parts: list = field(default_factory=list)   # non-streamed: payload pieces until the end
    record: list | None = None                  # pieces kept for the memo of delivered tracks

    def start(self) -> None:
        if self.stream:
            self.reply.send(P.TRACK, **self.header)

    def feed(self, audio: np.ndarray, last: bool) -> None:
        d = self.delivery
        pieces = d.feed(audio, last)
        self.emit(pieces, last, d.frames, d.bytes, d.digests() if last else None)

    def emit(self, pieces, last: bool, frames: int = 0, nbytes: int = 0, digests: dict | None = None) -> None:
        for offset, n, data in pieces:
            if self.stream:
                self.reply.send(P.CHUNK, data, offset=offset, frames=n, bytes=len(data))
            else:
                self.parts.append(data)
            if self.record is not None:
                self.record.append((offset, n, data))
        if last:
            if self.stream:
                self.reply.send(P.END, final=True, frames=frames, bytes=nbytes, **digests)
            else:
                self.reply.send(P.TRACK, b"".join(self.parts), final=True, **self.header, bytes=nbytes,
                                **digests)


class Remembered:
    """A delivered track as ready messages: payload pieces held as zmq.Frames (each send then shares the
    buffer, a refcount in ZeroMQ, instead of pyzmq registering a zero-copy buffer with its garbage-collector
    thread on every send), their chunk messages and the end message prebuilt, and the header messages
    built so far (one per context/variant that names this track)."""

    __slots__ = ("pieces", "chunks", "end", "frames", "nbytes", "digests", "headers", "wholes", "payload")

    def __init__(self, pieces: list, frames: int, nbytes: int, digests: dict):
        self.pieces = [(offset, n, zmq.Frame(data, copy=False)) for offset, n, data in pieces]
        self.chunks = [Prebuilt(P.CHUNK, False, data, offset=offset, frames=n, bytes=len(data))
                       for offset, n, data in self.pieces]
        self.end = Prebuilt(P.END, True, frames=frames, bytes=nbytes, **digests)
        self.frames, self.nbytes, self.digests = frames, nbytes, digests
        self.headers: dict = {}
        self.wholes: dict = {}   # non-streamed messages, as headers; they share `payload`
        self.payload: zmq.Frame | None = None   # the pieces joined, made on the first non-streamed request

    @property
    def held(self) -> int:
        return self.nbytes * (2 if self.payload is not None else 1)

    def header(self, key, build) -> Prebuilt:
        """The prebuilt header for `key` (what else the header says besides the track: context, variant,
        profile info), made by `build()` the first time."""
        message = self.headers.get(key)
        if message is None:
            if len(self.headers) >= 64:   # bounded: contexts come and go with profile edits
                self.headers.clear()
            message = self.headers[key] = Prebuilt(P.TRACK, False, **build())
        return message

    def whole(self, key, build) -> Prebuilt:
        """The prebuilt non-streamed message for `key` (`build()` gives the header's fields). Every request
        sends the one joined payload: unread replies no longer hold a copy of the track each."""
        message = self.wholes.get(key)
        if message is None:
            if self.payload is None:
                self.payload = zmq.Frame(b"".join(f.buffer for _, _, f in self.pieces), copy=False)
            if len(self.wholes) >= 64:
                self.wholes.clear()
            message = self.wholes[key] = Prebuilt(P.TRACK, True, self.payload, **build(), bytes=self.nbytes,
                                                  **self.digests)
        return message


class Memo:
    """Recently delivered tracks (Remembered), keyed by (track id, format, rate): a repeated cache hit is
    sent without reading the disk, resampling or encoding again. Bounded in bytes (LRU)."""

    def __init__(self, limit_bytes: int = 256 << 20):
        self.limit = limit_bytes
        self.size = 0
        self._items: OrderedDict = OrderedDict()
        self._tracks: dict = {}   # track id -> entries held (any format/rate)

    def get(self, key) -> Remembered | None:
        entry = self._items.get(key)
        if entry is not None:
            self._items.move_to_end(key)
        return entry

    def whole(self, entry: Remembered, key, build) -> Prebuilt:
        """entry.whole(), its joined payload counted against the limit."""
        before = entry.held
        message = entry.whole(key, build)
        self.size += entry.held - before
        while self.size > self.limit:   # (the message keeps its payload alive if its own entry goes)
            self._forget(next(iter(self._items)))
        return message

    def holds(self, track_id: str) -> bool:
        """Some format/rate of this track is remembered: it can be delivered without the disk cache."""
        return track_id in self._tracks

    def put(self, key, pieces: list, frames: int, nbytes: int, digests: dict) -> None:
        if nbytes > self.limit // 4 or key in self._items:
            return
        self._items[key] = Remembered(pieces, frames, nbytes, digests)
        self._tracks[key[0]] = self._tracks.get(key[0], 0) + 1
        self.size += nbytes
        while self.size > self.limit:
            self._forget(next(iter(self._items)))

    def drop(self, track_id: str) -> None:
        for key in [k for k in self._items if k[0] == track_id]:
            self._forget(key)

    def _forget(self, key) -> None:
        self.size -= self._items.pop(key).held
        left = self._tracks.pop(key[0]) - 1
        if left:
            self._tracks[key[0]] = left


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


def replay(ts: TrackStream, audio: np.ndarray, chunk_samples: int, memo=None, key=None) -> Iterator[None]:
    """A cached track as a lazy message source. The first piece is small so audio starts at once; later ones
    are whole streaming chunks adding up to ~15/16 of the 1 MiB chunk limit once delivered, since per-message
    work dominated a replay (bench/README.md). Bytes are the same whatever the cut (PCM and the resampler are
    stream-exact)."""
    ts.start()
    if memo is not None:
        ts.record = []
    yield
    d = ts.delivery
    chunk_bytes = chunk_samples * d.frame_bytes * d.rate / d.native_rate
    size = max(1, int(PIECE_BYTES // chunk_bytes)) * chunk_samples
    first, rest = audio[:, :chunk_samples], audio[:, chunk_samples:]
    pieces = [(first, rest.shape[1] == 0)]
    pieces += [(piece, last) for _, piece, last in split_native(rest, size)]
    for piece, last in pieces:
        ts.feed(piece, last)
        yield
    if memo is not None:
        memo.put(key, ts.record, d.frames, d.bytes, d.digests())


def replay_memo(reply: Reply, entry: Remembered, header: Prebuilt, batch: int = 4) -> Iterator[None]:
    """A remembered track streamed from its prebuilt messages, as a lazy message source."""
    reply.send_prebuilt(header)
    yield
    for i in range(0, len(entry.chunks), batch):
        for message in entry.chunks[i:i + batch]:
            reply.send_prebuilt(message)
        yield
    reply.send_prebuilt(entry.end)


class LiveTrack:
    """A track being generated: the chunks so far, for listeners that join late (dedup)."""

    def __init__(self, job, native_frames: int):
        self.job = job
        self.native_frames = native_frames
        self.chunks: list[np.ndarray] = []
        self.streams: list[TrackStream] = []
        self.finished = False

    def attach(self, ts: TrackStream) -> None:
        """A late listener gets what exists so far in messages of up to ~1 MiB, as a cached replay does: one
        message per 0.5 s chunk would pass a minute of audio's backlog limit at once and drop it as unread."""
        ts.start()
        if self.chunks:
            so_far = np.concatenate(self.chunks, axis=1)
            d, step = ts.delivery, self.chunks[0].shape[1]
            size = max(1, int(PIECE_BYTES // (step * d.frame_bytes * d.rate / d.native_rate))) * step
            for _, piece, last in split_native(so_far, size):
                ts.feed(piece, self.finished and last)
        if not self.finished:
            self.streams.append(ts)

    def detach(self, ts: TrackStream) -> None:
        if ts in self.streams:
            self.streams.remove(ts)

    def add(self, audio: np.ndarray, last: bool) -> None:
        self.chunks.append(audio)
        self.finished = last
        for ts in list(self.streams):
            try:
                ts.feed(audio, last)
            except Exception as e:   # one listener's delivery failing must not starve the others
                self.streams.remove(ts)
                ts.reply.fail(e)
        if last:
            self.streams.clear()


def recording(keys: set, key, source):
    """`source`, with `key` in `keys` (the memo keys being recorded) until it ends or is dropped."""
    try:
        yield from source
    finally:
        keys.discard(key)


def pinned(cache, key, source, track=None):
    """Keep a cached track from eviction while it is being sent (and `track`, its decoded audio, in
    server.decoded for other requests of it)."""
    try:
        yield from source
    finally:
        cache.unpin(key)
