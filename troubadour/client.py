"""Python client for a Troubadour server (protocol/PROTOCOL.md): requests, streamed tracks, events.

One `Client` owns one ZeroMQ DEALER socket and is NOT thread-safe: use one Client per thread. Replies are
demultiplexed by request id in the calling thread, so between two chunks of a stream you may make other
requests or `cancel` it; messages for other requests are buffered (bounded) until read.

Liveness (section 9): while requests are open, silence makes the client `ping`; after `timeout` seconds
without any message, or when the connection drops, it reopens the socket and resends the idempotent
requests (Lazy Pirate), at most `retries` times each, then raises `Timeout`.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import OrderedDict, deque

import xxhash
import zmq

from . import protocol as P
from .errors import TroubadourError
from .heap import tune_for_streaming
from .client_types import (ERROR_CLASSES, PCM, BadRequestError, BusyError, CancelledError,  # noqa: F401
                           Chunk, ConnectionLost, EmptyPromptError, EngineDeadError, EngineError,
                           InternalError, InvalidParamError, ModelError, NotFoundError, ProfileFileError,
                           ProtocolVersionError, ServerError, Timeout, TooLargeError, Track, TrackHeader,
                           TrackStream, UnknownContextError, UnknownTypeError, _check_totals, server_error)
from .client_types import UNREADABLE, OpenRequest, check_address, message_size, peek_id
from .protocol import ProtocolError
from .wire import readable, recv_message, send_message

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
# PROTOCOL.md section 9: safe to resend after reconnecting (prefetch and cancel are not).
RESENDABLE = frozenset({P.INFO, P.HEALTH, P.LIST_PROFILES, P.PING, P.SUBSCRIBE, P.UNSUBSCRIBE,
                        P.RELOAD_PROFILES, P.GET_TRACK})
MAX_BUFFERED_MESSAGES = 1024      # per open request not being read
MAX_BUFFERED_BYTES = 64 << 20
MAX_EVENTS = 1000                 # oldest events are dropped beyond this
BACKOFF_START, BACKOFF_MAX = 0.25, 8.0


class Client:
    """A connection to a Troubadour server. Not thread-safe: one Client per thread.

    `timeout`: seconds without any message from the server (while waiting) before reconnecting.
    `retries`: resends per request after that; then `Timeout` (so 1 + retries tries in all).
    `violations`: protocol breaches seen from the server (strings, last 100), for diagnosis.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, timeout: float = 10.0, retries: int = 3, context=None,
                 server_key=None, client_key=None):
        """`server_key` (the server's public .key file) and `client_key` (this client's .key_secret file)
        switch on CURVE for servers started with --curve-secret/--allow (see `troubadour keys`)."""
        self.address, self.timeout, self.retries = address, float(timeout), int(retries)
        # a bad setting would otherwise read as a server that does not answer, after every retry
        if not self.timeout > 0:
            raise TroubadourError(f"timeout must be > 0 seconds, got {timeout!r}", code="invalid_param",
                                  field="timeout")
        if self.retries < 0:
            raise TroubadourError(f"retries must be >= 0, got {retries!r}", code="invalid_param", field="retries")
        check_address(address)
        if bool(server_key) != bool(client_key):
            raise TroubadourError("server_key and client_key go together", code="invalid_param", field="client_key")
        self._curve = (server_key, client_key) if server_key else None
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
        tune_for_streaming()   # received chunks stay in the heap instead of page-faulting (heap.py)
        self._connect()

    # -- socket
    def _connect(self) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.linger = 0
        # ZMTP heartbeats drop a half-open TCP connection; the monitor then tells us (requests died with it).
        s.setsockopt(zmq.HEARTBEAT_IVL, max(100, int(self._ping_every * 1000)))
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, max(300, int(self.timeout * 1000)))
        self._mon = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        if self._curve:
            from .auth import secure_client
            secure_client(s, *self._curve)
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
    def _start(self, msg_type: str, body: dict, *, resend: bool | None = None, internal: bool = False) -> OpenRequest:
        if self._sock is None:
            raise TroubadourError("client is closed", code="closed")
        body = {k: v for k, v in body.items() if v is not None}
        req = OpenRequest(next(self._ids), msg_type, body, msg_type in RESENDABLE if resend is None else resend,
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
            send_message(self._sock, [b"", *frames])
        except zmq.Again:
            pass   # queue full or no peer: the liveness check resends

    def _busy(self) -> bool:
        return self._subscription is not None or any(not r.internal for r in self._open.values())

    def _next(self, req: OpenRequest) -> P.Message:
        """The next message for `req`; an `error` is raised as its ServerError."""
        while not req.queue:
            if req.error is not None:
                raise req.error
            if not req.open:
                raise TroubadourError(f"request {req.id} has no more messages", code="closed")
            self._wait()
        msg = req.queue.popleft()
        req.nbytes -= message_size(msg)
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
            while readable(self._sock):
                try:
                    frames = recv_message(self._sock)
                except zmq.Again:   # readable() said yes; kept in case ZeroMQ ever disagrees
                    break
                # zero-copy for the audio payload (a view of ZeroMQ's buffer), bytes for the small frames
                self._dispatch([f.bytes for f in frames[:4]] + [f.buffer for f in frames[4:]])
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
        while readable(self._mon):   # asked before every idle request: a receive ending in zmq.Again costs more
            try:
                frames = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            # frame 0: uint16 event id, uint32 value (native order); zmq.utils.monitor would import asyncio
            dropped |= struct.unpack_from("=H", frames[0])[0] == zmq.EVENT_DISCONNECTED
        return dropped

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
            rid = peek_id(frames)
            if rid is UNREADABLE:
                return self._unattributable(e)
            req = self._open.get(rid) if rid is not None else None
            return self._abandon(req, e) if req else self._violation(f"undecodable message: {e}")
        body = msg.body
        rid, seq = body["id"], body["seq"]   # decode checked both
        if rid is None:
            if msg.type != P.EVENT:
                return self._violation(f"{msg.type} with id nil: {msg.body}")
            if seq != self._event_seq:
                self.events_lost += max(0, seq - self._event_seq)
            self._event_seq = seq + 1
            if len(self._events) >= MAX_EVENTS:
                self._events.popleft()
                self.events_dropped += 1
            self._events.append(msg.body)
            return
        req = self._open.get(rid)
        if req is None:
            if self._closed.get(rid) is False:
                self._violation(f"{msg.type} seq {seq} for request {rid} after its final message")
            return
        if seq != req.seq and not (body["final"] and msg.type == P.ERROR):
            self._abandon(req, ProtocolError(f"request {rid}: seq {seq} after {req.seq - 1}; messages lost"))
            return
        req.seq = seq + 1   # (a final error may follow a gap: the server dropped an unread backlog, busy)
        if msg.type == P.SUBSCRIBED:
            self._event_seq = 0
        if body["final"]:
            self._finish(req)
        if req.internal:
            return
        req.queue.append(msg)
        req.nbytes += message_size(msg)
        if len(req.queue) > MAX_BUFFERED_MESSAGES or req.nbytes > MAX_BUFFERED_BYTES:
            self._abandon(req, ProtocolError(f"request {rid}: too many unread messages", code="overflow"))

    def _unattributable(self, e: ProtocolError) -> None:
        """An undecodable message with no readable id: some open request may have lost its final message and
        would wait forever (pings keep the connection alive), so every open request fails (PROTOCOL.md 4)."""
        self._violation(f"undecodable message with no readable id: {e}")
        for req in [r for r in self._open.values() if not r.internal]:
            self._abandon(req, ProtocolError(f"unreadable message from the server, which may have been this "
                                             f"request's: {e}", code=e.code))

    def _finish(self, req: OpenRequest, abandoned: bool = False) -> None:
        req.open = False
        self._open.pop(req.id, None)
        self._closed[req.id] = abandoned
        while len(self._closed) > 256:
            self._closed.popitem(last=False)

    def _fail(self, req: OpenRequest, exc: Exception) -> None:
        req.error = exc
        req.queue.clear()
        req.nbytes = 0
        if req.open:
            self._finish(req, abandoned=True)

    def _abandon(self, req: OpenRequest, exc: Exception) -> None:
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
        """Fetch a whole track. Checked against the server's byte count and xxh3_64 hash."""
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
        _check_totals(track.header, len(track.audio), xxhash.xxh3_64_hexdigest(track.audio))
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
