"""Baseline for the cache-hit figures: a bare pyzmq ROUTER that answers a request with the track's own bytes.

Run as a subprocess (like the real server): `python bench/rawzmq.py tcp://127.0.0.1:PORT TRACK_FILE`. A
request is [b"", b"go", sizes as comma-separated ints]; the answer is one small header message, then one
message per size carrying the next that many bytes of TRACK_FILE (wrapping around), then an end message, all
on the requesting DEALER's envelope. Each piece is its own buffer, made once, like the server's memo of a
remembered track. No cache read, no resampling, no encoding: what the machine's ZeroMQ can move over loopback
with the same bytes in the same message sizes.

The bytes are the real track on purpose: `bytes(n)` is calloc'd, and untouched calloc'd pages all map the
kernel's one zero page, so a baseline of zeros copies from a few KiB that never leave L1 (measured: the
kernel's copy into the socket 0.09 ms per 5.76 MB track from zeros, 0.3 ms from real audio).
It sends through troubadour.wire.send_message like the server (pyzmq's compiled send, no sugar), so the
baseline is as lean as the server's own sending.
"""

from __future__ import annotations

import sys

import zmq

from troubadour.wire import send_message


def pieces(track: bytes, sizes: list[int]) -> list[zmq.Frame]:
    out, offset = [], 0
    for n in sizes:
        if offset + n > len(track):
            offset = 0
        out.append(zmq.Frame(track[offset:offset + n], copy=False))   # a slice of bytes is a copy: its own buffer
        offset += n
    return out


def main(address: str, track_file: str) -> None:
    with open(track_file, "rb") as f:
        track = f.read()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    print("ready", flush=True)
    made: dict[bytes, list[zmq.Frame]] = {}
    while True:
        frames = sock.recv_multipart()
        ident, body = frames[0], frames[2:]
        if body[0] == b"stop":
            break
        if body[1] not in made:
            made[body[1]] = pieces(track, [int(s) for s in body[1].split(b",")])
        sock.send_multipart([ident, b"", b"header"])
        for data in made[body[1]]:
            send_message(sock, [ident, b"", b"chunk", data])   # a ROUTER never blocks: no zmq.Again
        sock.send_multipart([ident, b"", b"end"])
    sock.close(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
