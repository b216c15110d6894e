"""Game-ready lengths and loops: bar math, seamless loop points, tail crossfades, stinger fades.

Audio is float32 (channels, frames) planar, as everywhere in the project. Frame positions are integers;
`loop_end` is exclusive (the loop plays frames loop_start .. loop_end-1, then jumps back to loop_start).

Why a *tail* crossfade: the frames just before loop_end are blended with the frames just before
loop_start, so the jump loop_end-1 -> loop_start continues exactly as the original continued from
loop_start-1. Nothing before loop_end - crossfade is touched, so a server can stream the head of a
track while the model is still generating the rest (`LoopStreamer`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .audio import as_planar

# Default crossfade: one beat, kept within these bounds (seconds).
MIN_CROSSFADE_S = 0.05
MAX_CROSSFADE_S = 1.0
# Without a tempo the "beat" for the default crossfade (one beat at 120 bpm).
FALLBACK_CROSSFADE_S = 0.5
# Below this librosa's beat tracker has too few beats to be trusted.
MIN_BPM_AUDIO_S = 3.0
# Window for the spectral part of the seam metric.
SEAM_WINDOW = 2048
# Frames each side of the seam whose steps set the jump reference (4 ms at 32 kHz).
SEAM_LOCAL = 128
SEAM_GAP = 2

# Upper limits of `seam_metric` for a seamless loop, measured in tests/test_loops.py on synthetic music
# at 90-150 bpm and tiny-MusicGen output. A crossfaded seam is a genuine step of the music: over 54,000
# random positions such steps reach jump_ratio 3.3 (99.9th percentile) and 4.3 (max), and make_loop's
# spectral_ratio stays <= 1.2. Naive bar-aligned cuts: median jump_ratio ~14, spectral_ratio ~1.6.
SEAM_LIMITS = {"jump_ratio": 5.0, "spectral_ratio": 1.5}


# --- bar math ---------------------------------------------------------------------------


def _meter(meter: str) -> tuple[int, int]:
    try:
        num, den = (int(p) for p in str(meter).split("/"))
    except ValueError:
        raise ValueError(f"meter must look like '4/4' or '6/8', got {meter!r}") from None
    if num < 1 or den not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"meter must look like '4/4' or '6/8', got {meter!r}")
    return num, den


def _check_bpm(bpm: float) -> float:
    if not (isinstance(bpm, numbers.Real) and math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm must be a positive number, got {bpm!r}")
    return float(bpm)


def beat_seconds(bpm: float) -> float:
    return 60.0 / _check_bpm(bpm)


def bar_seconds(bpm: float, meter: str = "4/4") -> float:
    """Length of one bar: numerator beats of 60/bpm seconds each.

    The bpm counts the meter's own note value, so 4/4 at 120 bpm is 4 quarter notes = 2 s, and a
    compound meter like 6/8 counts eighth notes: 6/8 at 120 bpm is 6 eighths = 3 s (a "dotted quarter"
    pulse would be bpm/3).
    """
    num, _ = _meter(meter)
    return num * beat_seconds(bpm)


def bar_aligned_duration(duration: float, bpm: float, meter: str = "4/4",
                         max_duration: float | None = None) -> float:
    """`duration` rounded to the nearest whole number of bars (at least one).

    With `max_duration`, the result is at most max_duration rounded down to whole bars; when not even
    one bar fits, max_duration itself is returned (cannot be bar-aligned).
    """
    bar = bar_seconds(bpm, meter)
    bars = max(1, math.floor(duration / bar + 0.5))
    if max_duration is not None:
        fit = math.floor(max_duration / bar + 1e-9)
        if fit < 1:
            return float(max_duration)
        bars = min(bars, fit)
    return bars * bar


# --- loop points ------------------------------------------------------------------------


def _grid_points(n: int, step: float, xf: int, tol: int = 0) -> tuple[int, int] | None:
    """(first grid line >= xf, last grid line <= n + tol, cut at n) on a grid of `step` frames, if they span
    > 0. `tol`: a track made of whole codec frames ends up to half a frame before its last bar line (its
    length rounds to the nearest frame); that bar still counts, or the loop lost a whole bar."""
    last = math.floor((n + tol) / step + 1e-9)
    end = min(n, round(last * step))
    k = max(1, math.ceil(xf / step - 1e-9))
    start = round(k * step)
    return (start, end) if start < end else None


def _plan(n: int, sr: int, bpm: float | None, meter: str, crossfade_s: float | None,
          snap: int = 1) -> tuple[int, int, int]:
    """(loop_start, loop_end, crossfade frames) for a track of n frames; points on multiples of `snap`."""
    if n < 2:
        raise ValueError(f"need at least 2 frames to loop, got {n}")
    beat = beat_seconds(bpm) if bpm is not None else FALLBACK_CROSSFADE_S
    if crossfade_s is None:
        crossfade_s = min(max(beat, MIN_CROSSFADE_S), MAX_CROSSFADE_S)
    elif not (math.isfinite(crossfade_s) and crossfade_s >= 0):
        raise ValueError(f"crossfade_s must be >= 0, got {crossfade_s!r}")
    # In the beat-free fallback the loop is n - xf, so xf <= n/5 keeps it <= a quarter of the loop.
    xf = min(round(crossfade_s * sr), n // 5)
    points = None
    if bpm is not None:
        # Prefer bars; a track shorter than two bars still loops on beats.
        tol = max(1, snap // 2)   # as far as snapping moves a loop point anyway (a sample at least)
        points = (_grid_points(n, bar_seconds(bpm, meter) * sr, xf, tol)
                  or _grid_points(n, beat * sr, xf, tol))
    start, end = points or (xf, n)
    if snap > 1:
        # A loop of whole codec frames (20 ms) keeps the codec's frame-rate texture in phase at the seam;
        # the shift from the bar line is at most half a frame (10 ms).
        snapped = (max(snap, round(start / snap) * snap), min(round(end / snap), n // snap) * snap)
        if snapped[0] < snapped[1]:
            start, end = snapped
    xf = min(xf, (end - start) // 4, start)
    return start, end, xf


def loop_points(n_frames: int, sample_rate: int, bpm: float | None, meter: str = "4/4",
                crossfade_s: float | None = None, snap: int = 1) -> tuple[int, int]:
    """(loop_start, loop_end) in frames, end exclusive.

    loop_end is the last bar boundary <= n_frames; loop_start the first bar boundary at or after the
    crossfade length, so there is pre-loop material to crossfade from. Bar boundaries are counted from
    frame 0 (the model starts on a downbeat). Tracks shorter than two bars fall back to beats; without
    a bpm (or when no grid fits) loop_start = crossfade length and loop_end = n_frames.
    The default crossfade is one beat clamped to [0.05, 1.0] s and to a quarter of the loop.
    """
    start, end, _ = _plan(int(n_frames), int(sample_rate), bpm, meter, crossfade_s, snap)
    return start, end


# --- crossfade --------------------------------------------------------------------------

CURVES = ("adaptive", "equal_power", "linear")


def _weights(xf: int, curve: str) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) gains over xf frames; fade_in reaches exactly 1 on the last frame.

    The last crossfaded frame is then exactly the frame before loop_start, so the jump to loop_start
    is an ordinary step of the original audio.
    """
    w = np.arange(1, xf + 1, dtype=np.float64) / xf
    if curve == "equal_power":
        # Equal power: the two sides are different music (uncorrelated), so this keeps the level flat
        # where a linear fade dips by up to 3 dB (measured in tests).
        fin, fout = np.sin(0.5 * np.pi * w), np.cos(0.5 * np.pi * w)
        fout[-1] = 0.0  # cos(pi/2) is 6e-17, not 0
    elif curve == "linear":
        fin, fout = w, 1.0 - w
    else:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    return fout.astype(np.float32), fin.astype(np.float32)


