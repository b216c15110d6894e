"""troubadour.streams.Memo (recently delivered tracks, ready to send) and replays through it on a real server."""

import hashlib

import pytest
import zmq

from servers import ServerProcess
from troubadour import protocol as P
from troubadour.client import Client
from troubadour.streams import Memo


def _pieces(n, size):
    return [(i * size, size // 2, bytes([i % 256]) * size) for i in range(n)]


def test_memo_keeps_pieces_as_frames_and_prebuilt_messages_with_the_same_bytes():
    memo = Memo(limit_bytes=1 << 20)
    pieces = _pieces(3, 1000)
    memo.put(("t", "wav", 48000), pieces, 1500, 3000, {"sha256": "x"})
    entry = memo.get(("t", "wav", 48000))
    assert (entry.frames, entry.nbytes, entry.digests) == (1500, 3000, {"sha256": "x"})
    assert [(o, n) for o, n, _ in entry.pieces] == [(o, n) for o, n, _ in pieces]
    assert all(isinstance(d, zmq.Frame) and bytes(d) == p for (_, _, d), (_, _, p) in zip(entry.pieces, pieces))
    for seq, (message, (o, n, data)) in enumerate(zip(entry.chunks, pieces)):
        got = message.frames("r7", seq + 1)
        assert got[:3] == P.reply("r7", seq + 1, False, P.CHUNK, data, offset=o, frames=n, bytes=len(data))[:3]
        assert bytes(got[3]) == data
    assert entry.end.frames(9, 4) == P.reply(9, 4, True, P.END, frames=1500, bytes=3000, sha256="x")
    assert memo.get(("t", "wav", 44100)) is None


def test_memo_holds_a_track_while_any_of_its_formats_is_remembered():
    memo = Memo(limit_bytes=4000)
    memo.put(("a", "wav", 48000), _pieces(1, 1000), 500, 1000, {})
    memo.put(("a", "pcm_s16le", 32000), _pieces(1, 1000), 500, 1000, {})
    memo.put(("b", "wav", 48000), _pieces(1, 1000), 500, 1000, {})
    assert memo.holds("a") and memo.holds("b") and not memo.holds("c")
    memo.put(("c", "wav", 48000), _pieces(1, 1000), 500, 1000, {})
    memo.put(("d", "wav", 48000), _pieces(1, 1000), 500, 1000, {})   # over the limit: the oldest goes
    assert memo.holds("a") and memo.size == 4000   # its other format is still there
    memo.put(("e", "wav", 48000), _pieces(1, 1000), 500, 1000, {})
    assert not memo.holds("a") and all(memo.holds(t) for t in "bcde")
    memo.drop("b")
    assert not memo.holds("b") and memo.holds("c") and memo.size == 3000


def test_memo_non_streamed_message_shares_one_payload_counted_against_the_limit():
    """Every non-streamed request of a remembered track sends the same joined payload (unread replies held a
    copy each); the bytes are protocol.reply()'s; the joined copy counts against the memo's limit."""
    memo = Memo(limit_bytes=4000)
    pieces = _pieces(2, 500)
    memo.put(("t", "wav", 48000), pieces, 500, 1000, {"sha256": "x"})
    for other in "uv":
        memo.put((other, "wav", 48000), _pieces(1, 1000), 500, 1000, {})
    entry = memo.get(("t", "wav", 48000))
    head = {"track_id": "t", "context": "battle", "frames": 500}
    first = memo.whole(entry, ("battle", 0), lambda: head)
    again = memo.whole(entry, ("battle", 0), lambda: {})
    assert again is first and memo.size == 4000
    a, b = first.frames(1, 0), first.frames("r2", 0)
    assert a[:3] == P.reply(1, 0, True, P.TRACK, b"", **head, bytes=1000, sha256="x")[:3]
    assert a[3] is b[3] and bytes(a[3]) == b"".join(p for _, _, p in pieces)
    boss = memo.whole(entry, ("boss", 0), lambda: {**head, "context": "boss"})
    assert boss.frames(1, 0)[3] is a[3] and memo.size == 4000   # another header, the same payload
    memo.whole(memo.get(("u", "wav", 48000)), ("x", 0), lambda: {"track_id": "u", "frames": 500})
    assert memo.size == 4000 and not memo.holds("v") and memo.holds("t")   # over the limit: the oldest went
    memo.drop("t")
    assert memo.size == 2000 and bytes(a[3]) == b"".join(p for _, _, p in pieces)   # a made message keeps it


def test_memo_header_is_built_once_per_key():
    memo = Memo()
    memo.put("t", _pieces(1, 100), 50, 100, {})
    entry, calls = memo.get("t"), []

    def build(context):
        calls.append(context)
        return {"track_id": "t", "context": context}

    first = entry.header(("battle", 0), lambda: build("battle"))
    assert entry.header(("battle", 0), lambda: build("battle")) is first
    other = entry.header(("boss", 0), lambda: build("boss"))
    assert calls == ["battle", "boss"]
    assert P.decode(other.frames(1, 0), reply=True).body["context"] == "boss"


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


@pytest.fixture(scope="module")
def stereo_server(tmp_path_factory):
    from troubadour.testmodel import build_test_model

    model = build_test_model(tmp_path_factory.mktemp("stereo") / "m", stereo=True)
    with ServerProcess(model, tmp_path_factory.mktemp("stereo-server"), args=["--no-watch"]) as srv:
        yield srv


@pytest.mark.parametrize("fmt,rate", [("pcm_f32le", 48000), ("pcm_s16le", 48000), ("pcm_s16le", 32000)])
def test_cached_replays_send_few_large_chunks_within_the_limit(stereo_server, fmt, rate):
    """A cached replay starts with 0.5 s (audio at once), then sends whole streaming chunks adding up to at most
    15/16 MiB per message (fewer messages than live streaming; never over the protocol's 1 MiB chunk limit, which
    4 s of 48 kHz stereo f32 would break)."""
    from troubadour.client import Chunk
    from troubadour.protocol import MAX_CHUNK_BYTES

    req = dict(prompt=f"big pieces {fmt} {rate}", params={"duration": 12.0, "seed": 2}, format=fmt,
               sample_rate=rate)
    with Client(stereo_server.address, timeout=60) as c:
        live = [x for x in c.stream_track(**req) if isinstance(x, Chunk)]
        for _ in range(2):   # the first hit reads the cache, the second replays the memo
            with c.stream_track(**req) as ts:
                replay = [x for x in ts if isinstance(x, Chunk)]
            assert b"".join(x.data for x in replay) == b"".join(x.data for x in live)
            sizes = [len(x.data) for x in replay]
            assert rate // 4 < replay[0].frames <= rate // 2   # (the resampler holds a few ms back)
            assert MAX_CHUNK_BYTES // 2 < max(sizes) <= MAX_CHUNK_BYTES * 15 // 16
            assert len(replay) < len(live) and min(sizes[1:-1]) > 2 * sizes[0]
        assert not c.violations
