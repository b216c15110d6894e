"""Sending and receiving whole multipart messages without pyzmq's Python-level wrappers.

A cached 30 s track is 9 messages of 6 frames; per frame, `send_multipart`/`recv_multipart` spend more in their
Python checks and enum flag arithmetic (`SNDMORE | flags`, `getsockopt(RCVMORE)`) than in ZeroMQ itself
(measured: the server's send pass per cached track 0.31 -> 0.20 ms of CPU; bench/README.md). These call the
compiled socket methods with int flags; behaviour is the same: NOBLOCK, zero-copy for large frames.
"""

from __future__ import annotations

import zmq

_BASE = zmq.Socket.__mro__[1]   # the compiled socket class under pyzmq's sugar
_SEND, _RECV, _GET = _BASE.send, _BASE.recv, _BASE.get
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)


def send_message(sock: zmq.Socket, frames: list) -> None:
    """sock.send_multipart(frames, zmq.NOBLOCK, copy=False). zmq.Again can only come from the first frame:
    ZeroMQ queues a multipart message whole or not at all."""
    last = len(frames) - 1
    for i, f in enumerate(frames):
        _SEND(sock, f, _MORE if i < last else _NOBLOCK, copy=False)


def recv_message(sock: zmq.Socket) -> list[zmq.Frame]:
    """sock.recv_multipart(zmq.NOBLOCK, copy=False): raises zmq.Again when no message is waiting (the rest
    of a message is always there once its first frame is)."""
    frames = [_RECV(sock, _NOBLOCK, copy=False)]
    while frames[-1].more:
        frames.append(_RECV(sock, _NOBLOCK, copy=False))
    return frames


def readable(sock: zmq.Socket) -> bool:
    """A whole message is waiting. Asking is a third of what a receive that ends in zmq.Again costs (pyzmq
    builds the exception), and a drain loop asks once per message."""
    return bool(_GET(sock, _EVENTS) & _POLLIN)