def _check_curve(curve: str) -> None:
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")


def _mix(tail: np.ndarray, pre: np.ndarray, curve: str) -> np.ndarray:
    _check_curve(curve)
    if curve == "adaptive":
        return _mix_adaptive(tail, pre)
    fout, fin = _weights(tail.shape[-1], curve)
    return (tail * fout + pre * fin).astype(np.float32)


def _mix_adaptive(tail: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """A crossfade that keeps the level whatever the two sides' correlation: equal power swells by up to 3 dB
    where they are alike (a loop of repetitive music joins near-copies of itself), a linear fade dips by 3 dB
    where they are not. The power of a*x + b*y is a^2 + b^2 + 2*rho*a*b (x, y of equal power, correlation
    rho): equal-power gains scaled by 1/sqrt(1 + rho*sin(pi*t)) keep it at 1 (Bristow-Johnson's rule)."""
    xf = tail.shape[-1]
    t = np.arange(1, xf + 1, dtype=np.float64) / xf
    x, y = tail.astype(np.float64), pre.astype(np.float64)
    power = np.sqrt(np.sum(x * x) * np.sum(y * y))
    # (clamped: a negative correlation would ask for gains over 1; -0.5 allows up to +3 dB)
    rho = float(np.clip(np.sum(x * y) / power, -0.5, 1.0)) if power > 0 else 0.0
    scale = 1.0 / np.sqrt(1.0 + rho * np.sin(np.pi * t))
    fin, fout = np.sin(0.5 * np.pi * t) * scale, np.cos(0.5 * np.pi * t) * scale
    fout[-1], fin[-1] = 0.0, 1.0   # the last frame is the frame before loop_start, exactly
    return (x * fout + y * fin).astype(np.float32)


@dataclass
class LoopResult:
    audio: np.ndarray      # (channels, loop_end) float32: the track ends at loop_end
    loop_start: int        # frame, inclusive
    loop_end: int          # frame, exclusive (== audio length)
    bpm: float | None      # the tempo used (given or estimated), None if unknown
    crossfade: int         # crossfade length in frames

    @property
    def loop(self) -> tuple[int, int]:
        return self.loop_start, self.loop_end


def make_loop(audio: np.ndarray, sample_rate: int, bpm: float | None = None, meter: str = "4/4",
              crossfade_s: float | None = None, curve: str = "adaptive", snap: int = 1,
              estimate: bool = True) -> LoopResult:
    """Cut `audio` into a seamless loop (see the module docstring).

    Only frames [loop_end - crossfade, loop_end) change; the head is bit-identical and everything after
    loop_end is dropped. With bpm None the tempo is estimated (`estimate_bpm`, unless estimate=False); if that
    fails the loop uses the beat-free fallback of `loop_points`.
    """
    a = as_planar(audio)
    if bpm is None and estimate:   # (estimate=False: the caller already tried, on other audio)
        bpm = estimate_bpm(a, sample_rate)
    start, end, xf = _plan(a.shape[1], sample_rate, bpm, meter, crossfade_s, snap)
    out = a[:, :end].copy()
    if xf:
        out[:, end - xf:end] = _mix(a[:, end - xf:end], a[:, start - xf:start], curve)
    if np.ndim(audio) == 1:
        out = out[0]
    return LoopResult(out, start, end, bpm, xf)


class LoopStreamer:
    """Streaming `make_loop` for a track whose length is known before it is generated.

    feed() passes audio through untouched up to the hold point (loop_end - crossfade) and keeps a copy
    of the pre-loop frames it will need; finish() returns the crossfaded tail. The concatenation of all
    returned arrays equals make_loop(whole_track, ...) exactly (with the same bpm: the streamer cannot
    estimate one). Passed-through arrays may be views of the input. Frames past total_frames are ignored.
    """

    def __init__(self, total_frames: int, sample_rate: int, bpm: float | None, meter: str = "4/4",
                 crossfade_s: float | None = None, curve: str = "adaptive", snap: int = 1):
        self.sample_rate, self.bpm, self.meter, self.curve = sample_rate, bpm, meter, curve
        _check_curve(curve)  # now, not at finish()
        self.loop_start, self.loop_end, self.crossfade = _plan(int(total_frames), sample_rate, bpm,
                                                               meter, crossfade_s, snap)
        self.hold = self.loop_end - self.crossfade
        self._pos = 0                 # frames received so far
        self._pre: list[np.ndarray] = []
        self._tail: list[np.ndarray] = []
        self._done = False

    @property
    def frames(self) -> int:
        """Length of the finished track (== loop_end)."""
        return self.loop_end

    def _keep(self, chunk: np.ndarray, lo: int, hi: int, into: list) -> None:
        # Copy the part of `chunk` (starting at self._pos) that overlaps [lo, hi).
        a, b = max(lo, self._pos), min(hi, self._pos + chunk.shape[1])
        if a < b:
            into.append(chunk[:, a - self._pos:b - self._pos].copy())

    def feed(self, chunk: np.ndarray) -> list[np.ndarray]:
        if self._done:
            raise RuntimeError("LoopStreamer.feed() after finish()")
        c = as_planar(chunk)
        n = c.shape[1]
        self._keep(c, self.loop_start - self.crossfade, self.loop_start, self._pre)
        self._keep(c, self.hold, self.loop_end, self._tail)
        out = c[:, :max(0, min(n, self.hold - self._pos))]
        self._pos += n
        return [out] if out.shape[1] else []

    def finish(self) -> list[np.ndarray]:
        if self._done:
            return []
        if self._pos < self.loop_end:
            raise ValueError(f"track ended at frame {self._pos}, before loop_end {self.loop_end}")
        self._done = True
        if not self.crossfade:
            return []
        tail, pre = np.concatenate(self._tail, axis=1), np.concatenate(self._pre, axis=1)
        self._tail = self._pre = []
        return [_mix(tail, pre, self.curve)]


# --- one-shots --------------------------------------------------------------------------


def _fade(audio: np.ndarray, sample_rate: int, seconds: float, out: bool) -> np.ndarray:
    a = np.array(audio, dtype=np.float32, copy=True)
    n = min(a.shape[-1], max(0, round(seconds * sample_rate)))
    if n:
        # Raised cosine: flat at both ends (no corner to click on) and exactly 0 at the silent end.
        g = 0.5 - 0.5 * np.cos(np.pi * np.arange(n, dtype=np.float64) / max(n - 1, 1))
        g = g.astype(np.float32)
        if out:
            a[..., -n:] *= g[::-1]
        else:
            a[..., :n] *= g
    return a


def fade_out(audio: np.ndarray, sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    """Copy of `audio` fading to exact silence over its last `seconds` (for stingers / one-shots)."""
    return _fade(audio, sample_rate, seconds, out=True)


def fade_in(audio: np.ndarray, sample_rate: int, seconds: float = 0.01) -> np.ndarray:
    """Copy of `audio` rising from exact silence over its first `seconds` (kills a start click)."""
    return _fade(audio, sample_rate, seconds, out=False)


# --- tempo ------------------------------------------------------------------------------


def estimate_bpm(audio: np.ndarray, sample_rate: int) -> float | None:
    """Tempo in bpm from librosa's beat tracker, or None (too short, silent, or no steady beat).

    The tracker's own tempo is quantised to its onset-envelope lag (~2-4 bpm steps); a straight-line
    fit through the tracked beat times is accurate to a fraction of a bpm.
    """
    a = as_planar(audio)
    if a.shape[1] < MIN_BPM_AUDIO_S * sample_rate or not np.any(a):
        return None
    import librosa  # heavy (numba); only needed here

    y = np.ascontiguousarray(a.mean(axis=0))
    try:
        tempo, beats = librosa.beat.beat_track(y=y, sr=sample_rate, units="time")
    except Exception:  # librosa raises assorted errors on degenerate input
        return None
    tempo = float(np.atleast_1d(tempo)[0])
    if len(beats) >= 4:
        slope = np.polyfit(np.arange(len(beats)), beats, 1)[0]
        # A skipped or doubled beat bends the fit; then the tracker's coarse tempo is the safer answer.
        if slope > 0 and abs(60.0 / slope - tempo) < 0.1 * tempo:
            tempo = 60.0 / slope
    return tempo if math.isfinite(tempo) and tempo > 0 else None


# --- seam metric ------------------------------------------------------------------------


def _spectrum(x: np.ndarray) -> np.ndarray:
    """Magnitude spectrum of a (channels, SEAM_WINDOW) window, channels averaged, unit L2 norm."""
    mag = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)).mean(axis=0)
    norm = np.linalg.norm(mag)
    return mag / norm if norm > 0 else mag


