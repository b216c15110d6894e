"""SIGKILL the server while it generates and while it writes the cache, restart it on the same cache, repeat.

After every kill:
  * the cache directory, opened fresh in this process, holds only whole entries: blob, index and access time
    together, the byte counter equal to the sum of the entries, and TrackCache.get (which verifies the blob's
    sha256) returns every listed entry with the frames its parameters call for: nothing is dropped as corrupt;
  * the restarted server serves every track it has (get_track cached_only, streamed or not) complete: exact frame
    count, payload length and sha256; a track that was not finished is `not_found`, never partial;
  * the work that was in flight when the server died is redone on request and completes.

Kill moments: "generation" rounds kill after a random delay while several tracks generate; "cache write" rounds
kill right after the final progress event of a 20 s track (its 2.56 MB cache put follows that event within a few
tens of milliseconds), either after a random jitter or the moment SQLite's write-ahead log changes (the put's
commit being written). Rounds: TROUBADOUR_CRASH_ROUNDS (default 3); seed:
TROUBADOUR_CRASH_SEED (default random, printed).

To keep the default run near a minute on 2 cores, the next server process is started while the current one still
runs (both on the same cache directory, which the cache supports across processes); the cache is still opened
fresh by this test after each kill, before the new server serves anything.

The metadata log (metalog.MetadataLog) under SIGKILL is covered by tests/test_metalog.py
(test_log_survives_sigkill_mid_append); the server does not write one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time

import numpy as np

from servers import PROFILES, Conn, ServerProcess
from troubadour import protocol as P
from troubadour.cache import ATIME_PREFIX, BLOB_PREFIX, BYTES_KEY, INDEX_PREFIX, TrackCache

ROUNDS = int(os.environ.get("TROUBADOUR_CRASH_ROUNDS", "3"))
SEED = int(os.environ.get("TROUBADOUR_CRASH_SEED", str(random.randrange(1 << 30))))
FRAME_RATE = 50          # MusicGen's codec: 50 frames/s, 640 samples each at 32 kHz
BYTES_PER_SAMPLE = {"pcm_s16le": 2, "pcm_f32le": 4}
LONG_S = 20.0            # the track whose cache write is targeted: a 2.56 MB blob


def native_frames(duration: float, sample_rate: int = 32000) -> int:
    return max(1, int(round(duration * FRAME_RATE))) * (sample_rate // FRAME_RATE)


def expected_frames(req: dict) -> int:
    n = native_frames(req["params"]["duration"])
    rate = req.get("sample_rate") or 32000
    return int(round(n * rate / 32000))


class Starter:
    """Start a server process in a background thread (startup takes seconds: model load and warm-up)."""

    def __init__(self, model, work):
        self.srv = ServerProcess(model, work, work / "profiles.toml", args=["--no-watch"])
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.srv.start()
        except Exception as e:   # reported by get()
            self.error = e

    def get(self) -> ServerProcess:
        self.thread.join(180)
        if self.error is not None or self.thread.is_alive():
            raise RuntimeError(f"server did not start: {self.error}\n{self.srv.log()}")
        return self.srv


def wal_state(cache_dir):
    """Identity, size and mtime of the cache's SQLite write-ahead log (None while there is none)."""
    try:
        st = os.stat(os.path.join(cache_dir, "cache.db-wal"))
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def check_cache_dir(path) -> dict:
    """Open the cache fresh and check every entry; returns {key: frames}."""
    out = {}
    with TrackCache(path) as cache:
        keys = sorted(cache.keys())
        raw = [k for k in cache.raw.iterkeys() if isinstance(k, str) and not k.startswith("s/")]
        for prefix in (BLOB_PREFIX, INDEX_PREFIX, ATIME_PREFIX):
            assert sorted(k[len(prefix):] for k in raw if k.startswith(prefix)) == keys, \
                f"a partial entry ({prefix}* keys do not match the index)"
        total = 0
        for key in keys:
            index = json.loads(cache.raw.get(INDEX_PREFIX + key))
            track = cache.get(key)   # verifies the sha256 of the blob; a damaged entry would read as None
            assert track is not None, f"entry {key} is listed but does not read back (dropped as corrupt)"
            assert track.audio.shape == (index["channels"], index["frames"]), (track.audio.shape, index)
            assert track.audio.dtype == np.float32 and np.isfinite(track.audio).all()
            duration = track.meta["params"]["duration"]
            if track.meta.get("context") is None:   # prompt tracks: exactly the frames their duration calls for
                assert index["frames"] == native_frames(duration), (key, index["frames"], duration)
            total += index["bytes"]
            out[key] = index["frames"]
        assert cache.raw.get(BYTES_KEY, 0) == total, "the byte counter disagrees with the entries"
    return out


