"""Watch the profiles file for hot-swap (watchdog), debounced, tolerant of editors' atomic saves.

inotify watches directories by inode, so the watches follow the path as it is now: the file's directory and,
when the path is a symlink, its target's; while a directory is missing, its nearest existing ancestor (to see
it come back). A slow poll catches what no event reports (a hard link edited elsewhere, network file systems).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE_S = 0.25   # editors write a file in several steps; react once it has settled
POLL_S = 1.0        # the safety net's period
READS = ("opened", "closed_no_write")   # our own checks read the file: those events must not start another


def file_digest(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class ProfilesWatcher(FileSystemEventHandler):
    """Calls `on_change()` (from a watcher thread) when the file's content changes. `baseline`: the digest of
    the bytes the caller loaded (an edit made before the watcher starts is then seen as one)."""

    def __init__(self, path: str | Path, on_change: Callable[[], None], baseline: str | None = None):
        self.path = Path(os.path.abspath(path))   # not resolved: a symlink is followed afresh at every check
        self.on_change = on_change
        self._digest = baseline if baseline is not None else file_digest(self.path)
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()         # the timer and the watches
        self._checking = threading.Lock()     # one check at a time decides
        self._last_event = 0.0
        self._observer = Observer()
        self._watches: dict = {}              # directory -> ((st_dev, st_ino), ObservedWatch)
        self._stopped = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="troubadour-profiles-poll", daemon=True)
        self.checks = 0                       # for tests: how often the file was read
        self._arm()

    def start(self) -> None:
        self._observer.daemon = True
        self._observer.start()
        self._poller.start()

    def stop(self) -> None:
        self._stopped.set()
        self._observer.stop()
        with self._lock:
            if self._timer:
                self._timer.cancel()

    # ------------------------------------------------------------------ what to watch
    def _targets(self) -> set[Path]:
        return {self.path, Path(os.path.realpath(self.path))}

    def _dirs(self) -> dict:
        """Directory -> its (device, inode): the targets' directories, or their nearest existing ancestors."""
        out = {}
        for target in self._targets():
            d = target.parent
            while True:
                try:
                    st = d.stat()
                    out[d] = (st.st_dev, st.st_ino)
                    break
                except OSError:
                    if d == d.parent:
                        break
                    d = d.parent
        return out

    def _arm(self) -> None:
        want = self._dirs()
        with self._lock:
            for d, (ident, watch) in list(self._watches.items()):
                if want.get(d) != ident:   # gone, replaced (a new inode) or no longer needed
                    del self._watches[d]
                    try:
                        self._observer.unschedule(watch)
                    except (KeyError, OSError):
                        pass
            for d, ident in want.items():
                if d not in self._watches:
                    try:
                        self._watches[d] = (ident, self._observer.schedule(self, str(d), recursive=False))
                    except OSError:
                        pass   # vanished meanwhile: the next check arms its parent

    # ------------------------------------------------------------------ events
    def on_any_event(self, event) -> None:
        if event.event_type in READS:
            return
        targets = self._targets()
        for p in (getattr(event, "src_path", None), getattr(event, "dest_path", None)):
            if not p:
                continue
            p = Path(os.fsdecode(p))
            # the file itself, or a directory on the way to it (deleted, created, moved)
            if p in targets or any(p in t.parents for t in targets):
                break
        else:
            return
        with self._lock:
            self._last_event = time.monotonic()
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(DEBOUNCE_S, self._check)
            self._timer.daemon = True
            self._timer.start()

    def _poll(self) -> None:
        while not self._stopped.wait(POLL_S):
            with self._lock:
                settling = time.monotonic() - self._last_event < 2 * DEBOUNCE_S
            if not settling:   # an edit in progress is the debounce's to judge
                self._check()

    def _check(self) -> None:
        if self._stopped.is_set():
            return
        with self._checking:
            self._arm()
            self.checks += 1
            digest = file_digest(self.path)
            if digest == self._digest:
                return   # touched, rewritten with the same bytes, or an unrelated event
            self._digest = digest
        self.on_change()
