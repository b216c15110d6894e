"""Tests for troubadour.cache on real diskcache directories in tmp_path."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import diskcache
import numpy as np
import pytest

from troubadour.cache import BLOB_PREFIX, Track, TrackCache, track_key
from troubadour.params import GenParams
from troubadour.trackblob import encode_track

REPO = Path(__file__).resolve().parents[1]
MODEL = "facebook/musicgen-small@rev1"
PARAMS = GenParams(duration=10.0, seed=7).to_dict()


def audio_for(seed: int, channels: int = 2, frames: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (channels, frames)).astype(np.float32)


def blob_size(audio, sr=32000, meta=None) -> int:
    return len(encode_track(audio, sr, dict(meta or {"created": 1.0})))


def run_py(code: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
                          check=True)


# --- keys --------------------------------------------------------------------------------


def test_key_int_and_float_hash_the_same():
    a = track_key(MODEL, "calm harp", {**PARAMS, "duration": 10, "cfg_coef": 3})
    b = track_key(MODEL, "calm harp", {**PARAMS, "duration": 10.0, "cfg_coef": 3.0})
    c = track_key(MODEL, "calm harp", {**PARAMS, "duration": np.float32(10.0)},
                  {"bpm": np.int64(90)})
    d = track_key(MODEL, "calm harp", {**PARAMS, "duration": 10.0}, {"bpm": 90.0})
    assert a == b
    assert c == d
    assert len(a) == 32 and int(a, 16) >= 0


def test_key_fills_param_defaults_and_accepts_genparams():
    full = track_key(MODEL, "p", GenParams().to_dict())
    assert track_key(MODEL, "p", {}) == full
    assert track_key(MODEL, "p", GenParams()) == full
    assert track_key(MODEL, "p", {"seed": 0}) == full
    assert track_key(MODEL, "p", {"seed": 1}) != full
    # extra None and {} mean the same thing: no post-processing
    assert track_key(MODEL, "p", {}, None) == track_key(MODEL, "p", {}, {})


def test_key_changes_with_every_field():
    base = dict(model=MODEL, prompt="calm harp", params=PARAMS,
                extra={"loop": True, "bpm": 90, "lufs": -16.0})
    variants = [base]
    variants.append({**base, "model": "facebook/musicgen-medium@rev1"})
    variants.append({**base, "model": MODEL + "x"})
    variants.append({**base, "prompt": "calm harp "})
    variants.append({**base, "prompt": "Calm harp"})
    bumped = {"duration": 10.5, "temperature": 0.9, "top_k": 200, "top_p": 0.5,
              "cfg_coef": 3.5, "seed": 8}
    assert set(bumped) == set(GenParams.names())  # a new GenParams field must be added here
    for name, value in bumped.items():
        variants.append({**base, "params": {**PARAMS, name: value}})
    variants.append({**base, "params": {**PARAMS, "backend_knob": 1}})
    for name, value in {"loop": False, "bpm": 91, "lufs": -14.0}.items():
        variants.append({**base, "extra": {**base["extra"], name: value}})
    variants.append({**base, "extra": {**base["extra"], "crossfade": 0.5}})
    variants.append({**base, "extra": None})
    keys = [track_key(v["model"], v["prompt"], v["params"], v["extra"]) for v in variants]
    assert len(set(keys)) == len(keys)


def test_key_true_and_one_differ_and_nan_is_rejected():
    assert track_key(MODEL, "p", {}, {"loop": True}) != track_key(MODEL, "p", {}, {"loop": 1})
    with pytest.raises(ValueError):
        track_key(MODEL, "p", {"temperature": float("nan")})
    with pytest.raises(TypeError):
        track_key(MODEL, "p", {}, {"x": object()})


def test_key_stable_across_processes():
    args = (MODEL, "calm harp ♪", json.dumps(PARAMS), json.dumps({"loop": True, "bpm": 90.0}))
    here = track_key(args[0], args[1], json.loads(args[2]), json.loads(args[3]))
    code = """
        import json, sys
        from troubadour.cache import track_key
        print(track_key(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])))
    """
    for seed in ("1", "2"):  # str/dict hashing differs between these interpreters
        env = {**os.environ, "PYTHONHASHSEED": seed}
        assert run_py(code, *args, env=env).stdout.strip() == here


def test_key_golden_value():
    # Pinned on purpose: if this changes, every existing cache silently stops matching.
    # The expected value is sha256 of the canonical JSON spelled out here by hand.
    params = {"duration": 10.0, "temperature": 0.9, "top_k": 250, "top_p": 0.0,
              "cfg_coef": 3.0, "seed": 1}
    canonical = ('{"extra":{"loop":true},"model":"m","params":{"cfg_coef":3,"duration":10,'
                 '"seed":1,"temperature":0.9,"top_k":250,"top_p":0},"prompt":"p","v":1}')
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert expected == "d3cd45ceb2b3ffc9c6dccf2a576be239"
    assert track_key("m", "p", params, {"loop": True}) == expected


# --- put / get ---------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [100, 48000])  # below / above diskcache's file threshold
def test_put_get_roundtrip_exact(tmp_path, frames):
    audio = audio_for(3, frames=frames)
    audio[0, :4] = [0.0, -0.0, 1e-45, np.finfo(np.float32).max]
    meta = {"prompt": "calm harp", "params": PARAMS, "model": MODEL, "created": 123.5,
            "generation_s": 4.25, "context": "forest", "variant": 2, "nested": {"a": [1, 2.5]}}
    with TrackCache(tmp_path / "c") as cache:
        assert cache.put("k1", audio, 32000, meta)
        track = cache.get("k1")
    assert isinstance(track, Track)
    assert track.key == "k1" and track.sample_rate == 32000 and track.meta == meta
    assert track.audio.dtype == np.float32 and track.audio.shape == (2, frames)
    assert track.audio.tobytes() == audio.tobytes()  # bit-exact, -0.0 and denormals included
    assert track.duration == frames / 32000
    track.audio[:] = 0  # the caller owns its copy
    # Everything lives in SQLite: diskcache value files aren't crash safe (see cache.py).
    assert not [p for p in (tmp_path / "c").rglob("*") if p.suffix == ".val"]


def test_get_returns_independent_copies_and_fills_created(tmp_path):
    cache = TrackCache(tmp_path)
    before = time.time()
    cache.put("k", audio_for(1)[0], 16000, {"prompt": "mono"})  # 1-D means mono
    a, b = cache.get("k"), cache.get("k")
    assert a.audio.shape == (1, 4000)
    assert a.audio.flags.writeable and a.audio.flags.owndata
    a.audio[:] = 5
    np.testing.assert_array_equal(b.audio[0], audio_for(1)[0])
    assert before <= a.meta["created"] <= time.time()


def test_miss_and_reopen_after_close(tmp_path):
    cache = TrackCache(tmp_path)
    assert cache.get("nope") is None
    cache.put("k", audio_for(1), 32000, {"prompt": "p"})
    cache.close()
    cache = TrackCache(tmp_path)
    assert cache.contains("k") and "k" in cache
    np.testing.assert_array_equal(cache.get("k").audio, audio_for(1))
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_put_replaces_and_keeps_byte_count(tmp_path):
    cache = TrackCache(tmp_path)
    cache.put("k", audio_for(1, frames=1000), 32000, {"created": 1.0})
    cache.put("k", audio_for(2, frames=3000), 32000, {"created": 1.0})
    np.testing.assert_array_equal(cache.get("k").audio, audio_for(2, frames=3000))
    assert cache.keys() == ["k"]
    assert cache.stats()["bytes"] == blob_size(audio_for(2, frames=3000))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "wrong_type"])
@pytest.mark.parametrize("frames", [100, 48000])
def test_corrupt_entry_is_a_miss_and_removed(tmp_path, damage, frames):
    cache = TrackCache(tmp_path)
    cache.put("bad", audio_for(1, frames=frames), 32000, {"prompt": "p"})
    cache.put("good", audio_for(2), 32000, {"prompt": "q"})
    raw = diskcache.Cache(str(tmp_path))  # a second, independent handle on the directory
    blob = raw.get(BLOB_PREFIX + "bad")
    if damage == "flip":
        value = bytearray(blob)
        value[len(value) // 2] ^= 0x40
        value = bytes(value)
    elif damage == "truncate":
        value = blob[: len(blob) - 8]
    elif damage == "garbage":
        value = os.urandom(len(blob))
    else:
        value = "not bytes at all"
    raw.set(BLOB_PREFIX + "bad", value)
    raw.close()

    assert cache.get("bad") is None
    assert not cache.contains("bad")
    assert cache.keys() == ["good"]
    assert cache.stats()["bytes"] == cache.ls()[0]["bytes"]
    assert cache.stats()["misses"] == 1
    assert cache.get("good") is not None


def test_index_without_blob_is_tidied(tmp_path):
    cache = TrackCache(tmp_path)
    cache.put("k", audio_for(1), 32000, {})
    cache.raw.delete(BLOB_PREFIX + "k")
    assert cache.keys() == ["k"]
    assert cache.get("k") is None
    assert cache.keys() == [] and cache.stats()["bytes"] == 0


def test_put_rejects_bad_input(tmp_path):
    cache = TrackCache(tmp_path)
    with pytest.raises(ValueError):
        cache.put("k", np.zeros((2, 2, 2), np.float32), 32000, {})
    with pytest.raises(ValueError):
        cache.put("k", audio_for(1), 0, {})
    with pytest.raises(ValueError):
        cache.put("", audio_for(1), 32000, {})
    with pytest.raises(ValueError):
        cache.put("k", audio_for(1), 32000, {"x": float("nan")})
    assert cache.keys() == []


# --- eviction and pins -------------------------------------------------------------------


def _lru_cache(tmp_path, fits: float) -> tuple[TrackCache, int]:
    size = blob_size(audio_for(0))
    return TrackCache(tmp_path, size_limit_bytes=int(size * fits)), size


def test_eviction_is_least_recently_used(tmp_path):
    cache, size = _lru_cache(tmp_path, 3.5)
    for i, key in enumerate("abc"):
        cache.put(key, audio_for(i), 32000, {"created": 1.0})
    assert cache.get("a") is not None  # a is now the most recent; b the least
    cache.put("d", audio_for(3), 32000, {"created": 1.0})
    assert sorted(cache.keys()) == ["a", "c", "d"]
    cache.contains("c")  # contains doesn't count as use
    cache.put("e", audio_for(4), 32000, {"created": 1.0})
    assert sorted(cache.keys()) == ["a", "d", "e"]
    stats = cache.stats()
    assert stats["bytes"] == 3 * size <= stats["size_limit"]
    assert stats["entries"] == 3


def test_eviction_state_is_shared_with_a_reopened_cache(tmp_path):
    cache, size = _lru_cache(tmp_path, 2.5)
    cache.put("a", audio_for(1), 32000, {"created": 1.0})
    cache.put("b", audio_for(2), 32000, {"created": 1.0})
    cache.get("a")
    cache.close()
    cache, _ = _lru_cache(tmp_path, 2.5)
    cache.put("c", audio_for(3), 32000, {"created": 1.0})
    assert sorted(cache.keys()) == ["a", "c"]


def test_entry_bigger_than_the_limit_is_not_stored(tmp_path):
    cache, size = _lru_cache(tmp_path, 2.5)
    cache.put("a", audio_for(1), 32000, {"created": 1.0})
    assert cache.put("huge", audio_for(2, frames=40000), 32000, {}) is False
    assert cache.keys() == ["a"]


def test_pinned_entries_survive_over_the_limit_until_unpinned(tmp_path):
    cache, size = _lru_cache(tmp_path, 1.5)
    cache.pin("a")
    cache.pin("b")
    cache.pin("b")  # reference counted
    cache.put("a", audio_for(1), 32000, {"created": 1.0})
    cache.put("b", audio_for(2), 32000, {"created": 1.0})
    assert sorted(cache.keys()) == ["a", "b"]  # over the limit, but both pinned
    cache.put("c", audio_for(3), 32000, {"created": 1.0})
    assert sorted(cache.keys()) == ["a", "b"]  # the only unpinned one went
    assert cache.stats()["bytes"] == 2 * size > cache.size_limit

    cache.unpin("a")  # now a is evictable and the cache is over the limit
    assert cache.keys() == ["b"]
    cache.unpin("b")
    assert cache.is_pinned("b")
    cache.put("d", audio_for(4), 32000, {"created": 1.0})
    assert cache.keys() == ["b"]  # still one pin on b, so the new entry had to go
    cache.unpin("b")
    assert not cache.is_pinned("b")
    assert cache.keys() == ["b"]  # under the limit: unpinning alone evicts nothing
    cache.put("e", audio_for(5), 32000, {"created": 1.0})
    assert cache.keys() == ["e"]  # b was the least recently used
    with pytest.raises(ValueError):
        cache.unpin("b")


def test_pinned_context_manager_and_pinned_entry_still_readable(tmp_path):
    cache, size = _lru_cache(tmp_path, 1.5)
    cache.put("a", audio_for(1), 32000, {"created": 1.0})
    with cache.pinned("a"):
        assert cache.is_pinned("a")
        for i in range(3):
            cache.put(f"x{i}", audio_for(i + 10), 32000, {"created": 1.0})
        np.testing.assert_array_equal(cache.get("a").audio, audio_for(1))
    assert not cache.is_pinned("a")
    with pytest.raises(RuntimeError):
        with cache.pinned("a"):
            raise RuntimeError("stream failed")
    assert cache.stats()["pinned"] == 0


# --- ls / stats / clear ------------------------------------------------------------------


def test_ls_stats_clear(tmp_path):
    cache = TrackCache(tmp_path, size_limit_bytes=10**9)
    long_prompt = "a very long prompt about a harp in a forest at night " * 4
    cache.put("k1", audio_for(1, frames=32000), 32000,
              {"prompt": long_prompt, "context": "forest", "variant": 0, "created": 10.0})
    cache.put("k2", audio_for(2, frames=16000), 32000,
              {"prompt": "battle", "context": "boss", "variant": 3, "created": 20.0})
    cache.get("k1")
    cache.get("k2")
    cache.get("missing")

    rows = cache.ls()
    assert [r["key"] for r in rows] == ["k1", "k2"]
    r1, r2 = rows
    assert r1["context"] == "forest" and r1["variant"] == 0 and r1["created"] == 10.0
    assert r1["duration"] == 1.0 and r2["duration"] == 0.5
    assert r1["prompt"] == long_prompt   # whole: `cache ls` cuts it for people, not for --json
    assert r2["prompt"] == "battle"
    assert r1["bytes"] == blob_size(audio_for(1, frames=32000), meta=cache.get("k1").meta)

    stats = cache.stats()
    assert stats["entries"] == 2
    assert stats["bytes"] == r1["bytes"] + r2["bytes"]
    assert stats["size_limit"] == 10**9
    assert (stats["hits"], stats["misses"]) == (3, 1)
    assert (stats["session_hits"], stats["session_misses"]) == (3, 1)

    assert cache.delete("k2") is True and cache.delete("k2") is False
    cache.pin("k1")
    cache.put("k3", audio_for(3), 32000, {})
    assert cache.clear() == 1  # pinned k1 stays
    assert cache.keys() == ["k1"]
    cache.unpin("k1")
    assert cache.clear() == 1
    stats = cache.stats()
    assert (stats["entries"], stats["bytes"], stats["hits"], stats["misses"]) == (0, 0, 0, 0)
    assert cache.ls() == []


# --- concurrency -------------------------------------------------------------------------


def _tagged(i: int, frames: int = 3000) -> np.ndarray:
    a = audio_for(1000, frames=frames)
    a[0, 0] = i  # identifies the writer, so a reader can tell a mixed-up entry
    return a


def test_threads_put_and_get_concurrently(tmp_path):
    size = blob_size(_tagged(0), meta={"i": 0, "created": 1.0})
    cache = TrackCache(tmp_path, size_limit_bytes=int(size * 12.5))
    errors = []

    def worker(t: int) -> None:
        rng = random.Random(t)
        try:
            for n in range(25):
                i = t * 100 + n
                cache.put(f"k{i}", _tagged(i), 32000, {"i": i, "created": 1.0})
                j = rng.choice(range(t * 100, i + 1)) if rng.random() < 0.5 else rng.randrange(800)
                with cache.pinned(f"k{j}"):
                    track = cache.get(f"k{j}")
                if track is not None:
                    assert track.meta["i"] == j, (j, track.meta)
                    assert track.audio[0, 0] == j
                    np.testing.assert_array_equal(track.audio[:, 1:], _tagged(j)[:, 1:])
        except Exception as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors, errors
    stats = cache.stats()
    assert stats["bytes"] == sum(r["bytes"] for r in cache.ls()) <= stats["size_limit"]
    assert stats["entries"] == 12
    for key in cache.keys():
        assert cache.get(key) is not None


WRITER = """
    import sys
    import numpy as np
    from troubadour.cache import TrackCache
    directory, first, count, frames, limit = sys.argv[1], *map(int, sys.argv[2:6])
    audio = np.random.default_rng(1000).uniform(-1, 1, (2, frames)).astype(np.float32)
    cache = TrackCache(directory, size_limit_bytes=limit)
    for i in range(first, first + count):
        audio[0, 0] = i
        cache.put(f"k{i}", audio, 32000, {"i": i, "created": 1.0})
        cache.get(f"k{first + (i * 7919) % (i - first + 1)}")
        print(i, flush=True)
