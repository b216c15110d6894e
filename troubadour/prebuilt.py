"""Server messages encoded once and stamped with a request's `id` and `seq` at each send.

Every replay of a remembered track sends the same header, chunk and end bodies; only `id` and `seq` differ.
Checking and encoding a body was most of a replay's per-message work on the server's I/O thread, so the
other fields are packed once here and the two numbers spliced in between them. The bytes are exactly
protocol.reply()'s (checked when a message is built, and in tests/test_prebuilt.py).
"""

from __future__ import annotations

import msgpack

from . import protocol as P

_pack = msgpack.Packer(use_bin_type=True).pack


class Prebuilt:
    """One server message for any request: `frames(req_id, seq)` == protocol.reply(req_id, seq, ...)."""

    __slots__ = ("final", "payload", "_type", "_parts")

    def __init__(self, msg_type: str, final: bool, payload=None, **fields):
        if "id" in fields or "seq" in fields or "final" in fields:
            raise ValueError("id, seq and final are set per message, not fields")
        frames = P.reply(0, 0, final, msg_type, payload, **fields)   # every check encode() makes, once
        body = msgpack.unpackb(frames[2], raw=False)   # the canonical form: sorted keys, checked values
        parts, run = [], bytearray(_map_header(len(body)))
        for key, value in body.items():
            run += _pack(key)
            if key in ("id", "seq"):   # "id" sorts before "seq": parts = [.. "id"], [.. "seq"], [rest]
                parts.append(bytes(run))
                run = bytearray()
            else:
                run += _pack(value)
        parts.append(bytes(run))
        self.final, self.payload, self._type, self._parts = final, payload, frames[1], tuple(parts)
        if self.frames(0, 0)[2] != frames[2]:
            raise AssertionError(f"prebuilt {msg_type} body differs from protocol.reply's")

    def frames(self, req_id, seq: int) -> list:
        a, b, c = self._parts
        body = b"".join((a, _pack(req_id), b, _pack(seq), c))
        if self.payload is None:
            return [P.HEADER, self._type, body]
        return [P.HEADER, self._type, body, self.payload]


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")
