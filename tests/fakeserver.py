"""A scripted server that sends undecodable messages, for the clients' tests (Python, Unity, Godot).

It answers `info`, `health`, `ping` and `cancel` as a real server does, and `get_track` by context name:

* `broken_own`: one message for the request that cannot be decoded but carries the request's id (a `chunk`
  without its payload frame). The client must fail that request.
* `nil_noise`: an undecodable message whose id is readably nil (an `event` whose `final` is not a bool), then
  a valid final `error` (unknown_context). The noise belongs to no request: the request ends with that error.
* `unreadable_a` / `unreadable_b`: held until both are open, then one message whose body is not msgpack at all.
  The client cannot tell which request lost a message, so it must fail every open request (instead of leaving
  them waiting forever: get_track has no timeout in the engine clients).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import msgpack
import zmq

from troubadour import protocol as P

VECTORS = Path(__file__).resolve().parents[1] / "protocol" / "vectors" / "vectors.json"


def _info_body() -> dict:
    vectors = json.loads(VECTORS.read_text())["vectors"]
    body = next(v for v in vectors if v["name"] == "info_reply")["decoded"]["body"]
    return {k: v for k, v in body.items() if k not in ("id", "seq", "final")}


class BadRepliesServer:
    def __init__(self):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.seen: list[str] = []          # request types and get_track contexts, in arrival order
        self.track_ids: dict = {}          # get_track context -> request id
        self.cancelled: list = []          # targets of cancel requests
        self._held: dict = {}              # unreadable_*: context -> (identity, id)
        self._info = _info_body()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _send(self, ident, frames):
        self.sock.send_multipart([ident, b"", *frames])

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, _, *frames = self.sock.recv_multipart()
            try:
                msg = P.decode(frames)
            except P.ProtocolError:
                continue
            self._answer(ident, msg.type, msg.body)

    def _answer(self, ident, kind, body):
        rid = body["id"]
        self.seen.append(kind if kind != P.GET_TRACK else body.get("context"))
        if kind == P.GET_TRACK:
            self.track_ids[body.get("context")] = rid
        if kind == P.INFO:
            self._send(ident, P.reply(rid, 0, True, P.INFO, **self._info))
        elif kind == P.HEALTH:
            self._send(ident, P.reply(rid, 0, True, P.HEALTH, status="ok", queue=0, generating=0, generated=0,
                                      uptime_s=1.0))
        elif kind == P.PING:
            self._send(ident, P.reply(rid, 0, True, P.PONG))
        elif kind == P.CANCEL:
            self.cancelled.append(body["target"])
            self._send(ident, P.reply(rid, 0, True, P.CANCELLED, target=body["target"], found=False))
        elif kind == P.SUBSCRIBE:
            self._send(ident, P.reply(rid, 0, True, P.SUBSCRIBED, events=[]))
        elif kind != P.GET_TRACK:
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="internal", message=f"fake: no {kind}"))
        elif body.get("context") == "broken_own":
            chunk = msgpack.packb({"id": rid, "seq": 0, "final": False, "offset": 0, "frames": 1, "bytes": 4})
            self._send(ident, [P.HEADER, b"chunk", chunk])                   # no payload frame
        elif body.get("context") == "nil_noise":
            self._send(ident, [P.HEADER, b"event", msgpack.packb({"id": None, "seq": 0, "final": "no"})])
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="unknown_context", field="context",
                                      message="fake: no such context"))
        elif str(body.get("context")).startswith("unreadable_"):
            self._held[body["context"]] = rid
            if len(self._held) == 2:
                self._held.clear()
                self._send(ident, [P.HEADER, b"chunk", b"\xc1", b"\x00" * 4])   # 0xc1: never valid msgpack
        else:
            self._send(ident, P.reply(rid, 0, True, P.ERROR, code="unknown_context", field="context",
                                      message="fake: no such context"))

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()
