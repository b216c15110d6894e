"""The cache's track blob: float32 audio and a JSON header, sealed by a sha256 so damage on
disk is caught on read instead of served."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from .audio import json_default

# Blob layout: MAGIC | sha256 digest (32 bytes) of everything after it | u32 LE header
# length | header JSON (utf-8) | audio as little-endian float32, planar (channels, frames)
# in C order. The digest covers header and audio, so a damaged meta is caught too.
MAGIC = b"TRK1"
_DIGEST_LEN = 32
_LEN = struct.Struct("<I")
_PREFIX_LEN = len(MAGIC) + _DIGEST_LEN + _LEN.size
_DTYPE = "<f4"


class CorruptTrack(ValueError):
    """A stored blob that fails to parse or whose checksum doesn't match."""


def planar_f32(audio) -> np.ndarray:
    a = np.asarray(audio)
    if a.ndim == 1:
        a = a[np.newaxis, :]
    if a.ndim != 2:
        raise ValueError(f"audio must be (channels, frames) or (frames,), got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=_DTYPE)


def encode_track(audio: np.ndarray, sample_rate: int, meta: dict) -> bytes:
    """Serialise one track to the blob layout described at MAGIC."""
    a = planar_f32(audio)
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    header = {"shape": list(a.shape), "dtype": _DTYPE, "layout": "planar",
              "sample_rate": int(sample_rate), "meta": meta}
    head = json.dumps(header, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                      default=json_default).encode("utf-8")
    body = _LEN.pack(len(head)) + head + a.tobytes()
    return MAGIC + hashlib.sha256(body).digest() + body


def decode_track(blob) -> tuple[np.ndarray, int, dict]:
    """(audio, sample_rate, meta) from a blob; raises CorruptTrack on any damage."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CorruptTrack(f"blob is {type(blob).__name__}, not bytes")
    view = memoryview(blob)
    if len(view) < _PREFIX_LEN or bytes(view[:len(MAGIC)]) != MAGIC:
        raise CorruptTrack("bad magic or truncated prefix")
    digest = bytes(view[len(MAGIC):len(MAGIC) + _DIGEST_LEN])
    if hashlib.sha256(view[len(MAGIC) + _DIGEST_LEN:]).digest() != digest:
        raise CorruptTrack("checksum mismatch")
    (head_len,) = _LEN.unpack_from(view, len(MAGIC) + _DIGEST_LEN)
    start = _PREFIX_LEN + head_len
    try:
        header = json.loads(bytes(view[_PREFIX_LEN:start]).decode("utf-8"))
        channels, frames = (int(n) for n in header["shape"])
        sample_rate = int(header["sample_rate"])
        meta = header["meta"]
        if header["dtype"] != _DTYPE or header["layout"] != "planar":
            raise ValueError("unknown sample format")
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptTrack(f"bad header: {e}") from None
    if len(view) - start != channels * frames * 4:
        raise CorruptTrack("audio length doesn't match the header shape")
    # copy(): the caller owns the array; nothing points back into the blob.
    audio = np.frombuffer(view[start:], dtype=_DTYPE).reshape(channels, frames)
    return audio.astype(np.float32, copy=True), sample_rate, meta

