"""Tests for troubadour.trackblob: the cache's track blob format."""

from __future__ import annotations

import numpy as np
import pytest

from troubadour.trackblob import MAGIC, CorruptTrack, decode_track, encode_track


def audio_for(seed: int, channels: int = 2, frames: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (channels, frames)).astype(np.float32)


def test_blob_roundtrip_and_damage_detection():
    audio = audio_for(1, frames=100)
    blob = encode_track(audio, 32000, {"prompt": "x"})
    assert blob.startswith(MAGIC)
    out, sr, meta = decode_track(blob)
    assert sr == 32000 and meta == {"prompt": "x"}
    np.testing.assert_array_equal(out, audio)
    for i in (len(MAGIC) + 3, len(MAGIC) + 40, 60, len(blob) - 1):  # digest, header, audio
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(CorruptTrack):
            decode_track(bytes(bad))
    for bad in (blob[:-4], blob[:20], b"", b"garbage" * 10, "text"):
        with pytest.raises(CorruptTrack):
            decode_track(bad)
