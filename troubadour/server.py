"""The troubadour server: a ZeroMQ ROUTER I/O loop in front of one engine thread.

The I/O thread (this module) parses requests, answers from the cache, fans live audio out to listeners and
never waits on the model; the engine thread (jobs.Worker) generates and reports back through a queue plus an
inproc wake-up socket. Request handling lives in handlers.py, those reports in events.py.
"""

from __future__ import annotations

import errno
from concurrent.futures import ThreadPoolExecutor
import itertools
import queue
import sys
import threading
import time
import weakref

import zmq

from . import protocol as P
from .cache import DEFAULT_SIZE_LIMIT, TrackCache
from .errors import TroubadourError
from .events import Events
from .geometry import Geometry
from .handlers import Handlers
from .jobs import Scheduler, Worker
from .params import MAX_DURATION
from .parse import RequestParser
from .profiles import check_model_support, load_profiles
from .streams import MAX_OUTBOX, Memo, Reply
from .wire import readable, recv_message, send_message

SEND_BATCH = 16          # messages per holder per pass: fairness between clients
SEND_BYTES = 1 << 19     # a turn ends once this many payload bytes went: one cached-replay chunk (up to
                         # 15/16 MiB) or a few live ones, so a pass over 64 streams stays short
SNDHWM = 64              # per-peer messages queued inside ZMQ; the rest waits in our bounded outboxes
EXIT_ENGINE_DEAD = 70


STALL_S = 60.0             # a cached replay whose client took nothing for this long is dropped (busy): its
                           # decoded track and pin are held for it (a live stream's limit is MAX_OUTBOX)
MAX_FRAMES = 16            # a request is at most 4 frames after its envelope (identity, maybe hops, delimiter)
MAX_UNSENT_REPLIES = 256   # per client: far above its 32 open requests plus quick replies in flight
MAX_ENVELOPE_BYTES = 4096


class ReplyBook(dict):
    """The replies dict, counting per client what it holds (a client that never reads is found at once)."""

    def __init__(self):
        super().__init__()
        self.count: dict = {}

    def __setitem__(self, key, value) -> None:
        if key not in self:
            self.count[key[0]] = self.count.get(key[0], 0) + 1
        super().__setitem__(key, value)

    def pop(self, key, *default):
        if key in self:
            n = self.count[key[0]] - 1
            if n:
                self.count[key[0]] = n
            else:
                del self.count[key[0]]
        return super().pop(key, *default)


def log(msg: str) -> None:
    print(f"troubadour: {msg}", file=sys.stderr, flush=True)


