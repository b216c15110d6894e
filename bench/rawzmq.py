"""Baseline for the cache-hit figures: a bare pyzmq ROUTER that answers a request with preallocated payloads.

Run as a subprocess (like the real server): `python bench/rawzmq.py tcp://127.0.0.1:PORT`. A request is
[b"", b"go", sizes as comma-separated ints]; the answer is one small header message, then one message per
size (carrying that many bytes), then an end message, all on the requesting DEALER's envelope. No cache read,
no resampling, no encoding: what the machine's ZeroMQ can move over loopback with the same message sizes.
It sends through troubadour.wire.send_message like the server (pyzmq's compiled send, no sugar), so the
baseline is as lean as the server's own sending.
"""

from __future__ import annotations

import sys

import zmq

from troubadour.wire import send_message


def main(address: str) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    print("ready", flush=True)
    payloads: dict[int, bytes] = {}
    while True:
        frames = sock.recv_multipart()
        ident, body = frames[0], frames[2:]
        if body[0] == b"stop":
            break
        sizes = [int(s) for s in body[1].split(b",")]
        sock.send_multipart([ident, b"", b"header"])
        for n in sizes:
            data = payloads.get(n)
            if data is None:
                data = payloads[n] = zmq.Frame(bytes(n), copy=False)   # like the server's memo
            send_message(sock, [ident, b"", b"chunk", data])   # a ROUTER never blocks: no zmq.Again
        sock.send_multipart([ident, b"", b"end"])
    sock.close(0)


if __name__ == "__main__":
    main(sys.argv[1])