def fetch(conn: Conn, req: dict, *, stream: bool, cached_only: bool, timeout: float = 120):
    """get_track; returns None for not_found, else (header, payload bytes) after checking completeness."""
    msgs = conn.until_final(conn.send(P.GET_TRACK, stream=stream, cached_only=cached_only, **req), timeout=timeout)
    last = msgs[-1]
    if last.type == P.ERROR:
        assert cached_only and last.body["code"] == "not_found", last.body
        return None
    header = msgs[0].body
    frames = expected_frames(req)
    assert header["frames"] == frames, (header["frames"], frames, req)
    if stream:
        assert [m.type for m in msgs[:1]] == [P.TRACK] and last.type == P.END, [m.type for m in msgs]
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        chunks = [m for m in msgs if m.type == P.CHUNK]
        data = b"".join(bytes(m.payload) for m in chunks)
        assert sum(m.body["frames"] for m in chunks) == frames == last.body["frames"]
        assert last.body["sha256"] == hashlib.sha256(data).hexdigest()
        assert last.body["bytes"] == len(data)
    else:
        assert len(msgs) == 1 and last.type == P.TRACK
        data = bytes(last.payload)
        assert header["sha256"] == hashlib.sha256(data).hexdigest() and header["bytes"] == len(data)
    assert len(data) == frames * BYTES_PER_SAMPLE[req.get("format", "pcm_s16le")], (len(data), frames)
    return header, data


def new_load(rng: random.Random, round_no: int, mode: str) -> list:
    reqs = []
    if mode == "cache write":
        reqs.append(dict(prompt=f"crash round {round_no}: the long one", priority=100,
                         params={"duration": LONG_S, "seed": rng.randrange(1 << 30)}))
    for i in range(2 if mode == "cache write" else 4):
        req = dict(prompt=f"crash round {round_no} track {i}",
                   params={"duration": rng.choice([1.0, 2.0, 3.0, 4.0]), "seed": rng.randrange(1 << 30)})
        if rng.random() < 0.5:
            req["format"] = rng.choice(["pcm_s16le", "pcm_f32le"])
            req["sample_rate"] = rng.choice([32000, 44100, 48000])
        reqs.append(req)
    return reqs


def test_sigkill_during_generation_and_cache_writes(tiny_model, tmp_path):
    rng = random.Random(SEED)
    print(f"\ncrash safety: seed {SEED}, {ROUNDS} rounds")
    (tmp_path / "profiles.toml").write_text(PROFILES)
    starter = Starter(tiny_model, tmp_path)
    srv = starter.get()
    sent: list = []        # every get_track request made in the rounds so far
    inflight: list = []    # the requests that had not finished when the last server died
    stats = {"kills": 0, "inflight": 0, "served": 0, "long_track_made_it": [], "wal_trigger_ms": []}
    try:
        for round_no in range(ROUNDS + 1):
            conn = Conn(srv.address)
            if round_no < ROUNDS:
                starter = Starter(tiny_model, tmp_path)   # the next process warms up meanwhile
            # 1. what survived is served whole; what did not is not_found, never partial
            for i, req in enumerate(sent):
                got = fetch(conn, req, stream=bool(i % 2), cached_only=True)
                stats["served"] += got is not None
                if req in inflight:
                    continue
                assert got is not None, f"a track that was complete before the kill is gone: {req}"
            # 2. in-flight work is redone on request
            for req in inflight:
                header, _ = fetch(conn, req, stream=True, cached_only=False)
                assert header["cached"] is False, "in-flight work must be generated again"
                assert fetch(conn, req, stream=False, cached_only=True) is not None
            inflight = []
            if round_no == ROUNDS:
                conn.close()
                break
            # 3. new work, then SIGKILL at the chosen moment
            mode = "generation" if round_no % 3 == 0 else "cache write"
            reqs = new_load(rng, round_no, mode)
            watcher = Conn(srv.address)
            watcher.call(P.SUBSCRIBE, events=["progress"])
            long_key = None
            for req in reqs:
                conn.send(P.GET_TRACK, stream=rng.random() < 0.5, **req)
            if mode == "generation":
                time.sleep(rng.uniform(0.3, 2.5))
            else:
                deadline = time.time() + 120
                while time.time() < deadline:
                    m = watcher.recv(max(0.1, deadline - time.time()))
                    if (m.type == P.EVENT and m.body["event"] == "progress"
                            and m.body["done_steps"] == m.body["total_steps"] >= LONG_S * FRAME_RATE):
                        long_key = m.body["track_id"]
                        break
                assert long_key, "the long track never reached its last step"
                if rng.random() < 0.5:
                    # kill as soon as SQLite starts writing the WAL: the put's commit, most likely mid-write
                    before, t0 = wal_state(srv.cache), time.time()
                    while wal_state(srv.cache) == before and time.time() - t0 < 2:
                        time.sleep(0.0002)
                    stats["wal_trigger_ms"].append(round((time.time() - t0) * 1000, 1))
                else:
                    time.sleep(rng.uniform(0.0, 0.12))
            srv.proc.kill()
            srv.proc.wait(30)
            stats["kills"] += 1
            conn.close()
            watcher.close()
            # 4. the cache on disk, opened fresh
            entries = check_cache_dir(srv.cache)
            if long_key is not None:
                stats["long_track_made_it"].append(long_key in entries)
            srv = starter.get()
            probe = Conn(srv.address)
            for req in reqs:
                if fetch(probe, req, stream=False, cached_only=True) is None:
                    inflight.append(req)
            probe.close()
            stats["inflight"] += len(inflight)
            sent += reqs
        check_cache_dir(srv.cache)
    finally:
        srv.stop()
        starter.thread.join(180)   # never leave a server starting behind
        starter.srv.stop()
    print(f"crash safety: {stats}")
    assert stats["kills"] == ROUNDS
    assert stats["inflight"] >= 1, "no kill ever caught work in flight: the test tested nothing"
    assert stats["served"] >= 1
