"""Persistent track cache on diskcache, keyed by everything that changes the audio.

Storage (one diskcache directory, all keys are str, no value is ever pickled):

    "t/<key>"  track blob, bytes (see trackblob)
    "i/<key>"  index entry, JSON text: bytes, created, context, variant, prompt, duration,
               sample_rate, channels, frames (lets ls/eviction skip the big blobs)
    "a/<key>"  last access time, float (a separate key so a hit doesn't rewrite the index)
    "s/bytes", "s/hits", "s/misses"   int counters shared by every process

A put writes blob, index and access time in one SQLite transaction, and a delete removes
all three in one, so readers in any thread or process see a whole entry or none. Every
value lives inside the SQLite database (no diskcache value files, see __init__), and
SQLite commits atomically, so a process killed mid-put or mid-eviction leaves the old
state or the new one, never a partial entry. Each blob also carries a sha256, so an
entry damaged on disk is dropped on read instead of served. Deleted space is reused by
SQLite but the database file doesn't shrink (its high-water mark is about the limit).

Eviction is ours, not diskcache's (its culling can't skip pinned entries): diskcache runs
with eviction_policy "none", and after each put we delete the least recently read,
unpinned entries until the blob bytes fit the size limit. Pins live in this process only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import diskcache
import numpy as np

from .audio import json_default
from .params import GenParams
from .trackblob import CorruptTrack, decode_track, encode_track, planar_f32

# Bump when the meaning of a key changes (new field, different canonical form): old
# entries then simply stop matching.
KEY_VERSION = 1
KEY_CHARS = 32  # 128 bits of sha256

DEFAULT_SIZE_LIMIT = 2 * 1024**3

BLOB_PREFIX = "t/"
INDEX_PREFIX = "i/"
ATIME_PREFIX = "a/"
BYTES_KEY = "s/bytes"
HITS_KEY = "s/hits"
MISSES_KEY = "s/misses"
LIMIT_KEY = "s/size_limit"   # the limit the last server kept, so other processes can report it

LS_PROMPT_CHARS = 60


@dataclass
class Track:
    key: str
    audio: np.ndarray  # float32 (channels, frames), owned by the caller
    sample_rate: int
    meta: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.audio.shape[1] / self.sample_rate


# --- keys --------------------------------------------------------------------------------


def _canonical(obj):
    """Plain-JSON form where equal numbers look equal (10 == 10.0 == np.float32(10))."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (str, int)):  # bool is an int and stays true/false
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite number {obj!r} can't be part of a cache key")
        # Integral floats become ints so 10 and 10.0 agree; others keep repr's exact digits.
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"cache key dicts need str keys, got {list(obj)!r}")
        return {k: _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} can't be part of a cache key")


def canonical_json(obj) -> str:
    # ensure_ascii: pure ASCII text, so even lone surrogates in a prompt encode the same.
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def track_key(model_identity: str, prompt: str, params: dict | GenParams,
              extra: dict | None = None) -> str:
    """Hex key for one generated track: same inputs give the same key in any process.

    `params` is filled in with GenParams defaults, so leaving a field out hashes like
    passing its default (and a changed default changes the key, as it changes the audio).
    Fields GenParams doesn't know are kept. The prompt is hashed exactly as given.
    `extra` holds post-processing that also changes the audio (loop, bpm, loudness...).
    """
    if isinstance(params, GenParams):
        params = params.to_dict()
    doc = {
        "v": KEY_VERSION,
        "model": model_identity,
        "prompt": prompt,
        "params": {**GenParams().to_dict(), **params},
        "extra": extra or {},
    }
    digest = hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()
    return digest[:KEY_CHARS]


# --- the cache ---------------------------------------------------------------------------


class _NoPickleDisk(diskcache.Disk):
    """Everything stored here is bytes, text or a number. A row asking to be unpickled was not written by
    troubadour (a tampered or foreign cache folder, e.g. a shared bake's .cache): unpickling could run its
    code, so it reads as nothing."""

    def fetch(self, mode, filename, value, read):
        return None if mode == diskcache.core.MODE_PICKLE else super().fetch(mode, filename, value, read)

    def get(self, key, raw):
        return super().get(key, raw) if raw else REFUSED_KEY


REFUSED_KEY = "\x00refused"   # what a pickled key reads as: no prefix of ours matches it


