"""Python client for a Troubadour server (protocol/PROTOCOL.md): requests, streamed tracks, events.

One `Client` owns one ZeroMQ DEALER socket and is NOT thread-safe: use one Client per thread. Replies are
demultiplexed by request id in the calling thread, so between two chunks of a stream you may make other
requests or `cancel` it; messages for other requests are buffered (bounded) until read.

Liveness (section 9): while requests are open, silence makes the client `ping`; after `timeout` seconds
without any message, or when the connection drops, it reopens the socket and resends the idempotent
requests (Lazy Pirate), at most `retries` times each, then raises `Timeout`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import struct
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from . import protocol as P
from .errors import TroubadourError
from .protocol import ProtocolError

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
# PROTOCOL.md section 9: safe to resend after reconnecting (prefetch and cancel are not).
RESENDABLE = frozenset({P.INFO, P.HEALTH, P.LIST_PROFILES, P.PING, P.SUBSCRIBE, P.UNSUBSCRIBE,
                        P.RELOAD_PROFILES, P.GET_TRACK})
MAX_BUFFERED_MESSAGES = 1024      # per open request not being read
MAX_BUFFERED_BYTES = 64 << 20
MAX_EVENTS = 1000                 # oldest events are dropped beyond this
BACKOFF_START, BACKOFF_MAX = 0.25, 8.0
PCM = {"pcm_s16le": ("s16le", 2), "pcm_f32le": ("f32le", 4)}


# ---------------------------------------------------------------- errors
class ConnectionLost(TroubadourError):
    """The server stopped answering and the request could not (or may not) be resent."""

    code = "connection_lost"


class Timeout(ConnectionLost):
    code = "timeout"

    def __init__(self, address: str, tries: int):
        super().__init__(f"no answer from {address} after {tries} tries")
        self.address, self.tries = address, tries


class ServerError(TroubadourError):
    """An `error` reply: `code`, `message`, `field` as sent; `retryable` per PROTOCOL.md section 7."""

    retryable = False

    def __init__(self, body: dict, request: str | None = None):
        super().__init__(str(body.get("message", "")), code=str(body.get("code", P.INTERNAL)),
                         field=body.get("field"))
        self.body, self.request, self.id = body, request, body.get("id")


class BadRequestError(ServerError): pass
class ProtocolVersionError(ServerError): pass
class UnknownTypeError(ServerError): pass
class TooLargeError(ServerError): pass
class InvalidParamError(ServerError): pass
class EmptyPromptError(InvalidParamError): pass
class UnknownContextError(ServerError): pass
class ProfileFileError(ServerError): pass
class BusyError(ServerError): retryable = True
class CancelledError(ServerError): pass
class NotFoundError(ServerError): retryable = True
class EngineError(ServerError): pass
class EngineDeadError(EngineError): retryable = True
class ModelError(ServerError): pass
class InternalError(ServerError): pass


ERROR_CLASSES = {
    "bad_request": BadRequestError, "unsupported_version": ProtocolVersionError, "unknown_type": UnknownTypeError,
    "too_large": TooLargeError, "invalid_param": InvalidParamError, "empty_prompt": EmptyPromptError,
    "unknown_context": UnknownContextError, "profile_error": ProfileFileError, "busy": BusyError,
    "cancelled": CancelledError, "not_found": NotFoundError, "engine_error": EngineError,
    "engine_dead": EngineDeadError, "model_error": ModelError, "internal": InternalError,
}


def server_error(body: dict, request: str | None = None) -> ServerError:
    """The typed exception for an `error` body; unknown codes count as internal (section 7)."""
    return ERROR_CLASSES.get(body.get("code"), InternalError)(body, request)


# ---------------------------------------------------------------- tracks
class TrackHeader(dict):
    """The `track` message body; fields also readable as attributes (header.track_id)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Chunk:
    offset: int     # first frame of this piece (for wav/ogg: frames fed to the encoder, see PROTOCOL.md)
    frames: int
    data: bytes


