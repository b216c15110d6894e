"""Tests for troubadour.audio, on real files in tmp_path."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from troubadour import audio

REPO = Path(__file__).resolve().parents[1]


def sine(freq=440.0, sr=32000, seconds=2.0, amp=0.5, channels=2, phase=0.0):
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t + phase)
    return np.tile(x, (channels, 1)).astype(np.float32)


def noise(sr=32000, seconds=3.0, rms=0.1, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((channels, int(sr * seconds))) * rms).astype(np.float32)


def lufs(x, sr):
    return pyloudnorm.Meter(sr).integrated_loudness(np.ascontiguousarray(x.T, dtype=np.float64))


def peak_freq(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


def corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


# --- files -----------------------------------------------------------------------------


def test_wav_round_trip(tmp_path):
    sr = 32000
    x = sine(sr=sr, seconds=1.5)
    x[1] *= 0.5  # distinct channels, to catch a transposed write
    out = audio.write_audio(tmp_path / "a.wav", x, sr)
    assert out == tmp_path / "a.wav"
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (sr, 2, x.shape[1])
    assert info.subtype == "PCM_16"
    y, _ = sf.read(out, dtype="float32", always_2d=True)
    np.testing.assert_allclose(y.T, x, atol=1.5 / 32767)


def test_ogg_round_trip(tmp_path):
    sr = 48000
    x = sine(sr=sr, seconds=2.0)
    x[1] = sine(660.0, sr=sr, seconds=2.0, channels=1)[0]
    out = audio.write_audio(tmp_path / "a.ogg", x, sr)
    info = sf.info(out)
    assert info.format == "OGG" and info.subtype == "VORBIS"
    assert (info.samplerate, info.channels) == (sr, 2)
    assert abs(info.frames - x.shape[1]) <= 0.005 * sr
    y, _ = sf.read(out, dtype="float32", always_2d=True)
    n = min(len(y), x.shape[1])
    assert corr(y[:n, 0], x[0, :n]) > 0.98
    assert corr(y[:n, 1], x[1, :n]) > 0.98
    assert abs(peak_freq(y[:n, 0], sr) - 440) < 2 and abs(peak_freq(y[:n, 1], sr) - 660) < 2


def test_ogg_bytes_follow_the_audio(tmp_path):
    """libsndfile drew a random stream serial per file: the same audio written twice made two different files
    (a re-bake rewrote them; a download resumed on another encoding of the track was two joined streams)."""
    x = sine(sr=32000, seconds=1.0)
    a = audio.write_audio(tmp_path / "a.ogg", x, 32000, loop=(100, 30000)).read_bytes()
    b = audio.write_audio(tmp_path / "b.ogg", x, 32000, loop=(100, 30000)).read_bytes()
    other = audio.write_audio(tmp_path / "c.ogg", x * 0.5, 32000).read_bytes()
    assert a == b and a[14:18] != other[14:18]            # bytes 14..17 of a page: its stream serial
    assert audio.read_loop_points(tmp_path / "b.ogg") == (100, 30000)
    y, _ = sf.read(tmp_path / "b.ogg", dtype="float32", always_2d=True)
    assert corr(y[:30000, 0], x[0, :30000]) > 0.98
    from troubadour.delivery import _ogg_bytes
    first, second = _ogg_bytes(x, 32000), _ogg_bytes(x, 32000)
    assert first == second and sf.read(io.BytesIO(first))[0].shape[0] == x.shape[1]


def test_long_ogg_write(tmp_path):
    # One-shot writes this long overflow the stack inside libvorbis; write_audio chunks them.
    sr = 48000
    x = noise(sr=sr, seconds=60.0, rms=0.05)
    info = sf.info(audio.write_audio(tmp_path / "long.ogg", x, sr))
    assert abs(info.frames - x.shape[1]) <= 0.005 * sr


def test_write_format_explicit_and_unknown(tmp_path):
    x = sine(seconds=0.2)
    p = audio.write_audio(tmp_path / "clip.bin", x, 32000, fmt="ogg")
    assert sf.info(p).format == "OGG"
    with pytest.raises(ValueError, match="unknown audio format"):
        audio.write_audio(tmp_path / "a.mp3", x, 32000)
    with pytest.raises(ValueError, match="unknown audio format"):
        audio.write_audio(tmp_path / "a.wav", x, 32000, fmt="flac")
    assert sorted(os.listdir(tmp_path)) == ["clip.bin"]


def test_write_clips_out_of_range_instead_of_wrapping(tmp_path):
    x = np.array([[1.5, -1.5, 0.25]], dtype=np.float32)
    y, _ = sf.read(audio.write_audio(tmp_path / "c.wav", x, 8000), dtype="float32")
    assert y[0] > 0.99 and y[1] < -0.99 and abs(y[2] - 0.25) < 1e-3


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.wav"
    target.write_bytes(b"old junk")
    audio.write_audio(target, sine(seconds=0.5), 32000)
    audio.write_audio(target, sine(seconds=0.25, channels=1), 32000)
    info = sf.info(target)
    assert (info.channels, info.frames) == (1, 8000)
    side = audio.write_sidecar(target, {"prompt": "tavern lute ♪", "seed": np.int64(7)})
    assert sorted(os.listdir(tmp_path)) == ["a.json", "a.wav"]
    assert side == tmp_path / "a.json"


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.wav"
    audio.write_audio(target, sine(seconds=0.5), 32000)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(audio.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        audio.write_audio(target, sine(seconds=1.0), 32000)
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.wav"]


def test_sidecar_content(tmp_path):
    meta = {"prompt": "boss fight, épique", "params": {"duration": 8.0}, "seed": np.int64(3),
            "path": tmp_path / "x"}
    p = audio.write_sidecar(tmp_path / "track.ogg", meta)
    assert p.name == "track.json"
    text = p.read_text(encoding="utf-8")
    assert "épique" in text and "\n  " in text  # UTF-8, not \u escapes; pretty-printed
    assert json.loads(text) == {"prompt": "boss fight, épique", "params": {"duration": 8.0},
                                "seed": 3, "path": str(tmp_path / "x")}


# --- loudness --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sine", "noise"])
@pytest.mark.parametrize("target", [-16.0, -23.0])
def test_normalize_hits_target(kind, target):
    sr = 32000
    x = sine(sr=sr, seconds=3.0, amp=0.05) if kind == "sine" else noise(sr=sr, rms=0.02)
    assert abs(lufs(x, sr) - target) > 3  # the test must actually move it
    y = audio.normalize_loudness(x, sr, target_lufs=target)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert abs(lufs(y, sr) - target) <= 0.5
    assert audio.true_peak_dbfs(y, sr) <= -1.0 + 0.01


def test_normalize_respects_true_peak_ceiling():
    sr = 32000
    x = noise(sr=sr, rms=0.05)
    # Reaching -6 LUFS would need a peak well above 0 dBFS.
    y = audio.normalize_loudness(x, sr, target_lufs=-6.0, peak_dbfs=-1.0)
    tp = audio.true_peak_dbfs(y, sr)
    assert tp <= -1.0 + 0.01
    assert tp > -1.1  # limited to the ceiling, not further
    assert 20 * np.log10(np.max(np.abs(y))) <= -1.0 + 0.01
    assert lufs(y, sr) < -6.0 - 1.0
    assert np.all(np.isfinite(y))


def test_true_peak_sees_inter_sample_peaks():
    sr = 32000
    # A sine at sr/4 sampled 45 degrees off its crest: samples at ±0.707, true peak 1.0.
    x = sine(freq=sr / 4, sr=sr, seconds=1.0, amp=0.9, channels=1, phase=np.pi / 4)
    sample_peak = 20 * np.log10(np.max(np.abs(x)))
    tp = audio.true_peak_dbfs(x, sr)
    assert abs(sample_peak - 20 * np.log10(0.9 * np.sqrt(0.5))) < 0.01
    assert abs(tp - 20 * np.log10(0.9)) < 0.2
    y = audio.normalize_loudness(x, sr, target_lufs=0.0, peak_dbfs=-1.0)
    assert audio.true_peak_dbfs(y, sr) <= -1.0 + 0.01
    assert np.max(np.abs(y)) < 10 ** (-3.5 / 20)  # sample peak ~3 dB below the ceiling


def test_normalize_silence_and_nan():
    sr = 32000
    z = np.zeros((2, sr), dtype=np.float32)
    assert audio.integrated_loudness(z, sr) == float("-inf")
    y = audio.normalize_loudness(z, sr)
    assert np.all(y == 0) and y.shape == z.shape
    tiny = np.full((2, sr), 1e-6, dtype=np.float32)  # below the silence floor: not amplified
    assert np.array_equal(audio.normalize_loudness(tiny, sr), tiny)
    bad = sine(sr=sr, seconds=1.0, amp=0.1)
    bad[0, 100] = np.nan
    bad[1, 200] = np.inf
    y = audio.normalize_loudness(bad, sr)
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0


def test_normalize_short_audio_peak_normalises():
    sr = 32000
    x = sine(sr=sr, seconds=0.1, amp=0.1)
    assert audio.integrated_loudness(x, sr) == float("-inf")
    y = audio.normalize_loudness(x, sr, peak_dbfs=-1.0)
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert abs(audio.true_peak_dbfs(y, sr) - -1.0) < 0.01
    mono = audio.normalize_loudness(x[0], sr)
    assert mono.shape == x[0].shape


def test_integrated_loudness_matches_pyloudnorm():
    sr = 48000
    x = noise(sr=sr, rms=0.1)
    assert abs(audio.integrated_loudness(x, sr) - lufs(x, sr)) < 1e-6


# --- resampling ------------------------------------------------------------------------


def test_resample_keeps_duration_and_pitch():
    x = sine(freq=440.0, sr=32000, seconds=2.0)
    x[1] = sine(freq=1000.0, sr=32000, seconds=2.0, channels=1)[0]
    y = audio.resample(x, 32000, 48000)
    assert y.dtype == np.float32 and y.shape[0] == 2
    assert abs(y.shape[1] - 96000) <= 1
    assert abs(peak_freq(y[0], 48000) - 440) < 1
    assert abs(peak_freq(y[1], 48000) - 1000) < 1
    same = audio.resample(x, 32000, 32000)
    assert np.array_equal(same, x) and same is not x
    assert audio.resample(x[0], 32000, 16000).shape == (32000,)


# --- PCM -------------------------------------------------------------------------------


def stereo_lr():
    left = np.linspace(-1, 1, 101, dtype=np.float32)
    right = -0.5 * left
    return np.stack([left, right])


def test_pcm_s16_interleaving_and_round_trip():
    x = stereo_lr()
    data = audio.pcm_s16le(x)
    assert len(data) == 101 * 2 * 2
    raw = np.frombuffer(data, dtype="<i2")
    assert raw[0] == -32767 and raw[1] == 16384  # L0 then R0 (0.5*32767 rounds up)
    assert raw[2] == round(x[0, 1] * 32767) and raw[3] == round(x[1, 1] * 32767)
    back = audio.from_pcm(data, 2, "s16le")
    assert back.shape == x.shape and back.dtype == np.float32
    np.testing.assert_allclose(back, x, atol=0.5 / 32767 + 1e-7)
    over = audio.pcm_s16le(np.array([[2.0, -2.0]], dtype=np.float32))
    assert list(np.frombuffer(over, dtype="<i2")) == [32767, -32767]


def test_pcm_f32_interleaving_and_round_trip():
    x = stereo_lr()
    data = audio.pcm_f32le(x)
    raw = np.frombuffer(data, dtype="<f4")
    assert raw[0] == x[0, 0] and raw[1] == x[1, 0] and raw[2] == x[0, 1]
    back = audio.from_pcm(data, 2, "f32le")
    assert np.array_equal(back, x)


def test_from_pcm_rejects_bad_input():
    with pytest.raises(ValueError, match="whole number"):
        audio.from_pcm(b"\x00\x00\x00", 2, "s16le")
    with pytest.raises(ValueError, match="unknown PCM format"):
        audio.from_pcm(b"", 1, "u8")


# --- metadata log ----------------------------------------------------------------------
