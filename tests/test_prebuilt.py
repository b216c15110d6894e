"""troubadour.prebuilt: a message encoded once must give exactly protocol.reply()'s bytes for any id and seq."""

import pytest
import zmq

from troubadour import protocol as P
from troubadour.prebuilt import Prebuilt

IDS = [0, 1, 127, 128, 255, 65536, 2**32, 2**63 - 1, "a", "req-1", "é" * 64]
SEQS = [0, 1, 15, 127, 128, 255, 256, 65535, 65536, 2**40]


@pytest.mark.parametrize("rid", IDS)
def test_chunk_and_end_match_protocol_reply(rid):
    data = zmq.Frame(bytes(range(256)) * 8, copy=False)
    chunk = Prebuilt(P.CHUNK, False, data, offset=48000, frames=512, bytes=2048)
    end = Prebuilt(P.END, True, frames=1440000, bytes=5760000, sha256="ab" * 32, xxh3_64="0123456789abcdef")
    for seq in SEQS:
        got = chunk.frames(rid, seq)
        want = P.reply(rid, seq, False, P.CHUNK, data, offset=48000, frames=512, bytes=2048)
        assert got[:3] == want[:3] and got[3] is data
        assert end.frames(rid, seq) == P.reply(rid, seq, True, P.END, frames=1440000, bytes=5760000,
                                               sha256="ab" * 32, xxh3_64="0123456789abcdef")
        decoded = P.decode(got, reply=True)
        assert (decoded.id, decoded.seq, decoded.final, decoded.type) == (rid, seq, False, P.CHUNK)


def test_a_header_with_more_than_fifteen_fields_nested_maps_and_unsorted_keys():
    """More than 15 entries is a map16 in msgpack; nested maps are sorted like protocol.encode sorts them."""
    fields = {"track_id": "f" * 64, "cached": True, "prompt": "a calm → piano ♪", "sample_rate": 48000,
              "params": {"top_k": 250, "duration": 30.0, "seed": 1, "cfg_coef": 3.0, "temperature": 1.0,
                         "top_p": 0.0},
              "channels": 2, "frames": 1440000, "format": "pcm_s16le", "context": "battle", "variant": 3,
              "bpm": 128.5, "meter": "7/8", "loop": True, "loop_start": 0, "loop_end": 1439990,
              "fallback": None, "big": -2**63}
    header = Prebuilt(P.TRACK, False, **fields)
    for rid in IDS:
        for seq in (0, 1, 300):
            assert header.frames(rid, seq) == P.reply(rid, seq, False, P.TRACK, **fields)


def test_refuses_what_protocol_reply_refuses():
    with pytest.raises(ValueError):
        Prebuilt(P.CHUNK, False, b"x", id=3, offset=0, frames=1, bytes=1)
    with pytest.raises(P.ProtocolError):
        Prebuilt(P.END, True, payload=b"x", frames=1)               # end carries no payload
    with pytest.raises(P.ProtocolError):
        Prebuilt(P.TRACK, False, prompt="x" * (P.MAX_STR_BYTES + 1))   # over the string limit
    with pytest.raises(P.ProtocolError):
        Prebuilt("nonsense", False)