@dataclass
class Track:
    header: dict
    audio: bytes                                # all payload bytes, in order
    end: dict = field(default_factory=dict)     # the `end` body when streamed

    track_id = property(lambda self: self.header["track_id"])
    cached = property(lambda self: self.header["cached"])
    sample_rate = property(lambda self: self.header["sample_rate"])
    channels = property(lambda self: self.header["channels"])
    frames = property(lambda self: self.header["frames"])
    format = property(lambda self: self.header["format"])
    sha256 = property(lambda self: self.end.get("sha256") or self.header.get("sha256"))

    def samples(self):
        """float32 array (channels, frames)."""
        if self.format in PCM:
            from .audio import from_pcm
            return from_pcm(self.audio, self.channels, PCM[self.format][0])
        import soundfile as sf
        data, _ = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)
        return data.T.copy()

    def save(self, path) -> Path:
        """Write an audio file: WAV or OGG by suffix (WAV otherwise; raw bytes for .raw/.pcm)."""
        from .audio import _atomic_write, write_audio
        path = Path(path)
        suffix = path.suffix.lower().lstrip(".")
        if suffix in ("raw", "pcm") and self.format in PCM:
            target = self.format
        else:
            target = suffix if suffix in ("wav", "ogg") else self.format if self.format in ("wav", "ogg") else "wav"
        if target == self.format:   # already in the wanted container: keep the server's bytes
            return _atomic_write(path, lambda f: f.write(self.audio))
        return write_audio(path, self.samples(), self.sample_rate, target)


# ---------------------------------------------------------------- requests
class _Request:
    def __init__(self, rid, msg_type: str, body: dict, resend: bool, internal: bool):
        self.id, self.type, self.body = rid, msg_type, body
        self.resend, self.internal = resend, internal   # internal: replies are not kept (pings, cancels)
        self.open, self.error, self.tries = True, None, 1
        self.seq, self.nbytes = 0, 0
        self.queue: deque = deque()

    def frames(self) -> list:
        return P.encode(self.type, {**self.body, "id": self.id})

    def restart(self) -> None:
        self.seq, self.nbytes = 0, 0
        self.queue.clear()