class Server(Handlers, Events):
    """Serves `engine`, or with `loader` (a callable returning the engine, run on the engine thread) serves
    while the model loads: `health` says `loading`, `info` says `described[0]`; with the model's config at
    hand (`described[1]`, a ModelInfo: backends.describe_model) cached tracks are served and generations
    queue for the engine, otherwise track requests wait for it (PROTOCOL.md, health)."""

    def __init__(self, engine=None, *, loader=None, described: tuple | None = None, cache_dir: str,
                 bind: str = "tcp://127.0.0.1:5555", profiles_path=None, max_queue: int = 64, max_batch: int = 4,
                 watch: bool = True, context: zmq.Context | None = None, cache_size: int | None = None,
                 curve_secret=None, allow_dir=None):
        if (engine is None) == (loader is None):
            raise ValueError("give an engine or a loader")
        self.engine = engine
        self.bind_address = bind
        self.profiles_path = profiles_path
        watching = watch and profiles_path is not None
        if watching:   # the digest of what is loaded next: an edit before the watcher starts still counts
            from .watcher import file_digest
            baseline = file_digest(profiles_path)
        self.profiles = load_profiles(profiles_path)
        summary, info = described or ({}, None)
        self.model_described = summary  # info.model until the engine's own
        # rates, frames, identity: the engine's, or its config's while it loads (None: not known yet)
        self.geometry = engine if engine is not None else Geometry(info) if info is not None else None
        if self.geometry is not None:
            check_model_support(self.profiles, self.geometry.info)
        self.held: list = []             # (reply, request) that need the geometry, while it is not known
        self.fatal: Exception | None = None   # the model did not load: serve_forever raises it
        self.cache = TrackCache(cache_dir, cache_size or DEFAULT_SIZE_LIMIT)   # (recorded for `cache stats`)
        self.scheduler = Scheduler(max_queue=max_queue, max_batch=max_batch)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.ctx = context or zmq.Context.instance()
        self.started = time.time()
        self.replies = ReplyBook()       # (client, id) -> Reply: open, or closed with messages still to send
        self.subscribers: dict = {}      # client -> Subscription
        self.waiting_subs: dict = {}     # client -> Subscription with events queued (see Subscription.waiting)
        self.live: dict = {}             # track key -> LiveTrack
        self.prefetches: dict = {}       # track key -> [PrefetchState]
        self.rotation: dict = {}         # (client, context) -> next variant counter
        self.memo = Memo()               # recently delivered tracks, ready to send
        self.decoded = weakref.WeakValueDictionary()   # track key -> cache.Track being replayed (shared audio)
        self._recording: set = set()     # memo keys whose replay records its pieces for the memo
        self.counts = [0, 0]             # get_track hits from the memo, misses: not yet in the cache's counters
        self._counted_at = time.monotonic()
        self._specs: dict = {}           # resolved tracks by their inputs (handlers._spec)
        # frames -> request, repeated bodies remembered (the model's own limit replaces the default once loaded)
        self.parse = RequestParser(self.geometry.max_duration if self.geometry else MAX_DURATION)
        self._prompt_specs: dict = {}    # (prompt, overrides) -> TrackSpec (handlers.resolve)
        self._ctx_specs = (None, {})     # (profiles, {(context, variant): TrackSpec}) (handlers.context_spec)
        self._error_ids = itertools.count()
        self._first = 0                  # where the next send pass starts (round robin)
        self._sent = 0                   # messages the last send pass got out
        self.stall_s = STALL_S
        self.readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="troubadour-cache-read")
        self.dead: TroubadourError | None = None
        self._stop = threading.Event()
        self._wake_lock = threading.Lock()
        self.worker = Worker(engine, self.scheduler, self._emit, self.cache, loader=loader)
        self._ready = None
        self.curve = (curve_secret, allow_dir) if curve_secret else None
        self.authenticator = None
        self.watcher = None
        if watching:
            from .watcher import ProfilesWatcher
            self.watcher = ProfilesWatcher(profiles_path, lambda: self._emit(("profiles_file",)), baseline)

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self, ready=None) -> int:
        """Runs until stop(); `ready(server)` is called once bound with the model loaded. Raises the loader's
        exception if the model did not load."""
        self.socket = self.ctx.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)   # a full or vanished peer is reported, not dropped
        self.socket.setsockopt(zmq.MAXMSGSIZE, P.MAX_REQUEST_BYTES)
        self.socket.setsockopt(zmq.SNDHWM, SNDHWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.curve:
            from .auth import secure_server
            self.authenticator = secure_server(self.socket, self.ctx, *self.curve)
        try:
            self.socket.bind(self.bind_address)
        except zmq.ZMQError as e:
            self.socket.close(0)
            raise bind_error(self.bind_address, e) from None
        self.bound = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        wake_addr = f"inproc://troubadour-wake-{id(self)}"
        self._wake_rx = self.ctx.socket(zmq.PULL)
        self._wake_rx.bind(wake_addr)
        self._wake_tx = self.ctx.socket(zmq.PUSH)
        self._wake_tx.setsockopt(zmq.SNDHWM, 1)   # one pending wake-up is enough
        self._wake_tx.connect(wake_addr)
        if self.engine is None:
            self._ready = ready
            meanwhile = "cached tracks are served, generations queue" if self.geometry else "track requests wait"
            log(f"listening on {self.bound} while the model loads (health says loading; {meanwhile})")
        self.worker.start()
        if self.watcher:
            self.watcher.start()
        if self.engine is not None and ready:
            ready(self)
        try:
            self._loop()
        finally:
            self._shutdown()
        if self.fatal is not None:
            raise self.fatal
        return EXIT_ENGINE_DEAD if self.dead else 0

    def stop(self) -> None:
        self._stop.set()
        self._wake()

    def _shutdown(self) -> None:
        self.worker.stop()
        if self.watcher:
            self.watcher.stop()
        self.worker.join(timeout=5)
        self.readers.shutdown(wait=True, cancel_futures=True)
        self.write_counts(wait=True)
        for s in (self.socket, self._wake_rx, self._wake_tx):
            s.close(linger=0)
        if self.authenticator:
            self.authenticator.stop()
        self.cache.close()

    @staticmethod
    def log(msg: str) -> None:
        log(msg)

    def write_counts(self, wait: bool = False) -> None:
        """get_track hits and misses into the cache's counters (`troubadour cache stats`), about once a second,
        on a reader thread: an SQLite write (a WAL checkpoint can fsync) must not stall the I/O loop."""
        (hits, misses), self.counts, self._counted_at = self.counts, [0, 0], time.monotonic()
        if hits or misses:
            if wait:
                self._count(hits, misses)
            else:
                self.readers.submit(self._count, hits, misses)

    def _count(self, hits: int, misses: int) -> None:
        try:
            self.cache.count(hits, misses)
        except Exception as exc:   # statistics never take the server down
            log(f"could not update the cache's hit counters: {exc}")

    def _emit(self, event) -> None:
        """Called from the engine and watcher threads."""
        self.events.put(event)
        self._wake()

    def _wake(self) -> None:
        try:
            with self._wake_lock:   # zmq sockets are not thread-safe
                self._wake_tx.send(b"", zmq.NOBLOCK)
        except (zmq.Again, AttributeError, zmq.ZMQError):
            pass

    # ------------------------------------------------------------------ I/O loop
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        blocked, moved = False, time.monotonic()
        while not self._stop.is_set():
            pending = self._has_output()
            if not blocked or self._sent:
                moved = time.monotonic()
            # peers whose pipes stay full: retried every 5 ms (a reader draining a full pipe must not wait), and
            # once nothing has moved for a second, every 50 ms (not 200 times a second for a client that left)
            wait = 5 if time.monotonic() - moved < 1.0 else 50
            timeout = 100 if not pending else (wait if blocked else 0)
            ready = dict(poller.poll(timeout))
            if self._wake_rx in ready:
                while readable(self._wake_rx):
                    self._wake_rx.recv(zmq.NOBLOCK)   # PAIR over inproc, one reader: readable() is exact
            if self.socket in ready:
                for _ in range(256):
                    try:
                        if not readable(self.socket):
                            break
                        frames = recv_message(self.socket)
                    except zmq.Again:   # readable() said yes; kept in case ZeroMQ ever disagrees
                        break
                    if len(frames) > MAX_FRAMES:   # envelope frames are unbounded on the wire: not even copied
                        continue
                    self._on_frames([f.bytes for f in frames])   # a third cheaper than recv_multipart
            self._drain_events()
            blocked = self._flush()
            if time.monotonic() - self._counted_at > 1.0:
                self.write_counts()
            if self.dead is not None and not self._has_output():
                if self.fatal is None:
                    log(f"engine is dead ({self.dead.message}); exiting for a supervisor to restart")
                return

    def _drain_events(self) -> None:
        while not self.events.empty():   # cheaper than the Empty exception; a racing put also wakes the loop
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                self.on_event(event)
            except Exception as exc:   # a bug in one event must not take the server down
                log(f"internal error handling {event[0]}: {exc!r}")

    def _on_frames(self, frames) -> None:
        try:
            envelope, rest = P.split_envelope(frames)
        except P.ProtocolError:
            return   # not even an envelope: nothing to answer to
        if sum(len(f) for f in envelope) > MAX_ENVELOPE_BYTES:
            return   # echoed with every reply: routing ids are at most 255 bytes a hop
        client = envelope[0]
        if self.replies.count.get(client, 0) >= MAX_UNSENT_REPLIES:
            # it sends requests and reads no replies: forget what it queued rather than grow without bound
            self.drop_client(client, "too many unread replies")
            return
        req_id = None
        try:
            req = self.parse(rest)
            req_id = req["id"]
            self.dispatch(envelope, req)
        except P.ProtocolError as e:
            self._reply_error(envelope, e.req_id if e.req_id is not None else req_id, e)
        except TroubadourError as e:
            self._reply_error(envelope, req_id, e)
        except Exception as e:  # never let one request kill the loop
            log(f"internal error: {e!r}")
            self._reply_error(envelope, req_id, TroubadourError(str(e), code=P.INTERNAL))

    # ------------------------------------------------------------------ sending
    def _holders(self):
        yield from list(self.replies.values())
        yield from list(self.waiting_subs.values())

    def _has_output(self) -> bool:
        return any(h.outbox or h.source is not None for h in self._holders())

    def _flush(self) -> bool:
        """One fair pass over every outbox. Returns True if some peer could not take more."""
        blocked = False
        self._sent = 0
        now = time.monotonic()
        holders = []
        for h in self._holders():
            if h.outbox or h.source is not None:
                holders.append(h)
            elif isinstance(h, Reply):
                if h.done():   # e.g. its final message went out in another's queue
                    self.replies.pop(h.key, None)
            elif self.waiting_subs.get(h.client) is h:   # a subscription with nothing left to send
                del self.waiting_subs[h.client]
        if len(holders) > 1:   # each pass starts one holder later, so no stream is always served last
            self._first = (self._first + 1) % len(holders)
            holders = holders[self._first:] + holders[:self._first]
        # the byte budget is for fairness: a stream with nobody waiting behind it goes out in one turn
        # (each extra turn is a pass of this loop, which costs CPU the ZeroMQ I/O threads need)
        alone = len(holders) <= 1
        for h in holders:
            try:
                h.refill()
            except Exception as e:   # one broken delivery fails its request, not the loop
                log(f"internal error delivering a track: {e!r}")
                self.drop_stream(h, "internal error") if isinstance(h, Reply) else h.outbox.clear()
                continue
            if isinstance(h, Reply) and len(h.outbox) > MAX_OUTBOX:
                # the client stopped reading: its backlog goes, the track is still generated and cached
                self.drop_stream(h, f"you stopped reading ({len(h.outbox)} messages queued)")
                continue   # (a subscriber's outbox is bounded itself: the oldest events go first)
            if getattr(h, "after", None) is not None:   # a Subscription whose `subscribed` is still queued
                if h.after.outbox:
                    continue
                h.after = None
            budget = SEND_BYTES
            for _ in range(SEND_BATCH):
                if not h.outbox:
                    h.refill()
                    if not h.outbox:
                        break
                try:
                    send_message(self.socket, h.envelope + h.outbox[0])
                except zmq.Again:
                    blocked = True
                    if isinstance(h, Reply) and h.source is not None:
                        if h.stalled_since is None:
                            h.stalled_since = now
                        elif now - h.stalled_since > self.stall_s:
                            self.drop_stream(h, f"you took nothing for {self.stall_s:g} s")
                    break
                except zmq.ZMQError as e:
                    if e.errno == errno.EHOSTUNREACH:   # the client is gone
                        self.drop_client(h.client, "disconnected")
                        break
                    raise
                msg = h.outbox.popleft()
                self._sent += 1
                h.stalled_since = None
                budget -= memoryview(msg[3]).nbytes if len(msg) > 3 else 0
                if budget <= 0 and not alone:
                    break
            if isinstance(h, Reply) and h.done():
                self.replies.pop(h.key, None)
        return blocked

    def _reply_error(self, envelope, req_id, exc) -> None:
        """An error for a request that never got a Reply: queued like any reply, so a busy pipe delays it
        instead of losing it."""
        reply = Reply(envelope, req_id, "error")
        reply.key = (reply.client, ("error", next(self._error_ids)))
        reply.fail(exc)
        self.replies[reply.key] = reply

    def open_count(self, client: bytes) -> int:
        return sum(1 for (c, _), r in self.replies.items() if c == client and not r.closed)

    def fail_all(self, err: TroubadourError) -> None:
        for r in list(self.replies.values()):
            r.fail(err)
        self.live.clear()


def bind_error(address: str, e: zmq.ZMQError) -> TroubadourError:
    hint = {errno.EADDRINUSE: "; something else is listening there, pick another port",
            errno.EINVAL: "; expected e.g. tcp://127.0.0.1:5555"}.get(e.errno, "")
    return TroubadourError(f"--bind {address}: cannot listen there ({zmq.strerror(e.errno)}){hint}",
                           code="invalid_param", field="bind")
