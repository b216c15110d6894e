"""Audio helpers: loudness, resampling, file/PCM encoding (the metadata log is metalog.py).

Convention for the whole project: float32 arrays shaped (channels, frames) ("planar"),
values in [-1, 1]. 1-D arrays are accepted as mono where noted.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pyloudnorm
import soundfile as sf
import soxr

# BS.1770 gating block; pyloudnorm refuses anything shorter.
LOUDNESS_BLOCK_S = 0.4
# Below this sample peak we call it silence and never apply gain (mirrors the -70 LUFS gate).
SILENCE_DBFS = -70.0
TRUE_PEAK_OVERSAMPLE = 4

# name -> (libsndfile container, subtype)
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
}
PCM_FORMATS = ("s16le", "f32le")

# Frames per write. libvorbis allocas a buffer sized by one write, so a single long write
# overflows the stack (libsndfile#1095, python-soundfile#396); chunks keep it bounded.
_WRITE_BLOCK = 65536


def as_planar(audio: np.ndarray, dtype=np.float32) -> np.ndarray:
    """`audio` as a (channels, frames) array; 1-D input is mono."""
    a = np.asarray(audio, dtype=dtype)
    if a.ndim == 1:
        a = a[np.newaxis, :]
    if a.ndim != 2:
        raise ValueError(f"audio must be (channels, frames) or (frames,), got shape {a.shape}")
    return a


def _planar(audio: np.ndarray) -> np.ndarray:
    """Return a finite float64 (channels, frames) view/copy of `audio`."""
    a = as_planar(audio, np.float64)
    if not np.all(np.isfinite(a)):
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0)
    return a


def _db(x: float) -> float:
    return 20.0 * math.log10(x) if x > 0 else float("-inf")


# --- loudness ----------------------------------------------------------------------------


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770 via pyloudnorm).

    Returns -inf when there is nothing to measure: silence, or audio shorter than the
    0.4 s gating block.
    """
    a = _planar(audio)
    if a.shape[1] < math.ceil(LOUDNESS_BLOCK_S * sample_rate):
        return float("-inf")
    meter = pyloudnorm.Meter(sample_rate, block_size=LOUDNESS_BLOCK_S)
    with np.errstate(divide="ignore", invalid="ignore"):
        lufs = float(meter.integrated_loudness(np.ascontiguousarray(a.T)))
    return lufs if math.isfinite(lufs) else float("-inf")


def true_peak_dbfs(audio: np.ndarray, sample_rate: int) -> float:
    """True-peak estimate in dBFS: the peak of a 4x oversampled copy (BS.1770 Annex 2 style).

    Catches inter-sample peaks a DAC or a lossy encoder would reproduce, which the
    plain sample peak misses by up to ~3 dB. -inf for silence.
    """
    a = _planar(audio)
    if a.size == 0:
        return float("-inf")
    peak = float(np.max(np.abs(a)))
    if peak == 0.0:
        return float("-inf")
    up = soxr.resample(
        np.ascontiguousarray(a.T),
        sample_rate,
        sample_rate * TRUE_PEAK_OVERSAMPLE,
        quality="VHQ",
    )
    # The filter need not pass exactly through the original samples, so keep both.
    peak = max(peak, float(np.max(np.abs(up))) if up.size else 0.0)
    return _db(peak)


def normalize_loudness(
    audio: np.ndarray,
    sample_rate: int,
    target_lufs: float = -16.0,
    peak_dbfs: float = -1.0,
) -> np.ndarray:
    """Gain `audio` to `target_lufs`, but never let its true peak exceed `peak_dbfs`.

    When loudness can't be measured (silence, or shorter than 0.4 s) the audio is only
    peak-normalised to `peak_dbfs`; anything below -70 dBFS is treated as silence and
    left alone rather than amplified into noise. NaN/inf input samples become 0/±1.
    Returns float32 with the input's shape (1-D stays 1-D).
    """
    a = _planar(audio)
    out_shape = np.shape(audio)
    if a.size == 0:
        return np.zeros(out_shape, dtype=np.float32)

    tp = true_peak_dbfs(a, sample_rate)
    if tp < SILENCE_DBFS:
        gain_db = 0.0
    else:
        lufs = integrated_loudness(a, sample_rate)
        # Unmeasurable loudness -> pure peak normalisation (the ceiling below does it).
        gain_db = target_lufs - lufs if math.isfinite(lufs) else math.inf
        # True peak scales linearly with gain, so the ceiling is one subtraction away.
        gain_db = min(gain_db, peak_dbfs - tp)

    out = a * (10.0 ** (gain_db / 20.0))
    # Keep the project-wide [-1, 1] promise even for a ceiling above 0 dBFS.
    np.clip(out, -1.0, 1.0, out=out)
    return out.astype(np.float32).reshape(out_shape)


