"""troubadour.streams.Memo (recently delivered tracks, ready to send) and replays through it on a real server."""

import hashlib

import pytest
import zmq

from servers import ServerProcess
from troubadour.client import Client
from troubadour.streams import Memo


def _pieces(n, size):
    return [(i * size, size // 2, bytes([i % 256]) * size) for i in range(n)]


def test_memo_keeps_pieces_as_frames_with_the_same_bytes():
    memo = Memo(limit_bytes=1 << 20)
    pieces = _pieces(3, 1000)
    memo.put(("t", "wav", 48000), pieces, 1500, 3000, {"sha256": "x"})
    got, frames, nbytes, digests = memo.get(("t", "wav", 48000))
    assert (frames, nbytes, digests) == (1500, 3000, {"sha256": "x"})
    assert [(o, n) for o, n, _ in got] == [(o, n) for o, n, _ in pieces]
    assert all(isinstance(d, zmq.Frame) and bytes(d) == p for (_, _, d), (_, _, p) in zip(got, pieces))
    assert memo.get(("t", "wav", 44100)) is None


def test_memo_is_bounded_least_recently_used_first():
    memo = Memo(limit_bytes=10_000)
    memo.put("big", _pieces(1, 3000), 1, 3000, {})          # over a quarter of the limit: not kept
    assert memo.get("big") is None
    for k in "abcd":
        memo.put(k, _pieces(1, 2000), 1, 2000, {})
    memo.get("a")                                            # a is now the most recent
    memo.put("e", _pieces(1, 2000), 1, 2000, {})
    memo.put("f", _pieces(1, 2000), 1, 2000, {})
    assert memo.size <= 10_000
    assert memo.get("b") is None and all(memo.get(k) is not None for k in "aef")


def test_memo_drop_removes_every_format_of_a_track():
    memo = Memo()
    for key in (("t1", "wav", 48000), ("t1", "pcm_s16le", 32000), ("t2", "wav", 48000)):
        memo.put(key, _pieces(1, 100), 1, 100, {})
    memo.drop("t1")
    assert memo.get(("t1", "wav", 48000)) is None and memo.get(("t1", "pcm_s16le", 32000)) is None
    assert memo.get(("t2", "wav", 48000)) is not None and memo.size == 100


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("server"), args=["--no-watch"]) as srv:
        yield srv


@pytest.mark.parametrize("fmt,rate", [("pcm_s16le", 48000), ("wav", 44100), ("pcm_f32le", 32000)])
def test_repeated_hits_replay_the_same_bytes(server, fmt, rate):
    """First hit: from the cache (read, resampled, encoded); later hits: from the memo. Streamed and whole."""
    req = dict(prompt=f"memo replay {fmt}", params={"duration": 1.0, "seed": 5}, format=fmt, sample_rate=rate)
    with Client(server.address, timeout=30) as c:
        cold = c.get_track(**req)
        hits = [c.get_track(**req) for _ in range(3)] + [c.get_track(**req, stream=False) for _ in range(2)]
        assert not c.violations
    assert cold.cached is False and all(h.cached for h in hits)
    for h in hits:
        assert h.audio == cold.audio and h.sha256 == cold.sha256 == hashlib.sha256(cold.audio).hexdigest()