class Client:
    """A connection to a Troubadour server. Not thread-safe: one Client per thread.

    `timeout`: seconds without any message from the server (while waiting) before reconnecting.
    `retries`: resends per request after that; then `Timeout` (so 1 + retries tries in all).
    `violations`: protocol breaches seen from the server (strings, last 100), for diagnosis.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 10.0, retries: int = 3, context=None):
        self.address, self.timeout, self.retries = address, float(timeout), int(retries)
        self._ctx = context or zmq.Context.instance()
        self._ids = itertools.count(1)
        self._open: dict = {}
        self._closed: OrderedDict = OrderedDict()   # recent final ids -> abandoned by us?
        self._events: deque = deque()
        self._event_seq, self._subscription = 0, None
        self.events_dropped = self.events_lost = self.reconnects = 0
        self.violations: deque = deque(maxlen=100)
        self._backoff, self._failures = BACKOFF_START, 0
        self._ping_every = max(0.05, self.timeout / 3)
        self._last_seen = self._last_ping = time.monotonic()
        self._sock = None
        self._connect()

    # -- socket
    def _connect(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.linger = 0
        # ZMTP heartbeats drop a half-open TCP connection; the monitor then tells us (requests died with it).
        s.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(self._ping_every * 1000)))
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(300, int(self.timeout * 1000)))
        self._mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            s.connect(self.address)
        except zmq.ZMQError as e:
            self._sock = s
            self._drop_socket()
            raise TroubadourError(f"cannot connect to {self.address!r}: {e}", code="invalid_param",
                                  field="server") from None
        self._sock = s
        self._poller = zmq.Poller()
        self._poller.register(s, zmq.POLLIN)
        self._poller.register(self._mon, zmq.POLLIN)

    def _drop_socket(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._mon.close(0)
        self._sock.close(0)
        self._sock = None

    def close(self) -> None:
        if self._sock is not None:
            self._drop_socket()
        for r in list(self._open.values()):
            self._fail(r, TroubadourError("client closed", code="closed"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sending and receiving
    def _start(self, msg_type: str, body: dict, *, resend: bool | None = None, internal: bool = False) -> _Request:
        if self._sock is None:
            raise TroubadourError("client is closed", code="closed")
        body = {k: v for k, v in body.items() if v is not None}
        req = _Request(next(self._ids), msg_type, body, msg_type in RESENDABLE if resend is None else resend,
                       internal)
        frames = req.frames()
        if sum(len(f) for f in frames) > P.MAX_REQUEST_BYTES:
            # the server would drop the connection without a reply
            raise ProtocolError(f"{msg_type} request over {P.MAX_REQUEST_BYTES} bytes", code=P.TOO_LARGE)
        if not self._busy():   # a drop noticed while idle lost nothing; restart the silence clock
            self._drain_monitor()
            self._last_seen = time.monotonic()
        self._open[req.id] = req
        self._send(frames)
        return req

    def _send(self, frames: list) -> None:
        try:
            self._sock.send_multipart([b"", *frames], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass   # queue full or no peer: the liveness check resends

    def _busy(self) -> bool:
        return self._subscription is not None or any(not r.internal for r in self._open.values())

    def _next(self, req: _Request) -> P.Message:
        """The next message for `req`; an `error` is raised as its ServerError."""
        while not req.queue:
            if req.error is not None:
                raise req.error
            if not req.open:
                raise TroubadourError(f"request {req.id} has no more messages", code="closed")
            self._wait()
        msg = req.queue.popleft()
        req.nbytes -= _size(msg)
        if msg.type == P.ERROR:
            raise server_error(msg.body, req.type)
        return msg

    def _wait(self, until: float | None = None) -> None:
        """Poll once: dispatch what arrived, ping when quiet, reconnect when silent too long."""
        now = time.monotonic()
        busy = self._busy()
        dead_at = self._last_seen + self.timeout
        ping_at = max(self._last_seen, self._last_ping) + self._ping_every
        wake = min(dead_at, ping_at) if busy else now + self.timeout
        if until is not None:
            wake = min(wake, until)
        ready = dict(self._poller.poll(max(0.0, wake - now) * 1000))
        if self._sock in ready:
            while True:
                try:
                    frames = self._sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._dispatch(frames)
        if self._mon in ready and self._drain_monitor() and self._busy():
            self._lost("connection lost")
            return
        if not busy:
            return
        now = time.monotonic()
        if now >= self._last_seen + self.timeout:
            self._lost("no answer")
        elif now >= max(self._last_seen, self._last_ping) + self._ping_every:
            self._last_ping = now
            self._start(P.PING, {}, resend=False, internal=True)

    def _drain_monitor(self) -> bool:
        dropped = False
        while True:
            try:
                frames = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return dropped
            # frame 0: uint16 event id, uint32 value (native order); zmq.utils.monitor would import asyncio
            dropped |= struct.unpack_from("=H", frames[0])[0] == zmq.EVENT_DISCONNECTED

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _dispatch(self, frames: list) -> None:
        self._last_seen = time.monotonic()
        self._backoff, self._failures = BACKOFF_START, 0
        if not frames or frames[0] != b"":
            return self._violation("message without the empty delimiter frame")
        try:
            msg = P.decode(frames[1:], reply=True)
        except ProtocolError as e:
            req = self._open.get(_peek_id(frames))
            return self._fail(req, e) if req else self._violation(f"undecodable message: {e}")
        rid = msg.id
        if rid is None:
            if msg.type != P.EVENT:
                return self._violation(f"{msg.type} with id nil: {msg.body}")
            if msg.seq != self._event_seq:
                self.events_lost += max(0, msg.seq - self._event_seq)
            self._event_seq = msg.seq + 1
            if len(self._events) >= MAX_EVENTS:
                self._events.popleft()
                self.events_dropped += 1
            self._events.append(msg.body)
            return
        req = self._open.get(rid)
        if req is None:
            if self._closed.get(rid) is False:
                self._violation(f"{msg.type} seq {msg.seq} for request {rid} after its final message")
            return
        if msg.seq != req.seq:
            self._abandon(req, ProtocolError(f"request {rid}: seq {msg.seq} after {req.seq - 1}; messages lost"))
            return
        req.seq += 1
        if msg.type == P.SUBSCRIBED:
            self._event_seq = 0
        if msg.final:
            self._finish(req)
        if req.internal:
            return
        req.queue.append(msg)
        req.nbytes += _size(msg)
        if len(req.queue) > MAX_BUFFERED_MESSAGES or req.nbytes > MAX_BUFFERED_BYTES:
            self._abandon(req, ProtocolError(f"request {rid}: too many unread messages", code="overflow"))

    def _finish(self, req: _Request, abandoned: bool = False) -> None:
        req.open = False
        self._open.pop(req.id, None)
        self._closed[req.id] = abandoned
        while len(self._closed) > 256:
            self._closed.popitem(last=False)

    def _fail(self, req: _Request, exc: Exception) -> None:
        req.error = exc
        req.queue.clear()
        req.nbytes = 0
        if req.open:
            self._finish(req, abandoned=True)

    def _abandon(self, req: _Request, exc: Exception) -> None:
        """Fail `req` here and tell the server to stop it (fire and forget)."""
        was_open = req.open
        self._fail(req, exc)
        if was_open and self._sock is not None:
            self._start(P.CANCEL, {"target": req.id}, resend=False, internal=True)

    def _lost(self, reason: str) -> None:
        """Lazy Pirate: new socket, resend what may be resent, fail the rest."""
        self.reconnects += 1
        self._failures += 1
        self._drop_socket()
        for r in list(self._open.values()):
            if r.internal:
                self._finish(r, abandoned=True)
            elif not r.resend:
                self._fail(r, ConnectionLost(f"{reason} from {self.address}; {r.type} is not resent"))
            elif r.tries > self.retries:
                self._fail(r, Timeout(self.address, r.tries))
            else:
                r.tries += 1
        if self._open or self._subscription is not None:   # nothing to resend: no need to wait
            time.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        self._connect()
        self._last_seen = self._last_ping = time.monotonic()
        for r in list(self._open.values()):
            r.restart()
            self._send(r.frames())
        if self._subscription is not None and not any(r.type == P.SUBSCRIBE for r in self._open.values()):
            self._start(P.SUBSCRIBE, dict(self._subscription), resend=True, internal=True)

    # -- public API
    def request(self, msg_type: str, fields: dict | None = None) -> dict:
        """Send one request; return the body of its final reply (raises ServerError on `error`)."""
        req = self._start(msg_type, dict(fields or {}))
        while True:
            msg = self._next(req)
            if msg.final:
                return msg.body

    def info(self) -> dict:
        body = self.request(P.INFO)
        if body.get("protocol_version") != P.VERSION:
            raise ProtocolVersionError({"code": "unsupported_version",
                                        "message": f"server speaks protocol {body.get('protocol_version')}"})
        return body

    def health(self) -> dict:
        return self.request(P.HEALTH)

    def list_profiles(self) -> dict:
        return self.request(P.LIST_PROFILES)

    def ping(self) -> dict:
        return self.request(P.PING)

    def reload_profiles(self) -> dict:
        return self.request(P.RELOAD_PROFILES)

    def stream_track(self, context=None, *, variant=None, prompt=None, params=None, format="pcm_s16le",
                     sample_rate=None, regenerate=False, cached_only=False, priority=None,
                     fallback=None) -> "TrackStream":
        """Iterate a streamed track: a TrackHeader, then Chunks. `.id` is the request id for cancel()."""
        fields = dict(context=context, variant=variant, prompt=prompt, params=params, format=format,
                      sample_rate=sample_rate, regenerate=regenerate or None, cached_only=cached_only or None,
                      priority=priority, fallback=fallback, stream=True)
        return TrackStream(self, self._start(P.GET_TRACK, fields))

    def get_track(self, context=None, *, variant=None, prompt=None, params=None, format="pcm_s16le",
                  sample_rate=None, regenerate=False, cached_only=False, priority=None, fallback=None,
                  stream=True) -> Track:
        """Fetch a whole track. Checked against the server's byte count and sha256."""
        kw = dict(variant=variant, prompt=prompt, params=params, format=format, sample_rate=sample_rate,
                  regenerate=regenerate, cached_only=cached_only, priority=priority, fallback=fallback)
        if stream:
            with self.stream_track(context, **kw) as ts:
                audio = b"".join(c.data for c in ts if isinstance(c, Chunk))
            return Track(ts.header, audio, ts.end)
        fields = dict(kw, context=context, regenerate=regenerate or None, cached_only=cached_only or None)
        msg = self._next(self._start(P.GET_TRACK, fields))
        if msg.type != P.TRACK or not msg.final:
            raise ProtocolError(f"get_track answered with {msg.type} (final={msg.final})")
        track = Track(TrackHeader(msg.body), bytes(msg.payload))
        _check_totals(track.header, track.audio, hashlib.sha256(track.audio))
        return track

    def prefetch(self, contexts, *, variants="all", priority=None, on_progress=None, on_accepted=None) -> dict:
        """Generate ahead; returns the `done` body plus `jobs` from `accepted`. Never resent."""
        contexts = [contexts] if isinstance(contexts, str) else list(contexts)
        req = self._start(P.PREFETCH, {"contexts": contexts, "variants": variants, "priority": priority,
                                       "stream": True})
        jobs = []
        while True:
            msg = self._next(req)
            if msg.type == P.ACCEPTED and not msg.final:
                jobs = msg.body.get("jobs", [])
                if on_accepted:
                    on_accepted(msg.body)
            elif msg.type == P.PROGRESS and not msg.final:
                if on_progress:
                    on_progress(msg.body)
            elif msg.type == P.DONE and msg.final:
                done = dict(msg.body)
                total = done.get("generated", 0) + done.get("cached", 0) + len(done.get("failed", []))
                if total != len(jobs):
                    self._violation(f"prefetch {req.id}: done counts {total} jobs, accepted {len(jobs)}")
                done.setdefault("jobs", jobs)
                return done
            else:
                raise ProtocolError(f"unexpected {msg.type} (final={msg.final}) in a prefetch stream")

    def cancel(self, target) -> dict:
        """Cancel an open request (an id, or an object with `.id` such as a TrackStream); the `cancelled` body."""
        return self.request(P.CANCEL, {"target": getattr(target, "id", target)})

    def subscribe(self, events=None) -> dict:
        """Receive events (all by default); read them with next_event()/events(). Kept across reconnects."""
        fields = {"events": list(events) if events is not None else None}
        body = self.request(P.SUBSCRIBE, fields)
        self._subscription = fields
        return body

    def unsubscribe(self) -> dict:
        self._subscription = None
        return self.request(P.UNSUBSCRIBE)

    def next_event(self, timeout: float | None = None) -> dict | None:
        """The next event body, or None if none came within `timeout` seconds (None: wait forever)."""
        until = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            if self._subscription is None and not self._open:
                raise TroubadourError("not subscribed", code="closed")
            if self._failures > self.retries:
                raise Timeout(self.address, self._failures)
            if until is not None and time.monotonic() >= until:
                return None
            self._wait(until)
        return self._events.popleft()

    def events(self, timeout: float | None = None):
        """Yield event bodies until none arrives for `timeout` seconds."""
        while (ev := self.next_event(timeout)) is not None:
            yield ev


