"""The engine thread (troubadour.jobs.Worker) on the tiny model: how each job of a batch ends when some of its
rows are cancelled or fail, reported through the same events the server's I/O thread reads."""

import queue
import time

import numpy as np
import pytest
import torch

from troubadour.cache import track_key
from troubadour.engine import Job
from troubadour.errors import Cancelled
from troubadour.jobs import PRIORITY_GET, PRIORITY_PREFETCH, Scheduler, TrackSpec, Worker
from troubadour.params import GenParams


def spec(prompt: str, duration: float) -> TrackSpec:
    params = GenParams(duration=duration, seed=5)
    return TrackSpec(track_key("tiny", prompt, params), prompt, params)


class Run:
    """A Worker over `engine` whose events land in a queue; `on_event(event)` runs on the engine thread."""

    def __init__(self, engine, on_event=None, cache=None):
        self.scheduler = Scheduler(max_queue=8, max_batch=4)
        self.events: queue.Queue = queue.Queue()
        self.log: list = []   # every event, in order
        self.on_event = on_event

        def emit(event):
            self.log.append(event)
            self.events.put(event)
            if self.on_event:
                self.on_event(event)

        self.worker = Worker(engine, self.scheduler, emit, cache=cache)

    def start(self):
        self.worker.start()

    def ends(self, jobs, timeout: float = 120) -> dict:
        """job -> [("done" | "failed", detail)] until every job has ended (and a little after, for extras)."""
        out = {j: [] for j in jobs}
        while any(not v for v in out.values()):
            event = self.events.get(timeout=timeout)
            if event[0] in ("done", "failed") and event[1] in out:
                out[event[1]].append((event[0], event[2]))
        try:
            while True:
                event = self.events.get(timeout=0.5)
                if event[0] in ("done", "failed") and event[1] in out:
                    out[event[1]].append((event[0], event[2]))
        except queue.Empty:
            pass
        return out

    def stop(self):
        self.worker.stop()
        self.worker.join(10)


def test_cancelling_the_last_unfinished_row_of_a_batch_stops_it(engine):
    """A batch of a 2 s and a 1.3 s track: once the short one is done, cancelling the long one (nobody else
    wants it) stops the generation; the finished row stays done (no second end reported for it)."""
    run = Run(engine)
    owner = object()
    long_job, _ = run.scheduler.submit(spec("a long one", 2.0), 0, owner)
    short_job, _ = run.scheduler.submit(spec("a short one", 1.3), 0, owner)
    steps = []

    def on_event(event):
        if event[0] == "done" and event[1] is short_job:
            run.scheduler.release(long_job, owner)
        if event[0] == "progress" and event[1] is long_job:
            steps.append(event[2])

    run.on_event = on_event
    run.start()
    try:
        ends = run.ends([long_job, short_job])
    finally:
        run.stop()
    assert [e[0] for e in ends[short_job]] == ["done"] and short_job.state == "done"
    assert len(ends[long_job]) == 1 and isinstance(ends[long_job][0][1], Cancelled), ends[long_job]
    assert long_job.state == "cancelled"
    assert max(steps) < engine.steps_for(2.0)   # it stopped before its end


def test_a_row_that_fails_fails_alone_and_its_batch_mates_are_made_as_alone(engine, nan_for):
    nan_for[0] = "explode"
    run = Run(engine)
    owner = object()
    bad, _ = run.scheduler.submit(spec("explode the drums", 1.0), 0, owner)
    good, _ = run.scheduler.submit(spec("calm piano", 1.0), 0, owner)
    run.start()
    try:
        ends = run.ends([bad, good])
    finally:
        run.stop()
    assert [e[0] for e in ends[bad]] == ["failed"] and "non-finite" in ends[bad][0][1].message
    assert [e[0] for e in ends[good]] == ["done"], ends[good]
    alone = engine.generate([Job("calm piano", good.spec.params)])[0].audio
    np.testing.assert_array_equal(ends[good][0][1], alone)
    assert run.worker.failures == 0   # a bad prompt is not a broken engine