# --- resampling --------------------------------------------------------------------------


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """High-quality (soxr VHQ) resampling; planar in, planar float32 out."""
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    a = np.asarray(audio, dtype=np.float32)
    if sr_in == sr_out:
        return a.copy()
    mono = a.ndim == 1
    planar = a[np.newaxis, :] if mono else a
    if planar.ndim != 2:
        raise ValueError(f"audio must be (channels, frames) or (frames,), got shape {a.shape}")
    out = soxr.resample(np.ascontiguousarray(planar.T), sr_in, sr_out, quality="VHQ")
    out = np.ascontiguousarray(np.asarray(out, dtype=np.float32).T)
    return out[0] if mono else out


# --- files -------------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[object], None]) -> Path:
    """Write via a temp file in the same directory, fsync, then os.replace.

    Same directory keeps os.replace a rename on one filesystem, so readers see either
    the old file or the complete new one, never a half-written file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shared
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not e.filename:   # (a full disk: say which file)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; best effort where directories can't be opened.
    try:
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def audio_format(path: str | os.PathLike, fmt: str | None = None) -> str:
    """Resolve the output format name ("wav"/"ogg") from `fmt` or the file suffix."""
    name = (fmt or Path(path).suffix.lstrip(".")).lower()
    if name not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(f"unknown audio format {name or '(none)'!r} for {path}; use one of: {known}")
    return name


def write_audio(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    fmt: str | None = None,
    *,
    loop: tuple[int, int] | None = None,
) -> Path:
    """Write planar `audio` as WAV (PCM 16-bit) or Ogg Vorbis, atomically.

    `loop=(start, end)` (frames, end exclusive) also stores loop points in the file: a WAV `smpl`
    chunk or the Ogg comments LOOPSTART/LOOPLENGTH (see `read_loop_points`).
    """
    path = Path(path)
    name = audio_format(path, fmt)
    container, subtype = FORMATS[name]
    # Clip ourselves: whether libsndfile clips or wraps out-of-range floats on the way to
    # PCM_16 depends on its version and SFC_SET_CLIPPING.
    frames = np.clip(_planar(audio), -1.0, 1.0).astype(np.float32).T
    channels = frames.shape[1]
    if loop is not None:
        loop = _check_loop(loop, frames.shape[0])

    def write(f) -> None:
        # Encoded in memory, then written: a full disk is then one OSError from the write, not libsndfile's
        # failed assertion or errors raised inside its I/O callbacks.
        buf = io.BytesIO()
        with sf.SoundFile(
            buf, mode="w", samplerate=int(sample_rate), channels=channels,
            format=container, subtype=subtype,
        ) as out:
            for start in range(0, frames.shape[0], _WRITE_BLOCK):
                out.write(frames[start:start + _WRITE_BLOCK])
        if loop is not None:
            (_append_smpl if name == "wav" else _tag_ogg_loop)(buf, *loop, int(sample_rate))
        data = buf.getvalue()
        f.write(restamp_ogg(data, ogg_serial(frames)) if name == "ogg" else data)

    return _atomic_write(path, write)


def ogg_serial(audio: np.ndarray) -> int:
    """A stream serial number that follows from the audio (see restamp_ogg)."""
    return zlib.crc32(np.ascontiguousarray(audio, dtype=np.float32))   # (read in place, no copy)


def restamp_ogg(data: bytes, serial: int) -> bytes:
    """The same Ogg stream with `serial` on every page (page CRCs recomputed). libsndfile draws a random serial
    per file, so one track encoded twice differed in those bytes: a re-bake rewrote identical music, and a
    client resuming a download after a reconnect joined two streams that no decoder reads as one."""
    from mutagen.ogg import OggPage

    src, out = io.BytesIO(data), []
    while src.tell() < len(data):
        page = OggPage(src)
        page.serial = serial
        out.append(page.write())
    return b"".join(out)


# --- loop points in files ----------------------------------------------------------------

_SMPL = struct.Struct("<4sI9I6I")  # "smpl", size, header (9 dwords), one loop (6 dwords)


def _check_loop(loop: tuple[int, int], n_frames: int) -> tuple[int, int]:
    start, end = (int(v) for v in loop)
    if not 0 <= start < end <= n_frames:
        raise ValueError(f"loop {loop} must satisfy 0 <= start < end <= {n_frames} frames")
    return start, end


def _append_smpl(f, start: int, end: int, sample_rate: int) -> None:
    """Append a `smpl` chunk with one forward loop and fix the RIFF size.

    dwEnd is the last frame played (inclusive, per the spec), hence end - 1; play count 0 loops
    forever. Unity note 60 and the sample period are filled in because some samplers need them.
    """
    f.seek(0)
    head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ValueError("loop points need a RIFF/WAVE file")
    f.seek(0, os.SEEK_END)
    if f.tell() % 2:
        f.write(b"\0")  # chunks start on even offsets; the pad belongs to the previous chunk
    f.write(_SMPL.pack(b"smpl", _SMPL.size - 8, 0, 0, round(1e9 / sample_rate), 60, 0, 0, 0, 1, 0,
                       0, 0, start, end - 1, 0, 0))
    size = f.tell()
    f.seek(4)
    f.write(struct.pack("<I", size - 8))  # PCM_16 files here stay far below 4 GiB


def _tag_ogg_loop(f, start: int, end: int, _sample_rate: int) -> None:
    """LOOPSTART/LOOPLENGTH Vorbis comments in frames (the RPG Maker convention, read by many engines)."""
    from mutagen.oggvorbis import OggVorbis  # only needed for looping Ogg files

    f.seek(0)
    ogg = OggVorbis(f)
    ogg.tags["LOOPSTART"], ogg.tags["LOOPLENGTH"] = str(start), str(end - start)
    f.seek(0)
    ogg.save(f)


def read_loop_points(path: str | os.PathLike) -> tuple[int, int] | None:
    """(start, end) in frames, end exclusive, from a WAV `smpl` chunk or the Ogg LOOPSTART/LOOPLENGTH
    comments; None when the file has no loop. The format is recognised by content, not name."""
    with open(path, "rb") as f:
        magic = f.read(12)
        if magic[:4] == b"RIFF" and magic[8:12] == b"WAVE":
            while len(head := f.read(8)) == 8:
                cid, size = head[:4], struct.unpack("<I", head[4:])[0]
                if cid != b"smpl":
                    f.seek(size + (size & 1), os.SEEK_CUR)
                    continue
                data = head + f.read(size)
                if len(data) < _SMPL.size:
                    return None
                fields = _SMPL.unpack_from(data)
                if fields[9] < 1:  # cSampleLoops
                    return None
                return fields[13], fields[14] + 1
            return None
        if magic[:4] != b"OggS":
            raise ValueError(f"{path}: not a WAV or Ogg file")
    from mutagen.oggvorbis import OggVorbis

    tags = OggVorbis(path).tags or {}
    try:
        start, length = int(tags["LOOPSTART"][0]), int(tags["LOOPLENGTH"][0])
    except (KeyError, IndexError, ValueError):
        return None
    return (start, start + length) if length > 0 else None


def json_default(obj):
    # Metadata often carries numpy scalars/arrays and paths; store them as plain JSON.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def sidecar_path(audio_path: str | os.PathLike) -> Path:
    return Path(audio_path).with_suffix(".json")


def write_sidecar(audio_path: str | os.PathLike, meta: dict) -> Path:
    """Write `meta` as pretty UTF-8 JSON next to the audio (a.wav -> a.json), atomically."""
    text = json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=True, default=json_default)
    data = (text + "\n").encode("utf-8")
    return _atomic_write(sidecar_path(audio_path), lambda f: f.write(data))


# --- raw PCM -----------------------------------------------------------------------------

# Symmetric scale so s16 encode/decode round-trips; -32768 is never produced.
_S16_SCALE = 32767.0


def pcm_s16le(audio: np.ndarray) -> bytes:
    """Interleaved (frame-major) signed 16-bit little-endian PCM, clipped and rounded."""
    frames = np.clip(_planar(audio).T, -1.0, 1.0)
    return np.rint(frames * _S16_SCALE).astype("<i2").tobytes()


def pcm_f32le(audio: np.ndarray) -> bytes:
    """Interleaved (frame-major) 32-bit float little-endian PCM."""
    return np.ascontiguousarray(_planar(audio).T, dtype="<f4").tobytes()


def from_pcm(data: bytes, channels: int, fmt: str) -> np.ndarray:
    """Inverse of pcm_s16le / pcm_f32le: interleaved bytes -> planar float32."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if fmt == "s16le":
        dtype = np.dtype("<i2")
    elif fmt == "f32le":
        dtype = np.dtype("<f4")
    else:
        raise ValueError(f"unknown PCM format {fmt!r}; use one of: {', '.join(PCM_FORMATS)}")
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise ValueError(f"{len(data)} bytes is not a whole number of {channels}-channel {fmt} frames")
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    out = samples.astype(np.float32)
    if fmt == "s16le":
        out = np.clip(out / np.float32(_S16_SCALE), -1.0, 1.0)
    return np.ascontiguousarray(out.T)
