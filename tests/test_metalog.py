"""The metadata log (troubadour/metalog.py): concurrent writers, SIGKILL mid-append, torn lines."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from troubadour import metalog

REPO = Path(__file__).resolve().parents[1]


PAYLOAD = 8192


def _writer(path, wid, n, start):
    log = metalog.MetadataLog(path)
    start.wait()
    for i in range(n):
        # Large records (> PIPE_BUF) so unlocked appends could really interleave.
        log.append({"w": wid, "i": i, "pad": chr(ord("a") + wid) * PAYLOAD})


def _check_records(records, writers, n):
    seen = set()
    for r in records:
        assert r["pad"] == chr(ord("a") + r["w"]) * PAYLOAD
        seen.add((r["w"], r["i"]))
    assert seen == {(w, i) for w in range(writers) for i in range(n)}
    assert len(records) == writers * n


def _race(workers, start) -> None:
    """Starts every writer, then lets them all go at once, and waits for them."""
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(60)


def test_log_concurrent_processes(tmp_path):
    path = tmp_path / "meta.jsonl"
    ctx = mp.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(path, w, 200, start)) for w in range(4)]
    _race(procs, start)
    assert all(p.exitcode == 0 for p in procs)
    log = metalog.MetadataLog(path)
    records = log.read()
    assert log.skipped == 0
    _check_records(records, 4, 200)
    assert path.read_bytes().count(b"\n") == 800


def test_log_concurrent_threads(tmp_path):
    path = tmp_path / "meta.jsonl"
    start = threading.Event()
    threads = [threading.Thread(target=_writer, args=(path, w, 50, start)) for w in range(4)]
    _race(threads, start)
    _check_records(metalog.read_log(path), 4, 50)


def test_log_survives_sigkill_mid_append(tmp_path):
    path = tmp_path / "meta.jsonl"
    script = textwrap.dedent(f"""
        from troubadour.metalog import MetadataLog
        log = MetadataLog({str(path)!r})
        i = 0
        while True:
            log.append({{"i": i, "pad": "x" * 65536}})
            i += 1
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if path.exists() and path.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.01)
        else:
            pytest.fail("writer made no progress")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    log = metalog.MetadataLog(path)
    records = log.read()
    assert len(records) >= 20
    assert [r["i"] for r in records] == list(range(len(records)))
    assert log.skipped <= 1  # at most the line being written when killed
    complete = path.read_bytes().split(b"\n")[:-1]
    assert all(json.loads(line) for line in complete)

    log.append({"after": "kill"})
    after = log.read()
    assert after[-1] == {"after": "kill"}
    assert len(after) == len(records) + 1


def test_log_torn_tail(tmp_path):
    path = tmp_path / "meta.jsonl"
    log = metalog.MetadataLog(path)
    log.append({"n": 1})
    log.append({"n": 2, "text": "line\nbreak ♪"})
    with open(path, "ab") as f:
        f.write(b'{"n": 3, "pad": "unfinish')  # a writer died here
    assert log.read() == [{"n": 1}, {"n": 2, "text": "line\nbreak ♪"}]
    assert log.skipped == 1
    assert metalog.read_log(path) == log.read()

    log.append({"n": 4})
    assert log.read() == [{"n": 1}, {"n": 2, "text": "line\nbreak ♪"}, {"n": 4}]
    assert log.skipped == 1
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and json.loads(lines[-2]) == {"n": 4}
    assert lines[2].startswith(b'{"n": 3')  # the torn line stays, isolated on its own line


def test_log_torn_utf8_and_missing_file(tmp_path):
    path = tmp_path / "meta.jsonl"
    assert metalog.read_log(path) == []
    path.write_bytes('{"a": 1}\n{"s": "♪'.encode("utf-8")[:-1])  # cut inside a character
    log = metalog.MetadataLog(path)
    assert log.read() == [{"a": 1}] and log.skipped == 1
    log.append({"b": 2})
    assert log.read() == [{"a": 1}, {"b": 2}]


def test_log_rejects_nan(tmp_path):
    log = metalog.MetadataLog(tmp_path / "m.jsonl")
    with pytest.raises(ValueError):
        log.append({"x": float("nan")})
    assert not (tmp_path / "m.jsonl").exists() or log.read() == []
