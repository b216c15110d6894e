"""Run a real `troubadour serve` subprocess for tests: free loopback port, wait for "ready", restart, stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

READY_TIMEOUT = 120.0

# Tiny generations keep tests fast on a 2-core CPU.
TEST_PROFILES = """
[game]
title = "Client test"
genre = "orchestral"

[defaults]
duration = 1.0
seed = 7
variants = 1

[contexts.menu]
prompt = "calm piano with soft strings"

[contexts.battle]
prompt = "epic orchestral battle theme with drums"
variants = 2
bpm = 140

[contexts.explore]
prompt = "exploration music for a forest level with flutes"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`troubadour serve` on tcp://127.0.0.1:PORT; the port stays the same across restart()."""

    def __init__(self, model: Path, workdir: Path, profiles: str | None = TEST_PROFILES, port: int | None = None,
                 extra_args: tuple = ()):
        self.model, self.workdir = Path(model), Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cache = self.workdir / "cache"
        self.profiles = None
        if profiles is not None:
            self.profiles = self.workdir / "profiles.toml"
            self.profiles.write_text(profiles)
        self.port = port or free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "troubadour.cli", "serve", "--model", str(self.model), "--cache",
               str(self.cache), "--bind", self.address, *self.extra_args]
        if self.profiles is not None:
            cmd += ["--profiles", str(self.profiles)]
        return cmd

    def start(self, timeout: float = READY_TIMEOUT) -> "ServerProcess":
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        self.proc = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        ready = threading.Event()
        threading.Thread(target=self._read_stderr, args=(self.proc, ready), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not get ready; log:\n" + "".join(self.log[-40:]))
        return self

    def _read_stderr(self, proc, ready) -> None:
        # Drained until exit so a chatty server never blocks on a full pipe.
        for line in proc.stderr:
            self.log.append(line)
            if "ready" in line:
                ready.set()

    def stop(self, sig=signal.SIGTERM, timeout: float = 20.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.send_signal(signal.SIGCONT)   # a paused server only acts on SIGTERM once continued
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

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
