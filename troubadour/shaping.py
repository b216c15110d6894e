"""Game-ready shaping of a track while it streams: seamless loops for looping contexts, a fade-out for
stingers. Only the end of a track changes, so its head can leave before generation finishes; the
final length and loop points are known up front (they go in the track header)."""

from __future__ import annotations

import numpy as np

from .loops import LoopStreamer

STINGER_FADE_S = 1.0
SHAPE_VERSION = 3   # part of cache keys: bump when the processing changes (3: a last bar cut short by
                    # frame rounding still loops)


def shape_of(info: dict) -> dict | None:
    """The audio-affecting shaping settings of a context track (None for raw prompt tracks)."""
    if info.get("loop") is None:
        return None
    return {"v": SHAPE_VERSION, "loop": bool(info["loop"]), "bpm": info.get("bpm"), "meter": info.get("meter")}


class Shaper:
    def __init__(self, shape: dict | None, total_frames: int, sample_rate: int, frame_rate: int = 50):
        self.total = total_frames
        self.sr = sample_rate
        self.loop: tuple[int, int] | None = None
        self._looper = None
        self._fade = 0
        if shape and shape["loop"] and total_frames >= 2:
            self._looper = LoopStreamer(total_frames, sample_rate, shape.get("bpm"), shape.get("meter") or "4/4",
                                        snap=sample_rate // frame_rate)
            self.loop = (self._looper.loop_start, self._looper.loop_end)
        elif shape and not shape["loop"]:
            self._fade = min(int(STINGER_FADE_S * sample_rate), total_frames // 2)
        self._pos = 0
        self._held: list[np.ndarray] = []

    @property
    def frames(self) -> int:
        return self._looper.frames if self._looper else self.total

    def feed(self, chunk: np.ndarray) -> list[np.ndarray]:
        if self._looper:
            return self._looper.feed(chunk)
        if not self._fade:
            return [chunk]
        # hold the last `fade` frames back until the end
        hold_from = self.total - self._fade
        lo, hi = self._pos, self._pos + chunk.shape[1]
        self._pos = hi
        if hi <= hold_from:
            return [chunk]
        self._held.append(chunk[:, max(0, hold_from - lo):])
        return [chunk[:, :hold_from - lo]] if lo < hold_from else []

    def finish(self) -> list[np.ndarray]:
        if self._looper:
            return self._looper.finish()
        if not self._fade or not self._held:
            return []
        tail = np.concatenate(self._held, axis=1)
        ramp = np.sin(0.5 * np.pi * np.arange(tail.shape[1])[::-1] / max(1, tail.shape[1] - 1))
        return [(tail * ramp.astype(np.float32)).astype(np.float32)]