class TrackCache:
    """Track store shared by threads and processes; see the module docstring."""

    def __init__(self, directory: str | os.PathLike, size_limit_bytes: int | None = None):
        """size_limit_bytes: the limit to keep (and record in the cache, for `troubadour cache stats` and other
        processes); None takes the one recorded last (a server's --cache-size), else DEFAULT_SIZE_LIMIT."""
        self.directory = os.fspath(directory)
        # diskcache's own limit/culling is switched off: it can't honour pins.
        # disk_min_file_size keeps every value inside SQLite: diskcache deletes a replaced
        # or deleted value's *file* before an enclosing transaction commits, so a crash
        # there would leave the old row pointing at a missing file.
        self.raw = diskcache.Cache(self.directory, eviction_policy="none", cull_limit=0,
                                   size_limit=2**62, statistics=False,
                                   disk_min_file_size=2**62, disk=_NoPickleDisk)
        if size_limit_bytes is None:
            self.size_limit = int(self.raw.get(LIMIT_KEY, DEFAULT_SIZE_LIMIT))
        else:
            self.size_limit = int(size_limit_bytes)
            self.raw.set(LIMIT_KEY, self.size_limit, retry=True)
        self._pins: dict[str, int] = {}
        self._lock = threading.Lock()  # guards _pins; never taken inside a DB transaction
        self.session_hits = 0
        self.session_misses = 0

    # lifecycle

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> "TrackCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # reads

    def get(self, key: str) -> Track | None:
        """The whole track, or None. A damaged entry counts as a miss and is deleted."""
        blob = self.raw.get(BLOB_PREFIX + key, read=False)
        track = None
        if blob is not None:
            try:
                audio, sr, meta = decode_track(blob)
                track = Track(key, audio, sr, meta)
            except CorruptTrack:
                self._drop_if_broken(key)
        elif INDEX_PREFIX + key in self.raw:
            self._drop_if_broken(key)  # an index without its blob: tidy it away
        with self._lock:
            self.session_hits += track is not None
            self.session_misses += track is None
        if track is None:
            self.raw.incr(MISSES_KEY, retry=True)
            return None
        with self.raw.transact(retry=True):
            if INDEX_PREFIX + key in self.raw:  # not deleted since we read it
                self.raw.set(ATIME_PREFIX + key, time.time())
            self.raw.incr(HITS_KEY)
        return track

    def count(self, hits: int, misses: int) -> None:
        """Add requests answered without a read here (a server's memory of recent tracks) or that needed a
        generation: the server batches these, since a counter write per request would cost more than the hit."""
        with self._lock:
            self.session_hits += hits
            self.session_misses += misses
        with self.raw.transact(retry=True):
            self.raw.incr(HITS_KEY, hits)
            self.raw.incr(MISSES_KEY, misses)

    def contains(self, key: str) -> bool:
        """Whether an entry exists (not verified, not counted, doesn't refresh LRU)."""
        return BLOB_PREFIX + key in self.raw

    __contains__ = contains

    def keys(self) -> list[str]:
        return [k[len(INDEX_PREFIX):] for k in self.raw.iterkeys()
                if isinstance(k, str) and k.startswith(INDEX_PREFIX)]

    def ls(self) -> list[dict]:
        """One summary per entry, oldest first."""
        rows = []
        for key in self.keys():
            text = self.raw.get(INDEX_PREFIX + key)
            if text is None:
                continue  # deleted while we iterated
            idx = _loads(text)
            rows.append({
                "key": key,
                "context": idx.get("context"),
                "variant": idx.get("variant"),
                "prompt": str(idx.get("prompt") or ""),
                "duration": idx.get("duration"),
                "bytes": idx.get("bytes", 0),
                "created": idx.get("created"),
                "accessed": self.raw.get(ATIME_PREFIX + key),
            })
        rows.sort(key=lambda r: (_number(r["created"]), r["key"]))
        return rows

    def stats(self) -> dict:
        """hits/misses are totals over every process; session_* are this object's."""
        with self._lock:
            pinned = len(self._pins)
        return {
            "directory": self.directory,
            "entries": len(self.keys()),
            "bytes": self.raw.get(BYTES_KEY, 0),
            "size_limit": self.size_limit,
            "hits": self.raw.get(HITS_KEY, 0),
            "misses": self.raw.get(MISSES_KEY, 0),
            "session_hits": self.session_hits,
            "session_misses": self.session_misses,
            "pinned": pinned,
        }

    # writes

    def put(self, key: str, audio: np.ndarray, sample_rate: int, meta: dict | None = None) -> bool:
        """Store a track atomically (replacing any entry under `key`), then evict.

        Returns False, storing nothing, when the entry alone is over the size limit:
        keeping it would flush everything else for one track that can't stay anyway.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"cache key must be a non-empty str, got {key!r}")
        meta = dict(meta or {})
        meta.setdefault("created", time.time())
        a = planar_f32(audio)
        blob = encode_track(a, sample_rate, meta)
        if len(blob) > self.size_limit:
            return False
        index = {name: meta.get(name) for name in ("created", "context", "variant", "prompt")}
        index.update(bytes=len(blob), duration=a.shape[1] / int(sample_rate),
                     sample_rate=int(sample_rate), channels=a.shape[0], frames=a.shape[1])
        index_text = json.dumps(index, ensure_ascii=False, default=json_default)
        with self.raw.transact(retry=True):
            self._delete_in_txn(key)
            self.raw.set(BLOB_PREFIX + key, blob)
            self.raw.set(INDEX_PREFIX + key, index_text)
            self.raw.set(ATIME_PREFIX + key, time.time())
            self.raw.incr(BYTES_KEY, len(blob))
        self._evict()
        return True

    def delete(self, key: str) -> bool:
        """Remove an entry, pinned or not (an explicit delete isn't eviction)."""
        with self.raw.transact(retry=True):
            return self._delete_in_txn(key)

    def clear(self) -> int:
        """Delete every entry not pinned here and reset hit/miss counters; returns the count."""
        removed = 0
        for key in self.keys():
            with self._lock:
                if key in self._pins:
                    continue
                removed += self.delete(key)
        with self.raw.transact(retry=True):
            self.raw.set(HITS_KEY, 0)
            self.raw.set(MISSES_KEY, 0)
        return removed

    def _delete_in_txn(self, key: str) -> bool:
        # Caller holds a transaction, so the byte counter moves with the entry.
        size = _loads(self.raw.get(INDEX_PREFIX + key)).get("bytes", 0)
        existed = self.raw.delete(BLOB_PREFIX + key)
        existed = self.raw.delete(INDEX_PREFIX + key) or existed
        self.raw.delete(ATIME_PREFIX + key)
        if size:
            self.raw.incr(BYTES_KEY, -size)
        return existed

    def _drop_if_broken(self, key: str) -> None:
        # Re-check under the write lock: another process may have replaced the entry
        # with a good one since we read it, and that one must survive.
        with self.raw.transact(retry=True):
            blob = self.raw.get(BLOB_PREFIX + key)
            if blob is None:
                if INDEX_PREFIX + key in self.raw:
                    self._delete_in_txn(key)
                return
            try:
                decode_track(blob)
            except CorruptTrack:
                self._delete_in_txn(key)

    # pins and eviction

    def pin(self, key: str) -> None:
        """Protect `key` from eviction (in this process) until a matching unpin."""
        with self._lock:
            self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, key: str) -> None:
        with self._lock:
            count = self._pins.pop(key, 0)
            if count <= 0:
                raise ValueError(f"{key!r} is not pinned")
            if count > 1:
                self._pins[key] = count - 1
        if count == 1:
            self._evict()  # the cache may have stayed over the limit for this pin

    def is_pinned(self, key: str) -> bool:
        with self._lock:
            return key in self._pins

    @contextlib.contextmanager
    def pinned(self, key: str) -> Iterator[str]:
        self.pin(key)
        try:
            yield key
        finally:
            self.unpin(key)

    def _evict(self) -> int:
        """Delete least recently read, unpinned entries until under the limit."""
        if self.raw.get(BYTES_KEY, 0) <= self.size_limit:
            return 0
        order = sorted(self.keys(), key=lambda k: self.raw.get(ATIME_PREFIX + k) or 0.0)
        removed = 0
        for key in order:
            # Pin check and delete under one lock, so a pin taken now can't be raced.
            with self._lock:
                if key in self._pins:
                    continue
                with self.raw.transact(retry=True):
                    # Re-read inside the transaction: other evictors may have freed enough.
                    if self.raw.get(BYTES_KEY, 0) <= self.size_limit:
                        break
                    removed += self._delete_in_txn(key)
        return removed


def _number(x) -> float:
    return float(x) if isinstance(x, (int, float)) else 0.0


def _loads(text) -> dict:
    # An unreadable index entry reads as empty rather than breaking ls or a delete.
    try:
        out = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}
