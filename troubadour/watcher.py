"""Watch the profiles file for hot-swap (watchdog), debounced, tolerant of editors' atomic saves."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE_S = 0.25   # editors write a file in several steps; react once it has settled


class ProfilesWatcher(FileSystemEventHandler):
    """Calls `on_change()` (from a watcher thread) when the file's content changes."""

    def __init__(self, path: str | Path, on_change: Callable[[], None]):
        self.path = Path(path).resolve()
        self.on_change = on_change
        self._digest = self._read_digest()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer = Observer()
        # The directory, not the file: atomic saves replace the file with a new inode.
        self._observer.schedule(self, str(self.path.parent), recursive=False)

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        with self._lock:
            if self._timer:
                self._timer.cancel()

    def on_any_event(self, event) -> None:
        paths = {getattr(event, "src_path", None), getattr(event, "dest_path", None)}
        if not any(p and Path(p).resolve() == self.path for p in paths if isinstance(p, str)):
            return
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(DEBOUNCE_S, self._settled)
            self._timer.daemon = True
            self._timer.start()

    def _settled(self) -> None:
        digest = self._read_digest()
        if digest == self._digest:
            return   # touched or rewritten with the same bytes: nothing to regenerate
        self._digest = digest
        self.on_change()

    def _read_digest(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None