def test_a_short_track_made_of_nan_is_an_engine_fault(engine, nan_for):
    """Under one chunk (25 frames, 0.5 s) no chunk boundary is passed: the end of the track is checked too."""
    from troubadour.engine import EngineFault

    nan_for[0] = "broken"
    for duration in (0.3, 0.48, 0.7):
        with pytest.raises(EngineFault):
            engine.generate([Job("broken strings", GenParams(duration=duration))])
    assert torch.isfinite(torch.as_tensor(engine.generate([Job("fine strings", GenParams(duration=0.3))])[0].audio)).all()


@pytest.mark.parametrize("batched_only", [True, False])
def test_a_failed_batch_counts_once_towards_a_dead_engine(engine, monkeypatch, batched_only):
    """A batch of three failing (out of GPU memory, say) is retried row by row; the rows' own failures must not
    count as three failures of the engine (it answered engine_dead and exited after one bad batch). Rows that
    fit alone are made; if they fail alone too, each is failed and the engine goes on."""
    real = engine.stream

    def stream(jobs, **kw):
        if len(jobs) > 1 or not batched_only:
            raise RuntimeError("CUDA out of memory (injected)")
        return real(jobs, **kw)

    monkeypatch.setattr(engine, "stream", stream)
    run = Run(engine)
    owner = object()
    jobs = [run.scheduler.submit(spec(f"row {i}", 0.5), 0, owner)[0] for i in range(3)]
    run.start()
    try:
        ends = run.ends(jobs)
        dead = [e for e in run.log if e[0] == "dead"]
        alive = run.worker.is_alive()
    finally:
        run.stop()
    assert not dead and alive
    assert [[e[0] for e in ends[j]] for j in jobs] == [["done" if batched_only else "failed"]] * 3
    assert run.worker.failures == (0 if batched_only else 1)


def with_arrivals(run, jobs, arrive, count: int = 1):
    """Runs `jobs` on `run`. `arrive(event, arrived)` is called on the engine thread for each progress event and
    appends the jobs it submits to `arrived` (a game asking while the engine works); waits for `count` of them.
    Returns (how every job ended, the jobs in the order they were done, arrived)."""
    arrived, order = [], []

    def on_event(event):
        if event[0] == "progress":
            arrive(event, arrived)
        elif event[0] == "done":
            order.append(event[1])

    run.on_event = on_event
    run.start()
    try:
        deadline = time.monotonic() + 60
        while len(arrived) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(arrived) >= count, "never submitted"
        ends = run.ends([*jobs, *arrived])
    finally:
        run.stop()
    return ends, order, arrived


def test_a_game_waiting_pauses_running_prefetch_work_which_then_resumes_intact(engine):
    """On a CPU a prefetch batch runs for minutes; a game's request arriving meanwhile used to wait for all of it.
    The batch pauses between two steps, the game's track is made, then the batch goes on from where it was: its
    tracks are the same as made without a pause."""
    run, owner = Run(engine), object()
    background = [run.scheduler.submit(spec(f"level music {i}", 3.0), PRIORITY_PREFETCH, owner)[0]
                  for i in range(2)]

    def arrive(event, arrived):
        if event[1] is background[0] and event[2] >= 40 and not arrived:
            arrived.append(run.scheduler.submit(spec("the boss appears", 0.5), PRIORITY_GET, owner)[0])

    ends, order, (urgent,) = with_arrivals(run, background, arrive)
    assert run.worker.paused >= 1
    assert order.index(urgent) < order.index(background[0]) and order.index(urgent) < order.index(background[1])
    for job in background:
        assert [e[0] for e in ends[job]] == ["done"]
        alone = engine.generate([Job(job.spec.prompt, job.spec.params)])[0].audio
        np.testing.assert_array_equal(ends[job][0][1], alone)


