"""Keep received audio buffers mapped: glibc malloc thresholds for a process that streams tracks.

libzmq allocates every received message in its I/O thread and Python frees it on the main thread. With
glibc's default (dynamic) thresholds, whether the ~1 MiB chunk buffers come back from the heap or have to be
mapped again depends on how that thread's heap happens to be laid out: in some client processes each 30 s track
then page-faults ~600 times (a zeroed 4 KiB page per fault) and arrives at half speed (2.2 vs 1.1 ms per
cached track over loopback, measured in bench/README.md), in others never. Fixing the thresholds keeps those
buffers in the heap: allocations up to MMAP_THRESHOLD are served from it, and up to TRIM_THRESHOLD of free
memory at its top is kept instead of being handed back to the kernel after each track.

Applied once per process by the first `Client`; TROUBADOUR_MALLOC_TUNING=0 leaves the allocator alone.
glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import threading

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # glibc malloc.h
MMAP_THRESHOLD = 4 << 20     # above a chunk message (at most 1 MiB) with room to spare
TRIM_THRESHOLD = 64 << 20    # the most a client buffers for unread messages (client.MAX_BUFFERED_BYTES)

_lock = threading.Lock()
_state: bool | None = None   # None: not tried yet; True: applied; False: off or not glibc


def tune_for_streaming() -> bool:
    """Apply the thresholds once per process. True if they are in effect."""
    global _state
    with _lock:
        if _state is None:
            _state = _apply()
        return _state


def _apply() -> bool:
    if os.environ.get("TROUBADOUR_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
    except (ValueError, OSError, AttributeError):   # no such name here: not glibc
        return False
    try:
        libc = ctypes.CDLL(None)   # this process's symbols, libc's included (find_library runs ldconfig)
        # the mmap threshold first: setting either one turns glibc's dynamic adjustment off
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
