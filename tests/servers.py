"""Test helpers: a real `troubadour serve` subprocess on a loopback port, and a raw protocol connection."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from troubadour import protocol as P

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, model, workdir, profiles=None, args=(), port=None):
        self.model, self.workdir, self.profiles, self.args = str(model), Path(workdir), profiles, list(args)
        self.port = port or free_port()
        self.own_port, self.started = port is None, False
        self.cache = self.workdir / "cache"
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.proc = None
        self.lines: list[str] = []

    def start(self, timeout: float = 120) -> "ServerProcess":
        for attempt in range(3):
            try:
                self._start(timeout)
                self.started = True
                return self
            except RuntimeError:
                # the port free_port() picked can be taken before the server binds it (an outgoing
                # connection's ephemeral port): a first start on a port of our choosing tries another
                taken = "Address already in use" in "".join(self.lines)
                if not (taken and self.own_port and not self.started) or attempt == 2:
                    raise
                self.port = free_port()
                self.address = f"tcp://127.0.0.1:{self.port}"
        return self

    def _start(self, timeout: float) -> None:
        cmd = [sys.executable, "-m", "troubadour.cli", "serve", "--model", self.model, "--cache", str(self.cache),
               "--bind", self.address, *self.args]
        if self.profiles:
            cmd += ["--profiles", str(self.profiles)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
        self.lines = []
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                                     stdin=subprocess.DEVNULL, cwd=self.workdir)
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if " ready on " in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.send_signal(signal.SIGCONT)   # a paused server only acts on SIGTERM once continued
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def restart(self, sig=signal.SIGTERM) -> "ServerProcess":
        self.stop(sig)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log(self) -> str:
        return "".join(self.lines)


class LoadingServer:
    """An in-process server whose model "loads" until `release()`: its loader waits, then returns `engine`
    (or raises `outcome[0]` when that is an exception). `result` gets serve_forever's return ("rc") or what it
    raised ("raised"). `config=False`: the server knows only the model's name meanwhile (a hub model not in
    the local cache), as if its config were not on disk."""

    def __init__(self, engine, model_dir, workdir, profiles: str = None, watch: bool = False, config: bool = True):
        from troubadour.backends import describe_model
        from troubadour.server import Server

        self.gate, self.outcome, self.result, self.ready = threading.Event(), [engine], {}, threading.Event()
        path = None
        if profiles is not None:
            path = Path(workdir) / "profiles.toml"
            path.write_text(profiles)

        def loader():
            assert self.gate.wait(120)
            if isinstance(self.outcome[0], Exception):
                raise self.outcome[0]
            return self.outcome[0]

        self.port = free_port()
        summary, info = describe_model(str(model_dir), "cpu")
        if not config:
            summary, info = {k: summary[k] for k in ("id", "identity", "device")}, None
        self.server = Server(loader=loader, described=(summary, info),
                             cache_dir=str(Path(workdir) / "cache"), bind=f"tcp://127.0.0.1:{self.port}",
                             profiles_path=path, watch=watch)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not hasattr(self.server, "bound") and time.time() < deadline:
            time.sleep(0.01)

    def _serve(self):
        try:
            self.result["rc"] = self.server.serve_forever(lambda s: self.ready.set())
        except Exception as e:
            self.result["raised"] = e

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        self.server.stop()
        self.thread.join(10)


class Conn:
    """A DEALER speaking the protocol directly, so tests see exactly what is on the wire."""

    _ids = itertools.count(1)

    def __init__(self, address: str, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.pending: list = []

    def close(self):
        self.sock.close(0)

    def send(self, msg_type: str, **body):
        body.setdefault("id", next(self._ids))
        self.sock.send_multipart([b""] + P.encode(msg_type, body))
        return body["id"]

    def send_raw(self, frames):
        self.sock.send_multipart([b""] + list(frames))

    def recv(self, timeout: float = 60) -> P.Message:
        if self.pending:
            return self.pending.pop(0)
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no message from the server")
        frames = self.sock.recv_multipart()
        assert frames[0] == b"", "replies start with the empty delimiter"
        return P.decode(frames[1:], reply=True)

    def until_final(self, req_id, timeout: float = 60) -> list:
        """Every message for req_id up to its final one; others are kept for later recv()."""
        out, other = [], []
        deadline = time.time() + timeout
        while True:
            m = self.recv(max(0.1, deadline - time.time())) if not self.pending else self.pending.pop(0)
            if m.id == req_id:
                out.append(m)
                if m.final:
                    break
            else:
                other.append(m)
        self.pending = other + self.pending
        return out

    def call(self, msg_type: str, **body) -> list:
        return self.until_final(self.send(msg_type, **body))

    def events(self, timeout: float) -> list:
        """Event messages arriving within `timeout` seconds."""
        return self.arriving(timeout, lambda m: m.type == P.EVENT)

    def arriving(self, timeout: float, wanted) -> list:
        """Messages already kept or arriving within `timeout` seconds for which wanted(message) holds; the
        others are kept for later recv()."""
        out = [m for m in self.pending if wanted(m)]
        pending, kept, deadline = [m for m in self.pending if not wanted(m)], [], time.time() + timeout
        self.pending = []
        try:
            while time.time() < deadline:
                try:
                    m = self.recv(max(0.05, deadline - time.time()))
                except TimeoutError:
                    break
                (out if wanted(m) else kept).append(m)
        finally:
            self.pending = pending + kept
        return out

    def wait_event(self, pred, timeout: float = 60):
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            try:
                m = self.recv(max(0.05, deadline - time.time()))
            except TimeoutError:
                break
            if m.type == P.EVENT:
                seen.append(m.body)
                if pred(m.body):
                    return m.body, seen
        raise TimeoutError(f"event not seen; got {seen}")


PROFILES = """
[game]
title = "Test Game"
genre = "chiptune"

[defaults]
duration = 1.0
seed = 100

[contexts.menu]
mood = "happy"
bpm = 120

[contexts.explore]
mood = "peaceful"
variants = 2

[contexts.battle]
mood = "tense"
bpm = 140

[contexts.boss]
mood = "epic"

[contexts.victory]
mood = "heroic"
loop = false
"""


def audio_of(messages) -> bytes:
    return b"".join(bytes(m.payload) for m in messages if m.type == P.CHUNK)