def test_no_pause_for_work_of_the_same_urgency(engine):
    run, owner = Run(engine), object()
    first, _ = run.scheduler.submit(spec("first track", 2.0), PRIORITY_GET, owner)

    def arrive(event, arrived):
        if event[1] is first and not arrived:
            arrived.append(run.scheduler.submit(spec("second track", 0.5), PRIORITY_GET, owner)[0])

    ends, order, (second,) = with_arrivals(run, [first], arrive)
    assert run.worker.paused == 0 and order == [first, second] and all(e[0][0] == "done" for e in ends.values())


def test_a_game_joining_a_running_prefetch_row_keeps_first_come_first_served(engine):
    """The game plays the level music (joining its running prefetch job), then asks for a stinger: the level
    track it asked for first is not paused for the stinger (the row's urgency is the game's now)."""
    run, game = Run(engine), object()
    level = run.scheduler.submit(spec("level music", 3.0), PRIORITY_PREFETCH, object())[0]

    def arrive(event, arrived):
        if event[1] is level and event[2] >= 20 and not arrived:
            assert run.scheduler.submit(level.spec, PRIORITY_GET, game) == (level, False)
            arrived.append(run.scheduler.submit(spec("stinger", 0.5), PRIORITY_GET, game)[0])

    _, order, (stinger,) = with_arrivals(run, [level], arrive)
    assert run.worker.paused == 0 and order.index(level) < order.index(stinger)


def test_a_paused_batch_is_not_paused_again_inside(engine):
    """One level of pause (each paused batch keeps its KV cache in memory): prefetch work pauses for a game's
    request, and a still more urgent request waits for that one."""
    run, owner = Run(engine), object()
    level = run.scheduler.submit(spec("level music", 3.0), PRIORITY_PREFETCH, owner)[0]

    def arrive(event, arrived):
        if event[1] is level and event[2] >= 20 and not arrived:
            arrived.append(run.scheduler.submit(spec("boss music", 2.0), PRIORITY_GET, owner)[0])
        elif arrived and event[1] is arrived[0] and event[2] >= 20 and len(arrived) == 1:
            arrived.append(run.scheduler.submit(spec("alarm", 0.5), PRIORITY_GET + 10, owner)[0])

    _, order, (boss, alarm) = with_arrivals(run, [level], arrive, count=2)
    # boss finishes before the alarm (no pause inside boss's run); level then pauses again, for the alarm
    assert order == [boss, alarm, level] and run.worker.paused == 2, (order, run.worker.paused)


def test_no_pause_for_a_track_that_follows_the_theme_being_made(tmp_path):
    """A game's track following the theme a paused batch is making would make that theme again from scratch
    (with no pause point): it waits for the batch instead, and takes the theme from the cache."""
    from troubadour.backends import load_backend
    from troubadour.cache import TrackCache
    from troubadour.engine import Engine
    from troubadour.testmodel import cached_test_model

    melody_engine = Engine(load_backend(str(cached_test_model(melody=True)), "cpu"))
    theme = spec("the town theme", 3.0)
    params = GenParams(duration=0.5, seed=5)
    follower = TrackSpec(track_key("tiny", "castle halls", params, {"theme": theme.key}), "castle halls", params,
                         theme=theme)
    with TrackCache(tmp_path / "cache") as cache:
        run, owner = Run(melody_engine, cache=cache), object()
        town = run.scheduler.submit(theme, PRIORITY_PREFETCH, owner)[0]

        def arrive(event, arrived):
            if event[1] is town and event[2] >= 20 and not arrived:
                arrived.append(run.scheduler.submit(follower, PRIORITY_GET, owner)[0])

        ends, order, (castle,) = with_arrivals(run, [town], arrive)
    assert run.worker.paused == 0 and order == [town, castle] and all(e[0][0] == "done" for e in ends.values())
