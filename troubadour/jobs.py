"""Generation jobs: a priority queue with dedup, and the engine thread that owns the model.

Only the server's I/O thread submits and cancels; only the worker thread runs the engine. The worker reports
through `emit(event)` callbacks, in order: ("started", jobs), ("progress", job, done, total),
("chunk", job, start, audio, final), ("done", job, audio, meta) or ("failed", job, error); ("dead", error) when the
engine cannot go on.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .engine import Engine, EngineFault, Job
from .errors import ENGINE_ERROR, Cancelled, TroubadourError
from .params import GenParams
from .shaping import Shaper, shape_of

PRIORITY_GET = 0          # a game waiting for music (protocol default)
PRIORITY_PREFETCH = -50   # level loading, hot-swap
BUSY = "busy"
BACKGROUND = "background"   # owner of prefetch and hot-swap jobs: nobody's cancel stops them


@dataclass(frozen=True)
class TrackSpec:
    """A fully resolved track: what to generate and what to store with it."""

    key: str
    prompt: str
    params: GenParams
    context: str | None = None
    variant: int | None = None
    info: dict = field(default_factory=dict)   # bpm, meter, loop... for headers and the cache
    theme: "TrackSpec | None" = None           # a track whose melody this one follows (leitmotif)


class GenJob:
    _ids = itertools.count(1)

    def __init__(self, spec: TrackSpec, priority: int, reason: str = "generated"):
        self.id = next(self._ids)
        self.reason = reason           # for track_ready: generated | prefetch | hot_swap
        self.spec = spec
        self.priority = priority
        self.owners: set = set()
        self.state = "queued"          # queued -> running -> done | failed | cancelled
        self.cancelled = False
        self.total_steps = 0
        self.sent = False              # audio of it reached the I/O thread

    @property
    def key(self) -> str:
        return self.spec.key


class Scheduler:
    """Priority queue of jobs; identical tracks (same key) share one job."""

    def __init__(self, max_queue: int = 64, max_batch: int = 4):
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._lock = threading.Condition()
        self._heap: list = []
        self._order = itertools.count()
        self._by_key: dict[str, GenJob] = {}     # queued or running
        self._closed = False

    # -- I/O thread side
    def find(self, key: str) -> GenJob | None:
        """The queued or running job for a track; a cancelled one still stopping is not found (a new request
        starts a new job rather than joining one that is about to fail)."""
        with self._lock:
            job = self._by_key.get(key)
            return None if job is None or job.cancelled else job

    def submit(self, spec: TrackSpec, priority: int, owner, reason: str = "generated") -> tuple[GenJob, bool]:
        """Queue a track or join the identical one in flight. Returns (job, created)."""
        with self._lock:
            job = self._by_key.get(spec.key)
            if job is not None and not job.cancelled:
                job.owners.add(owner)
                if priority > job.priority:
                    # (a running one too: a game waiting on a prefetch row keeps its batch from pausing for
                    # a later request of the same urgency)
                    job.priority = priority
                    if job.state == "queued":
                        self._push(job)      # stale heap entries are skipped when popped
                return job, False
            if self.queued() >= self.max_queue:
                raise TroubadourError(f"the generation queue is full ({self.max_queue} tracks); retry later",
                                      code=BUSY)
            job = GenJob(spec, priority, reason)
            job.owners.add(owner)
            self._by_key[spec.key] = job
            self._push(job)
            self._lock.notify_all()
            return job, True

    def adopt(self, job: GenJob, owner) -> None:
        """Add an owner to a job still queued or running (a finished or cancelled one is left alone)."""
        with self._lock:
            if job.state in ("queued", "running") and not job.cancelled:
                job.owners.add(owner)

    def release(self, job: GenJob, owner) -> bool:
        """`owner` no longer wants `job`; with no owners left the job is cancelled. True if cancelled."""
        with self._lock:
            job.owners.discard(owner)
            if job.owners or job.state not in ("queued", "running"):
                return False
            job.cancelled = True
            if job.state == "queued":
                job.state = "cancelled"
                self._by_key.pop(job.key, None)
            return True

    def queued(self) -> int:
        with self._lock:   # (re-entrant) the engine thread changes _by_key while health asks
            return sum(1 for j in self._by_key.values() if j.state == "queued")

    def room(self) -> int:
        """New jobs the queue takes before it answers busy."""
        return max(0, self.max_queue - self.queued())

    def running(self) -> list[GenJob]:
        with self._lock:
            return [j for j in self._by_key.values() if j.state == "running"]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # -- worker side
    def waiting_above(self, priority: int, running: frozenset = frozenset()) -> bool:
        """A queued job more urgent than `priority` (a game waiting while prefetch work runs) that does not follow
        the theme of a track in `running` (it would make that theme again, from scratch)."""
        with self._lock:
            top = self._peek()
            if top is None or top.priority <= priority:
                return False
            theme = top.spec.theme
            while theme is not None:
                if theme.key in running:
                    return False
                theme = theme.theme
            return True

    def next_batch(self, timeout: float | None = None, above: int | None = None,
                   running: frozenset = frozenset()) -> list[GenJob]:
        """The most urgent job plus queued jobs of the same priority and similar length (one batch); with
        `above`, only a batch more urgent than that (see waiting_above), else [] at once."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if above is not None and not self.waiting_above(above, running):
                return []
            while True:
                first = self._pop()
                if first is not None or self._closed:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._lock.wait(left)
            if first is None:
                return []
            batch = [first]
            d = first.spec.params.duration
            for _, _, job in sorted(self._heap):
                if len(batch) >= self.max_batch:
                    break
                # same urgency only: a waiting game must not pay for prefetch rows; similar length because a
                # batch runs as long as its longest row
                if (self._live(job) and job not in batch and job.priority == first.priority
                        and 0.6 * d <= job.spec.params.duration <= d):
                    batch.append(job)
            for job in batch:
                job.state = "running"
            return batch

    def finish(self, job: GenJob, state: str) -> None:
        with self._lock:
            job.state = state
            if self._by_key.get(job.key) is job:
                del self._by_key[job.key]

    def _push(self, job: GenJob) -> None:
        heapq.heappush(self._heap, (-job.priority, next(self._order), job))

    def _live(self, job: GenJob) -> bool:
        return job.state == "queued" and not job.cancelled

    def _pop(self) -> GenJob | None:
        job = self._peek()
        if job is not None:
            heapq.heappop(self._heap)
        return job

    def _peek(self) -> GenJob | None:
        """The most urgent live job, left queued (stale heap entries on top are dropped)."""
        while self._heap:
            prio, _, job = self._heap[0]
            if self._live(job) and -prio == job.priority:
                return job
            heapq.heappop(self._heap)
        return None