def seam_metric(audio: np.ndarray, sample_rate: int, loop_start: int, loop_end: int) -> dict:
    """How audible the jump loop_end-1 -> loop_start is, compared with the music's own continuity.

    - jump_ratio: the seam step max_ch |x[loop_start] - x[loop_end-1]| divided by a reference step: the
      RMS of the sample-to-sample differences on both sides of the seam (SEAM_LOCAL steps before
      loop_end and after loop_start, skipping the SEAM_GAP frames next to the seam), floored at the
      median |x[t+1] - x[t]| of the whole track. A click is a step far larger than its neighbours; a
      genuine step of the music (even a drum attack, whose neighbours are large too) stays ~1.
    - spectral_ratio: spectral flux across the seam -- the L2 distance between unit-normalised magnitude
      spectra (Hann window, channels averaged) of the SEAM_WINDOW frames ending at loop_end and the
      SEAM_WINDOW frames starting at loop_start -- divided by a reference flux: the larger of the median
      flux between consecutive non-overlapping windows of the track and the flux the original had at
      loop_start (windows ending and starting there; the head is unmodified, so it is in `audio`).
      A jump into different harmony/timbre is large; a continuation is ~1, even where the music itself
      changes at loop_start (a new bar).

    Also returned: the unnormalised `jump` and `spectral_flux`, and `jump_ratio_global` (the step over
    the track's median step, the simpler definition, which flags downbeat attacks too). A seamless loop
    meets SEAM_LIMITS; naive cuts exceed them. `sample_rate` is unused: the ratios are scale-free.
    """
    a = as_planar(audio).astype(np.float64)
    n = a.shape[1]
    if not 0 < loop_start < loop_end <= n:
        raise ValueError(f"bad loop ({loop_start}, {loop_end}) for {n} frames")
    eps = 1e-12
    med_step = float(np.median(np.abs(np.diff(a, axis=1)))) if n > 1 else 0.0
    jump = float(np.max(np.abs(a[:, loop_start] - a[:, loop_end - 1])))
    # Steps touching the SEAM_GAP frames next to the seam are left out: a glitch there must not vouch
    # for itself.
    g = SEAM_GAP
    k = max(0, min(SEAM_LOCAL, loop_start - g - 1, loop_end - loop_start - 2 * g - 2))
    local = np.concatenate([np.diff(a[:, loop_end - g - k - 1:loop_end - g], axis=1),
                            np.diff(a[:, loop_start + g:loop_start + g + k + 1], axis=1)], axis=1)
    local_step = float(np.sqrt(np.mean(local ** 2))) if local.size else 0.0

    w = min(SEAM_WINDOW, loop_start, loop_end - loop_start)
    wins = [_spectrum(a[:, i:i + w]) for i in range(0, n - w + 1, w)]
    med_flux = float(np.median([np.linalg.norm(p - q) for p, q in zip(wins, wins[1:])] or [0.0]))
    head = _spectrum(a[:, loop_start:loop_start + w])
    seam = float(np.linalg.norm(_spectrum(a[:, loop_end - w:loop_end]) - head))
    natural = float(np.linalg.norm(_spectrum(a[:, loop_start - w:loop_start]) - head))
    return {
        "jump_ratio": jump / max(local_step, med_step, eps),
        "spectral_ratio": seam / max(med_flux, natural, eps),
        "jump_ratio_global": jump / max(med_step, eps),
        "jump": jump,
        "spectral_flux": seam,
    }


def meets_limits(metric: dict, limits: dict = SEAM_LIMITS) -> bool:
    return all(metric[k] <= v for k, v in limits.items())