"""


def _check_consistent(directory: Path, frames: int) -> TrackCache:
    cache = TrackCache(directory, size_limit_bytes=10**12)
    keys = cache.keys()
    for key in keys:
        track = cache.get(key)
        assert track is not None, f"{key} listed but unreadable"
        i = track.meta["i"]
        assert key == f"k{i}" and track.audio[0, 0] == i
        np.testing.assert_array_equal(track.audio[:, 1:], _tagged(i, frames)[:, 1:])
    stats = cache.stats()
    assert stats["entries"] == len(keys)
    assert stats["bytes"] == sum(r["bytes"] for r in cache.ls())
    # No half entries hiding in the raw keyspace either: blob, index and atime go together.
    raw = [k for k in cache.raw.iterkeys() if not k.startswith("s/")]
    for prefix in ("t/", "i/", "a/"):
        assert sorted(k[2:] for k in raw if k.startswith(prefix)) == sorted(keys), prefix
    return cache


def test_processes_put_and_get_concurrently(tmp_path):
    size = blob_size(_tagged(0), meta={"i": 0, "created": 1.0})
    limit = int(size * 10.5)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path),
                               str(p * 1000), "30", "3000", str(limit)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    cache = _check_consistent(tmp_path, 3000)
    assert len(cache.keys()) == 10
    assert cache.stats()["bytes"] <= limit


# --- crash safety ------------------------------------------------------------------------


def test_sigkill_mid_put_leaves_only_whole_entries(tmp_path):
    """Kill writers at random moments while they put ~2 MB entries (and evict)."""
    frames = 250_000
    limit = 12 * blob_size(_tagged(0, frames), meta={"i": 0, "created": 1.0})
    rng = random.Random(1234)
    done = 0
    for round_ in range(4):
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path),
                              str(round_ * 10_000), "100000", str(frames), str(limit)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(3 + round_):  # let a few puts (and evictions) land first
                line = p.stdout.readline()
                assert line, p.stderr.read()
            time.sleep(rng.uniform(0.0, 0.05))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
        assert p.returncode == -signal.SIGKILL
        done += 1
        _check_consistent(tmp_path, frames).close()
    cache = _check_consistent(tmp_path, frames)
    assert done == 4 and len(cache.keys()) >= 3


def test_put_killed_between_its_writes_leaves_the_old_entry(tmp_path):
    """SIGKILL after the new blob is written but before its index: the old entry stays."""
    code = """
        import os, signal, sys
        import numpy as np
        from troubadour.cache import TrackCache
        cache = TrackCache(sys.argv[1])
        old = np.full((2, 50000), 0.25, np.float32)
        cache.put("k", old, 32000, {"i": 1, "created": 1.0})
        real_set = cache.raw.set
        def dying_set(key, value, *a, **kw):
            if key == "i/k":  # the blob "t/k" is already set in this transaction
                os.kill(os.getpid(), signal.SIGKILL)
            return real_set(key, value, *a, **kw)
        cache.raw.set = dying_set
        cache.put("k", old * 2, 32000, {"i": 2, "created": 1.0})
        print("put finished")  # never reached
    """
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    cache = TrackCache(tmp_path)
    track = cache.get("k")
    assert track.meta["i"] == 1
    np.testing.assert_array_equal(track.audio, np.full((2, 50000), 0.25, np.float32))
    assert cache.stats()["bytes"] == cache.ls()[0]["bytes"]
    assert sorted(cache.raw.iterkeys()) == ["a/k", "i/k", "s/bytes", "s/hits", "t/k"]


def test_put_failing_midway_in_process_changes_nothing(tmp_path):
    cache = TrackCache(tmp_path)
    cache.put("k", audio_for(1), 32000, {"i": 1})
    real_set = cache.raw.set

    def failing_set(key, value, *a, **kw):
        if key.startswith("a/"):
            raise OSError("disk full")
        return real_set(key, value, *a, **kw)

    cache.raw.set = failing_set
    with pytest.raises(OSError):
        cache.put("k", audio_for(2), 32000, {"i": 2})
    with pytest.raises(OSError):
        cache.put("new", audio_for(3), 32000, {"i": 3})
    cache.raw.set = real_set
    assert cache.keys() == ["k"] and cache.get("k").meta["i"] == 1
    assert cache.stats()["bytes"] == cache.ls()[0]["bytes"]



def test_a_tampered_row_asking_to_be_unpickled_is_never_unpickled(tmp_path):
    """diskcache unpickles rows whose mode says so; a cache folder is a file others may hand over (a shared
    bake's .cache). Ours never hold pickles: such a row reads as nothing, its code does not run."""
    import os
    import pickle
    import sqlite3

    from troubadour.cache import BLOB_PREFIX, TrackCache, track_key

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    key = track_key("model", "calm piano", {"seed": 1})
    with TrackCache(tmp_path / "c") as cache:
        cache.put(key, np.zeros((1, 3200), np.float32), 32000, {"prompt": "calm piano"})
    db = sqlite3.connect(tmp_path / "c" / "cache.db")
    db.execute("UPDATE Cache SET mode = 4, value = ? WHERE key = ?", (pickle.dumps(Payload()), BLOB_PREFIX + key))
    db.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, "
               "filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 1, NULL, 1)", (pickle.dumps(Payload()),))
    db.commit()
    db.close()
    with TrackCache(tmp_path / "c") as cache:
        assert cache.get(key) is None
        assert cache.keys() in ([], [key])
        cache.stats()
    assert not marker.exists()


def test_the_size_limit_is_recorded_for_other_processes(tmp_path):
    """`troubadour cache stats` runs in its own process: it reported the default 2 GiB whatever --cache-size the
    server kept. The limit a server sets is recorded; opening without one reads it back."""
    from troubadour.cache import DEFAULT_SIZE_LIMIT

    with TrackCache(tmp_path / "fresh") as cache:
        assert cache.size_limit == DEFAULT_SIZE_LIMIT
    with TrackCache(tmp_path / "c", 1_500_000):
        pass
    with TrackCache(tmp_path / "c") as cache:
        assert cache.size_limit == cache.stats()["size_limit"] == 1_500_000
    with TrackCache(tmp_path / "c", 3_000_000):
        pass
    with TrackCache(tmp_path / "c") as cache:
        assert cache.size_limit == 3_000_000
