"""The metadata log: append-only JSON Lines (`OUT/metadata.jsonl`), safe with several writers and after crashes."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from .audio import json_default


def _encode_record(record: dict) -> bytes:
    # json.dumps escapes newlines inside strings, so a record is always exactly one line.
    # allow_nan=False: NaN/Infinity are not JSON and other readers would choke on them.
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False, default=json_default)
    return line.encode("utf-8") + b"\n"


def _parse_log(path: Path) -> tuple[list[dict], int]:
    """(records, skipped): every line that parses to a JSON object, and a count of the rest."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return [], 0
    try:
        # Shared lock: never observe a writer's line half-way through.
        fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)  # closing the last descriptor drops the lock

    records: list[dict] = []
    skipped = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            skipped += 1  # a line torn by a crash mid-write
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            skipped += 1
    return records, skipped


def read_log(path: str | os.PathLike) -> list[dict]:
    """All complete records of a JSON Lines log; torn/garbled lines are skipped."""
    return _parse_log(Path(path))[0]


class MetadataLog:
    """Append-only JSON Lines log, safe for concurrent writers in threads and processes.

    Each append is one O_APPEND write of a whole line under an exclusive flock, then
    fsync. The file is opened per append: flock belongs to the open file description,
    so separate opens also exclude threads of the same process.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.skipped = 0  # unparseable lines seen by the last read()

    def append(self, record: dict) -> None:
        line = _encode_record(record)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            # A writer that died mid-line left no newline; start ours on a fresh line
            # so only the torn record is lost, not ours too.
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:  # regular files rarely short-write, but never assume it
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> list[dict]:
        records, self.skipped = _parse_log(self.path)
        return records

    def __repr__(self) -> str:
        return f"MetadataLog({str(self.path)!r})"