class Worker(threading.Thread):
    """The engine thread: the only thread that touches the model."""

    def __init__(self, engine: Engine | None, scheduler: Scheduler, emit: Callable, cache=None,
                 progress_every: int = 10, loader: Callable[[], Engine] | None = None):
        """Without an `engine`, `loader()` makes it on this thread first (the model loads while the server
        already answers); then ("ready", engine), or ("load_failed", exception) and the thread ends."""
        super().__init__(name="troubadour-engine", daemon=True)
        self.engine, self.loader = engine, loader
        self.scheduler = scheduler
        self.emit = emit
        self.cache = cache
        self.progress_every = progress_every
        self.busy = False
        self.failures = 0
        self.generated = 0
        self.paused = 0               # batches paused for more urgent work (for tests)
        self._depth = 0               # batches paused now (one at most)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.scheduler.close()

    def run(self) -> None:
        if self.engine is None:
            try:
                self.engine = self.loader()
            except Exception as exc:   # reported to the I/O thread, which exits with it
                self.emit(("load_failed", exc))
                return
            self.emit(("ready", self.engine))
        while not self._stop_event.is_set():
            if not self._serve():
                return

    @property
    def _preemptible(self) -> bool:
        """Whether a running batch may pause for more urgent work: its state then stays in memory beside the
        other batch's. On a CPU (slow, plenty of memory); not on a GPU (fast, memory tight), nor with --compile
        (its step's buffers are shared between calls)."""
        return self.engine._device.type == "cpu" and not self.engine.compiled

    def _serve(self, above: int | None = None, running: frozenset = frozenset()) -> bool:
        """Runs the next batch (with `above`: only one more urgent than that, at once). False when the engine
        cannot go on."""
        batch = self.scheduler.next_batch(timeout=0 if above is not None else 0.5, above=above, running=running)
        if not batch:
            return True
        busy, self.busy = self.busy, True
        try:   # (a melody model may split a batch: rows that would change each other run apart)
            for rows in self.engine.batch_groups([j.spec.prompt for j in batch]):
                if not self._attempt([batch[r] for r in rows]):
                    return False
        finally:
            self.busy = busy
        return True

    def _attempt(self, batch: list[GenJob], alone: bool = False) -> bool:
        """Runs a batch and reports how each job ended; False when the engine cannot go on. `alone`: a row of
        a failed batch tried on its own (its failure was counted with the batch's)."""
        try:
            self._run_batch(batch)
            self.failures = 0
        except _EngineGone:     # a batch run while this one was paused found the engine dead (and said so)
            return False
        except Cancelled:
            for job in batch:
                if job.state == "running":   # (rows that finished before the others were cancelled stay done)
                    self.scheduler.finish(job, "cancelled")
                    self.emit(("failed", job, Cancelled()))
        except Exception as exc:  # the model failed: fail these requests, keep serving others
            _free_device_memory()
            # a model that makes NaN fails each request but is not dead; 3 failed batches in a row are
            if not alone:
                self.failures += 0 if isinstance(exc, EngineFault) else 1
            err = _engine_error(exc)
            dead = self.failures >= 3 or _fatal(exc)
            if len(batch) > 1 and not dead:
                # one row may be the cause (a prompt that overflows the text encoder in fp16, a NaN in one row,
                # a batch too big for the GPU's memory): rows that sent no audio yet are tried alone (a track
                # is the same alone as batched)
                for job in batch:
                    if job.state == "running" and (job.cancelled or job.sent):
                        self.scheduler.finish(job, "failed" if job.sent else "cancelled")
                        self.emit(("failed", job, err if job.sent else Cancelled()))
                for job in [j for j in batch if j.state == "running"]:
                    if not self._attempt([job], alone=True):
                        return False
                return True
            for job in batch:
                if job.state != "running":
                    continue
                self.scheduler.finish(job, "failed")
                if not dead:
                    self.emit(("failed", job, err))
            if dead:   # every open request, these included, gets engine_dead
                self.emit(("dead", err))
                return False
        return True

    def _melody(self, spec: TrackSpec | None):
        """The audio of a theme track: from the cache, or generated (and cached) first."""
        if spec is None:
            return None
        track = self.cache.get(spec.key) if self.cache is not None else None
        if track is not None:
            return track.audio
        audio = self.engine.generate([Job(spec.prompt, spec.params, self._melody(spec.theme))])[0].audio
        if self.cache is not None:
            self.cache.put(spec.key, audio, self.engine.sample_rate, self._meta_for(spec, 0.0, 1))
        return audio

    def _run_batch(self, batch: list[GenJob]) -> None:
        jobs = [Job(j.spec.prompt, j.spec.params, self._melody(j.spec.theme)) for j in batch]
        total = self.engine.steps_for(max(j.params.duration for j in jobs))
        for j in batch:
            j.total_steps = self.engine.steps_for(j.spec.params.duration)
        self.emit(("started", batch))
        parts: list[list[np.ndarray]] = [[] for _ in batch]
        t0 = time.perf_counter()

        paused = [0.0]

        def progress(done: int, _total: int) -> None:
            if done % self.progress_every == 0 or done == total:
                for j in batch:
                    if not j.cancelled and done <= j.total_steps:
                        self.emit(("progress", j, done, j.total_steps))
            if not self._preemptible or self._depth:   # (one level: each paused batch holds its KV cache)
                return
            live = [j for j in batch if j.state == "running" and not j.cancelled]
            # (now: a game may have joined a row since the batch started)
            priority = max((j.priority for j in live), default=batch[0].priority)
            running = frozenset(j.key for j in live)
            if self.scheduler.waiting_above(priority, running):
                # A game is waiting while prefetch work runs (minutes on a CPU): this batch pauses here, between
                # two steps, its state held in the engine's generator, and the urgent work runs first.
                t = time.perf_counter()
                self.paused += 1
                self._depth += 1
                try:
                    if not self._serve(above=priority, running=running):
                        raise _EngineGone()
                finally:
                    self._depth -= 1
                paused[0] += time.perf_counter() - t

        def should_stop() -> bool:   # nobody wants the rows still being made (finished ones are cached)
            return self._stop_event.is_set() or all(j.cancelled or j.state == "done" for j in batch)

        shapers = [Shaper(shape_of(j.spec.info), self.engine.samples_for(j.spec.params.duration),
                          self.engine.sample_rate, self.engine.info.frame_rate) for j in batch]
        for chunk in self.engine.stream(jobs, progress=progress, should_stop=should_stop):
            job = batch[chunk.row]
            pieces = shapers[chunk.row].feed(chunk.audio)
            if chunk.final:
                pieces += shapers[chunk.row].finish()
                if not pieces:
                    pieces = [chunk.audio[:, :0]]
            parts[chunk.row].extend(pieces)
            if chunk.final:
                audio = np.concatenate(parts[chunk.row], axis=1)
                meta = self._meta(job, time.perf_counter() - t0 - paused[0], len(batch))
                if self.cache is not None:
                    # stored before the job leaves the in-flight map (and before its last chunk is sent), so a
                    # request finds either the live job or the cached track, and a finished stream is cached
                    self.cache.put(job.key, audio, self.engine.sample_rate, meta)
                self.scheduler.finish(job, "done")
                self.generated += 1
            for i, piece in enumerate(pieces):
                job.sent = True
                self.emit(("chunk", job, chunk.start, piece, chunk.final and i == len(pieces) - 1))
            if chunk.final:
                self.emit(("done", job, audio, meta))

    def _meta(self, job: GenJob, seconds: float, batch: int) -> dict:
        return self._meta_for(job.spec, seconds, batch)

    def _meta_for(self, s: TrackSpec, seconds: float, batch: int) -> dict:
        info = self.engine.info
        return {"prompt": s.prompt, "params": s.params.to_dict(), "context": s.context, "variant": s.variant,
                **s.info, "model": info.model_id, "model_identity": info.identity, "device": info.device,
                "generation_seconds": round(seconds, 3), "batch_size": batch, "created": time.time(),
                **({"theme": s.theme.key} if s.theme is not None else {})}


class _EngineGone(Exception):
    """Unwinds a paused batch after the batch run meanwhile found the engine dead."""


def _engine_error(exc: Exception) -> TroubadourError:
    if isinstance(exc, TroubadourError):
        return exc
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return TroubadourError(f"generation failed: {last[:300]}", code=ENGINE_ERROR)


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fatal(exc: Exception) -> bool:
    """Errors after which the model's state can't be trusted (device lost, not a single bad batch)."""
    text = str(exc).lower()
    return "device-side assert" in text or ("cuda error" in text and "out of memory" not in text)