class TrackStream:
    """A streamed get_track: iterate for a TrackHeader, then Chunks; the `end` message is verified.

    After a reconnect the server restarts the track from the beginning; the bytes already yielded are
    checked against the new stream and skipped, so iteration just continues."""

    def __init__(self, client: Client, req: _Request):
        self._client, self._req = client, req
        self.id = req.id
        self.header: TrackHeader | None = None
        self.end: dict | None = None
        self._sha, self._bytes, self._frames = hashlib.sha256(), 0, 0      # this attempt
        self._yielded, self._yielded_sha = 0, hashlib.sha256()              # all attempts
        self._skip, self._prefix_sha, self._want_prefix = 0, None, None

    def __iter__(self):
        return self

    def __next__(self):
        while self.end is None:
            out = self._handle(self._client._next(self._req))
            if out is not None:
                return out
        raise StopIteration

    def close(self) -> None:
        """Stop the stream (cancels it on the server if still open)."""
        if self._req.open:
            self._client._abandon(self._req, CancelledError({"code": "cancelled", "message": "closed by client"}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _handle(self, msg: P.Message):
        body = msg.body
        if msg.type == P.TRACK and not msg.final:
            if self.header is None:
                self.header = TrackHeader(body)
                return self.header
            for key in ("track_id", "format", "sample_rate", "channels", "frames"):
                if body.get(key) != self.header.get(key):
                    raise ProtocolError(f"track {key} changed after reconnecting")
            self._sha, self._bytes, self._frames = hashlib.sha256(), 0, 0
            self._skip, self._prefix_sha = self._yielded, hashlib.sha256()
            self._want_prefix = self._yielded_sha.hexdigest()
            return None
        if self.header is None:
            raise ProtocolError(f"get_track stream started with {msg.type}")
        if msg.type == P.CHUNK and not msg.final:
            return self._chunk(body, bytes(msg.payload))
        if msg.type == P.END and msg.final:
            if body.get("frames") != self.header.get("frames"):
                raise ProtocolError(f"end.frames {body.get('frames')} != track.frames {self.header.get('frames')}")
            _check_totals({**self.header, **body}, None, self._sha, self._bytes)
            if self._skip or self._yielded != self._bytes:
                raise ProtocolError("stream ended before the audio received before reconnecting")
            if self._frames != self.header.get("frames"):
                text = f"chunk frames add up to {self._frames}, track.frames is {self.header.get('frames')}"
                if self.header.get("format") in PCM:
                    raise ProtocolError(text)
                self._client._violation(f"get_track {self.id} ({self.header.get('format')}): {text}")
            self.end = body
            return None
        raise ProtocolError(f"unexpected {msg.type} (final={msg.final}) in a get_track stream")

    def _chunk(self, body: dict, data: bytes):
        offset, frames = body.get("offset"), body.get("frames")
        if body.get("bytes") != len(data) or not data:
            raise ProtocolError(f"chunk says {body.get('bytes')} bytes, carries {len(data)}")
        pcm = PCM.get(self.header.get("format"))
        size = pcm[1] * self.header.get("channels", 1) if pcm else 1
        if pcm and (len(data) % size or frames != len(data) // size or offset != self._frames):
            raise ProtocolError(f"chunk offset {offset}/frames {frames} do not match its {len(data)} bytes")
        self._frames += frames or 0
        self._sha.update(data)
        self._bytes += len(data)
        if self._skip:
            take = min(self._skip, len(data))
            self._prefix_sha.update(data[:take])
            self._skip -= take
            if not self._skip and self._prefix_sha.hexdigest() != self._want_prefix:
                raise ProtocolError("track audio changed after reconnecting")
            data = data[take:]
            if not data:
                return None
            if pcm:
                offset, frames = offset + take // size, len(data) // size
        self._yielded += len(data)
        self._yielded_sha.update(data)
        return Chunk(offset, frames, data)


def _check_totals(fields: dict, audio, sha, nbytes: int | None = None) -> None:
    """Compare a track's `bytes`/`sha256` (and PCM frame count) with what arrived."""
    nbytes = len(audio) if audio is not None else nbytes
    if fields.get("bytes") != nbytes:
        raise ProtocolError(f"received {nbytes} bytes, server says {fields.get('bytes')}")
    if fields.get("sha256") != sha.hexdigest():
        raise ProtocolError("sha256 of the received audio does not match the server's")
    pcm = PCM.get(fields.get("format"))
    if pcm and nbytes != fields.get("frames", -1) * pcm[1] * fields.get("channels", 1):
        raise ProtocolError(f"{nbytes} bytes is not {fields.get('frames')} frames of {fields.get('format')}")


def _size(msg: P.Message) -> int:
    return len(msg.payload) if msg.payload is not None else 0


def _peek_id(frames):
    """The id of an undecodable message, if its body can be read at all."""
    try:
        return P.request_id(msgpack.unpackb(frames[3], raw=False))
    except Exception:
        return None


def add_cli(sub) -> None:
    from .client_cli import add_cli as add
    add(sub)
