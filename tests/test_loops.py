"""Tests for troubadour.loops and the loop points written by troubadour.audio.

Seam metric calibration (SEAM_LIMITS: jump_ratio 5.0, spectral_ratio 1.5), measured with `music()` below
at 90/100/120/128/140/150 bpm x 16 seeds (half with drums), 12 s, 32 kHz; min / median / max:

    naive bar-aligned cut        jump_ratio 0.75 / 14.7 / 41.4   spectral_ratio 0.82 / 1.56 / 3.28
                                 91 of 96 exceed a limit (the rest land on near-equal samples and spectra)
    make_loop, equal power       jump_ratio 0.11 / 0.93 / 2.80   spectral_ratio 0.93 / 1.00 / 1.08
    make_loop, linear            jump_ratio 0.11 / 0.93 / 2.81   spectral_ratio 0.95 / 1.00 / 1.05
    make_loop, crossfade 0.05 s  spectral_ratio up to 2.52 (25 of 96 fail): shorter than the 2048-frame
                                 window, which still sees the old material; the default is one beat
    genuine steps of the music   jump_ratio 99.9th percentile 3.26, max 4.33 (54,000 random positions):
                                 what a perfect crossfade leaves at the seam, hence the 5.0 limit
    tiny MusicGen (noise), 4-8 s at 120 bpm, seeds 0-3: naive jump ~0.8 / spectral 0.79-1.06 (noise
                                 hides a cut), looped jump ~0.97 / spectral ~1.1

Linear and equal-power fades give the same seam (the last crossfaded frame is the frame before
loop_start either way), so the level decides: mid-crossfade, equal power is +0.8 dB (+0.9 with drums)
against the surrounding material, linear -2.1 dB (-2.0): the two sides are mostly uncorrelated music.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile as sf

from troubadour import audio, loops
from troubadour.loops import SEAM_LIMITS

SR = 32000


def _lowpass_noise(rng, n, cutoff, sr=SR):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    x = np.fft.irfft(spec / np.sqrt(1 + (f / cutoff) ** 2), n)
    return x / np.std(x)


def music(bpm, seconds=12.0, seed=0, drums=True, channels=2, sr=SR):
    """Real-ish music: drifting pad chords changing off the bar grid, a bass note per beat, wind, drums.

    Every onset has a few ms of attack, as in real recordings, so the signal itself has no clicks.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    t = np.arange(n) / sr
    beat = 60.0 / bpm
    out = np.zeros((channels, n))
    changes = np.cumsum(rng.uniform(0.6, 1.7, size=int(seconds / (0.6 * beat)) + 2) * beat)
    seg = np.searchsorted(changes, t)
    k = int(0.05 * sr)
    for _ in range(3):  # pad voices: smoothed pitch steps, vibrato, a 2nd harmonic
        f = 440.0 * 2 ** ((rng.integers(52, 76, size=len(changes) + 1)[seg] - 69) / 12)
        c = np.cumsum(np.pad(f, (k, 0), mode="edge"))
        f = (c[k:] - c[:-k]) / k                          # 50 ms glide between pitches
        f *= 1 + 0.003 * np.sin(2 * np.pi * rng.uniform(4, 6) * t)
        ph = 2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi)
        out += 0.12 * (np.sin(ph) + 0.3 * np.sin(2 * ph)) * rng.uniform(0.8, 1.2, (channels, 1))
    nb = int(seconds / beat) + 1
    bi = np.minimum((t / beat).astype(int), nb - 1)
    since = t - bi * beat
    fb = 440.0 * 2 ** ((rng.integers(33, 45, size=nb)[bi] - 69) / 12)
    attack = np.minimum(1.0, since / 0.005)
    env = 0.4 + 0.6 * np.exp(-since / 0.25) * attack + 0.6 * np.exp(-(since + beat) / 0.25) * (1 - attack)
    out += 0.25 * np.sin(2 * np.pi * np.cumsum(fb) / sr) * env
    for c in range(channels):
        out[c] += 0.045 * _lowpass_noise(rng, n, 100.0) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.13 * t + c))
    if drums:
        kt = np.arange(int(0.15 * sr)) / sr
        kick = (np.sin(2 * np.pi * (50 * kt + 2.4 * (1 - np.exp(-kt / 0.03))))
                * np.exp(-kt / 0.05) * np.minimum(1, kt / 0.002))
        hat = np.diff(rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.008 * sr)),
                      prepend=0)
        for b in range(nb):
            for pos, hit, gain in ((b, kick, 0.5), (b + 0.5, hat, 0.1)):
                i = int(round(pos * beat * sr))
                j = min(n, i + len(hit))
                if i < n:
                    out[:, i:j] += gain * hit[:j - i]
    return (out / np.max(np.abs(out)) * 0.8).astype(np.float32)


def clicks(bpm, seconds=10.0, sr=SR):
    """A drum machine: kick on every beat (accented on odd ones), hi-hat on the off-beats."""
    rng = np.random.default_rng(0)
    n = int(seconds * sr)
    x = np.zeros(n)
    kt = np.arange(int(0.12 * sr)) / sr
    kick = np.sin(2 * np.pi * (60 * kt + 4 * (1 - np.exp(-kt / 0.01)))) * np.exp(-kt / 0.04)
    hat = rng.standard_normal(int(0.03 * sr)) * np.exp(-np.arange(int(0.03 * sr)) / (0.006 * sr))
    beat = 60.0 / bpm
    for b in range(int(seconds / beat) + 1):
        for pos, hit, gain in ((b, kick, 1.0 if b % 2 == 0 else 0.6), (b + 0.5, hat, 0.2)):
            i = int(round(pos * beat * sr))
            j = min(n, i + len(hit))
            if i < n:
                x[i:j] += gain * hit[:j - i]
    return (x / np.abs(x).max() * 0.8).astype(np.float32)


# --- bar math -------------------------------------------------------------------------------------


def test_bar_seconds():
    assert loops.bar_seconds(120) == pytest.approx(2.0)
    assert loops.bar_seconds(120, "3/4") == pytest.approx(1.5)
    assert loops.bar_seconds(120, "6/8") == pytest.approx(3.0)  # six eighth-note beats
    assert loops.bar_seconds(90, "12/8") == pytest.approx(8.0)
    for bad in ("4", "0/4", "4/3", "x/4"):
        with pytest.raises(ValueError):
            loops.bar_seconds(120, bad)
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            loops.bar_seconds(bad)


def test_bar_aligned_duration():
    f = loops.bar_aligned_duration
    assert f(8.0, 120) == pytest.approx(8.0)
    assert f(7.0, 120) == pytest.approx(8.0)       # 3.5 bars rounds up
    assert f(6.9, 120) == pytest.approx(6.0)
    assert f(0.3, 120) == pytest.approx(2.0)       # at least one bar
    assert f(10.0, 120, "6/8") == pytest.approx(9.0)
    assert f(10.0, 100) == pytest.approx(9.6)      # 4 bars of 2.4 s
    assert f(30.0, 120, max_duration=15.0) == pytest.approx(14.0)
    assert f(15.9, 120, max_duration=16.0) == pytest.approx(16.0)
    assert f(10.0, 30, "7/4", max_duration=10.0) == 10.0  # a 14 s bar cannot fit: unaligned max


# --- loop points ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bpm,meter", [(120, "4/4"), (130, "4/4"), (97.5, "3/4"), (140, "6/8")])
def test_loop_points_on_bar_boundaries(bpm, meter):
    n = 12 * SR + 123
    start, end = loops.loop_points(n, SR, bpm, meter)
    bar = loops.bar_seconds(bpm, meter) * SR
    grid = [round(k * bar) for k in range(int(n / bar) + 1)]
    assert start in grid and end in grid
    assert end == grid[-1] <= n
    xf = min(max(60 / bpm, 0.05), 1.0) * SR
    assert start == min(g for g in grid if g >= xf)   # the first boundary with room to crossfade


def test_loop_points_fallbacks():
    assert loops.loop_points(12 * SR, SR, 120) == (2 * SR, 12 * SR)
    assert loops.loop_points(12 * SR, SR, 120, crossfade_s=3.0) == (4 * SR, 12 * SR)
    # shorter than two bars: beats
    assert loops.loop_points(int(3.2 * SR), SR, 120) == (SR // 2, 3 * SR)
    # no tempo: half a second of pre-roll, loop to the end
    assert loops.loop_points(10 * SR + 7, SR, None) == (SR // 2, 10 * SR + 7)
    assert loops.loop_points(SR, SR, None) == (SR // 5, SR)  # crossfade <= a quarter of the loop


def test_make_loop_only_touches_the_crossfade():
    a = music(120, seconds=11.0)
    r = loops.make_loop(a, SR, bpm=120)
    assert (r.loop_start, r.loop_end, r.crossfade, r.bpm) == (2 * SR, 10 * SR, SR // 2, 120)
    assert r.audio.dtype == np.float32 and r.audio.shape == (2, r.loop_end)
    hold = r.loop_end - r.crossfade
    np.testing.assert_array_equal(r.audio[:, :hold], a[:, :hold])   # the head is bit-identical
    assert np.all(np.any(r.audio[:, hold:] != a[:, hold:r.loop_end], axis=0)[1:])
    # the last frame is the one before loop_start, so the jump is an ordinary step
    np.testing.assert_array_equal(r.audio[:, -1], a[:, r.loop_start - 1])
    mono = loops.make_loop(a[0], SR, bpm=120)   # 1-D in, 1-D out, as a one-channel track
    np.testing.assert_array_equal(mono.audio, loops.make_loop(a[:1], SR, bpm=120).audio[0])


@pytest.mark.parametrize("bpm", [90, 120, 140, 150])
@pytest.mark.parametrize("seed,drums", [(0, True), (1, False), (3, False)])
def test_seam_metric_naive_cut_vs_loop(bpm, seed, drums):
    a = music(bpm, seed=seed, drums=drums)
    r = loops.make_loop(a, SR, bpm=bpm)
    s, e = r.loop
    naive = loops.seam_metric(a[:, :e], SR, s, e)
    looped = loops.seam_metric(r.audio, SR, s, e)
    assert not loops.meets_limits(naive), naive
    assert loops.meets_limits(looped), looped


def test_seam_metric_flags_clicks_and_timbre_jumps():
    r = loops.make_loop(music(120, seed=1, drums=False), SR, bpm=120)
    assert loops.seam_metric(r.audio, SR, *r.loop)["jump_ratio"] < 1
    b = r.audio.copy()
    b[:, -1] += 0.2                                        # a one-frame glitch right at the seam
    assert loops.seam_metric(b, SR, *r.loop)["jump_ratio"] > 2 * SEAM_LIMITS["jump_ratio"]
    s, e = r.loop
    t = np.arange(e) / SR
    c = np.sin(2 * np.pi * np.where(t < 6, 220, 1760) * t)[None].astype(np.float32)
    assert loops.seam_metric(c, SR, s, e)["spectral_ratio"] > 10   # high note into low note
    with pytest.raises(ValueError):
        loops.seam_metric(c, SR, 0, e)


def test_equal_power_keeps_the_level():
    """Mid-crossfade level vs. the material around it: equal power stays near 0 dB, linear dips."""
    def level_db(curve, seed):
        a = music(120, seed=seed)
        r = loops.make_loop(a, SR, bpm=120, curve=curve)
        x, e, s = r.crossfade, r.loop_end, r.loop_start
        mid = r.audio[:, e - x // 2 - x // 8:e - x // 2 + x // 8]
        ref = np.concatenate([a[:, e - x - x // 4:e - x], a[:, s - x // 4:s]], axis=1)
        return 20 * np.log10(np.sqrt(np.mean(mid ** 2) / np.mean(ref ** 2)))

    eq = [level_db("equal_power", s) for s in range(6)]
    lin = [level_db("linear", s) for s in range(6)]
    assert abs(np.mean(eq)) < abs(np.mean(lin)) and np.mean(lin) < -1.0
    adaptive = [level_db("adaptive", s) for s in range(6)]   # the default: as equal power on unlike sides
    assert abs(np.mean(adaptive)) < abs(np.mean(lin)) and abs(np.mean(adaptive)) <= abs(np.mean(eq)) + 0.3


def test_adaptive_crossfade_keeps_the_level_of_repeating_music():
    """A loop of repetitive music crossfades two near-copies of itself: equal power swelled by ~3 dB in the
    middle of every seam; the default (adaptive) crossfade keeps the level (here the sides are identical,
    so the seam is the original audio)."""
    bar = music(120, seconds=2.0, seed=3)                     # one 4/4 bar at 120 bpm
    a = np.tile(bar, (1, 6)).astype(np.float32)                # a strictly repeating track of 6 bars

    def mid_db(curve):
        r = loops.make_loop(a, SR, bpm=120, curve=curve)
        x, e = r.crossfade, r.loop_end
        mid = slice(e - x // 2 - x // 8, e - x // 2 + x // 8)
        return 20 * np.log10(np.sqrt(np.mean(r.audio[:, mid] ** 2) / np.mean(a[:, mid] ** 2))), r

    swell, _ = mid_db("equal_power")
    level, r = mid_db("adaptive")
    assert swell > 2.5 and abs(level) < 0.05
    np.testing.assert_allclose(r.audio, a[:, :r.loop_end], atol=1e-5)
    np.testing.assert_array_equal(loops.make_loop(a, SR, bpm=120).audio, r.audio)   # the default curve
    with pytest.raises(ValueError):
        loops.make_loop(music(120, 6.0), SR, 120, curve="cubic")


def test_make_loop_estimates_the_tempo():
    r = loops.make_loop(music(128, seed=2), SR)
    assert r.bpm == pytest.approx(128, abs=2)
    assert loops.meets_limits(loops.seam_metric(r.audio, SR, r.loop_start, r.loop_end))


# --- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bpm,meter,crossfade_s", [
    (120, "4/4", None), (133, "6/8", None), (None, "4/4", None), (100, "4/4", 0.0), (90, "3/4", 0.05),
])
def test_streamer_matches_make_loop(bpm, meter, crossfade_s, monkeypatch):
    a = music(bpm or 110, seconds=9.3, seed=5)
    # The streamer cannot estimate a tempo before the audio exists: compare with make_loop's fallback.
    monkeypatch.setattr(loops, "estimate_bpm", lambda *_: None)
    want = loops.make_loop(a, SR, bpm=bpm, meter=meter, crossfade_s=crossfade_s)
    rng = np.random.default_rng(0)
    for sizes in ([a.shape[1]], [1, 2, 3] * 10 + [50_000] * 10, list(rng.integers(1, 40_000, 200))):
        st = loops.LoopStreamer(a.shape[1], SR, bpm, meter, crossfade_s)
        assert (st.loop_start, st.loop_end, st.frames) == (want.loop_start, want.loop_end, want.loop_end)
        parts, pos = [], 0
        for size in sizes:
            if pos >= a.shape[1]:
                break
            got = st.feed(a[:, pos:pos + size])
            assert sum(p.shape[1] for p in parts + got) <= st.loop_end - st.crossfade
            parts += got
            pos += size
        parts += st.finish()
        np.testing.assert_array_equal(np.concatenate(parts, axis=1), want.audio)


def test_streamer_errors():
    st = loops.LoopStreamer(8 * SR, SR, 120)
    st.feed(np.zeros((2, 7 * SR), np.float32))
    with pytest.raises(ValueError):
        st.finish()  # never reached loop_end
    st = loops.LoopStreamer(8 * SR, SR, 120)
    st.feed(np.zeros((2, 9 * SR), np.float32))  # extra frames are ignored
    assert sum(p.shape[1] for p in st.finish()) == st.crossfade
    assert st.finish() == []
    with pytest.raises(RuntimeError):
        st.feed(np.zeros((2, 10), np.float32))


# --- one-shots ------------------------------------------------------------------------------------


def test_fades():
    a = music(120, seconds=3.0)
    out = loops.fade_out(a, SR, 1.0)
    assert out.shape == a.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :2 * SR], a[:, :2 * SR])
    assert np.all(out[:, -1] == 0)
    tail = np.abs(out[:, -SR:]).max(axis=0)
    assert tail[-SR // 10:].max() < 0.2 * tail[:SR // 10].max()
    inp = loops.fade_in(a, SR, 0.01)
    assert np.all(inp[:, 0] == 0)
    np.testing.assert_array_equal(inp[:, 320:], a[:, 320:])
    np.testing.assert_array_equal(loops.fade_out(a, SR, 0), a)
    assert np.all(loops.fade_out(a[:, :100], SR, 1.0)[:, -1] == 0)  # longer than the audio


# --- tempo ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bpm", [100, 120, 140])
def test_estimate_bpm_click_track(bpm):
    assert loops.estimate_bpm(clicks(bpm), SR) == pytest.approx(bpm, abs=2)


def test_estimate_bpm_gives_up():
    assert loops.estimate_bpm(clicks(120, seconds=2.0), SR) is None   # too short
    assert loops.estimate_bpm(np.zeros((2, 5 * SR), np.float32), SR) is None


# --- loop points in files -------------------------------------------------------------------------


def test_wav_smpl_round_trip(tmp_path):
    a = music(120, seconds=5.0)
    plain = audio.write_audio(tmp_path / "plain.wav", a, SR)
    looped = audio.write_audio(tmp_path / "loop.wav", a, SR, loop=(SR, 4 * SR))
    assert audio.read_loop_points(looped) == (SR, 4 * SR)
    assert audio.read_loop_points(plain) is None
    raw = looped.read_bytes()
    assert raw[:4] == b"RIFF" and struct.unpack("<I", raw[4:8])[0] == len(raw) - 8
    assert raw[8:-68] == plain.read_bytes()[8:]                   # soundfile's chunks untouched
    chunk = raw[-68:]
    assert chunk[:8] == b"smpl" + struct.pack("<I", 60)
    fields = struct.unpack("<9I6I", chunk[8:])
    assert fields[2] == round(1e9 / SR) and fields[3] == 60      # sample period ns, unity note
    assert fields[7:9] == (1, 0)                                 # one loop, no sampler data
    assert fields[9:] == (0, 0, SR, 4 * SR - 1, 0, 0)           # forward, dwEnd inclusive, forever
    x, sr = sf.read(looped, dtype="float32", always_2d=True)
    y, _ = sf.read(plain, dtype="float32", always_2d=True)
    assert sr == SR and np.array_equal(x, y)


def test_wav_smpl_after_odd_sized_chunk(tmp_path):
    # 8-bit mono data can have an odd size; the smpl chunk must still start on an even offset.
    p = tmp_path / "odd.wav"
    sf.write(p, np.zeros(101), 8000, subtype="PCM_U8")
    with open(p, "r+b") as f:
        audio._append_smpl(f, 10, 90, 8000)
    assert audio.read_loop_points(p) == (10, 90)
    assert sf.info(p).frames == 101


def test_ogg_loop_comments_round_trip(tmp_path):
    from mutagen.oggvorbis import OggVorbis

    a = music(120, seconds=5.0)
    p = audio.write_audio(tmp_path / "loop.ogg", a, SR, loop=(SR, 4 * SR))
    assert audio.read_loop_points(p) == (SR, 4 * SR)
    tags = OggVorbis(p).tags
    assert tags["LOOPSTART"] == [str(SR)] and tags["LOOPLENGTH"] == [str(3 * SR)]
    y, sr = sf.read(p, dtype="float32", always_2d=True)
    assert sr == SR and abs(len(y) - a.shape[1]) <= 0.005 * SR
    assert audio.read_loop_points(audio.write_audio(tmp_path / "plain.ogg", a, SR)) is None


def test_loop_point_validation(tmp_path):
    a = np.zeros((2, 1000), np.float32)
    for bad in ((0, 0), (-1, 10), (10, 1001), (500, 400)):
        with pytest.raises(ValueError):
            audio.write_audio(tmp_path / "x.wav", a, SR, loop=bad)
    assert not (tmp_path / "x.wav").exists()
    (tmp_path / "x.txt").write_bytes(b"hello world, not audio")
    with pytest.raises(ValueError):
        audio.read_loop_points(tmp_path / "x.txt")


# --- real model output ----------------------------------------------------------------------------


def test_tiny_musicgen_loops(engine, tmp_path):
    from troubadour.engine import Job
    from troubadour.params import GenParams

    job = Job("an upbeat chiptune melody", GenParams(duration=4, seed=1))
    sr = engine.sample_rate
    chunks = [c.audio for c in engine.stream([job])]
    a = np.concatenate(chunks, axis=1)
    r = loops.make_loop(a, sr, bpm=120)
    assert r.loop_end - r.loop_start >= sr   # at least a second of loop
    m = loops.seam_metric(r.audio, sr, r.loop_start, r.loop_end)
    assert loops.meets_limits(m), m
    # The streamer, told the length up front, produces the same track from the engine's own chunks.
    st = loops.LoopStreamer(engine.samples_for(4), sr, 120)
    parts = [p for c in chunks for p in st.feed(c)] + st.finish()
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), r.audio)
    p = audio.write_audio(tmp_path / "loop.wav", r.audio, sr, loop=r.loop)
    assert audio.read_loop_points(p) == r.loop


def test_snap_puts_loop_points_on_codec_frames_near_the_bars():
    sr, bpm = 32000, 90
    n = int(4 * loops.bar_seconds(bpm) * sr)
    plain = loops.loop_points(n, sr, bpm)
    snapped = loops.loop_points(n, sr, bpm, snap=640)
    assert all(p % 640 == 0 for p in snapped)
    assert all(abs(a - b) <= 320 for a, b in zip(plain, snapped))


@pytest.mark.parametrize("bpm,bars,seconds", [(140, 6, 10), (140, 2, 4), (90, 4, 10.5)])
def test_a_server_track_of_whole_frames_loops_over_its_last_bar(bpm, bars, seconds):
    """A profile's duration is rounded to whole bars, then to the nearest codec frame: at 140 bpm 6 bars are
    10.2857 s and the track 514 frames (10.28 s). Its last bar must still be looped (it was dropped: 8.58 s
    of a 10.28 s track, and a 2-bar track looped 6 beats off the bar lines) and end where a bake's loop ends."""
    from troubadour.bake import GUARD_S

    sr, hop, rate = 32000, 640, 50
    duration = loops.bar_aligned_duration(seconds, bpm, "4/4", 300.0)
    assert round(duration / loops.bar_seconds(bpm)) == bars
    n = round(duration * rate) * hop              # what the server generates (geometry.frames_for)
    assert n < bars * loops.bar_seconds(bpm) * sr  # just short of the last bar line
    start, end = loops.loop_points(n, sr, bpm, snap=hop)
    bar = loops.bar_seconds(bpm) * sr
    assert end == n and abs(end - bars * bar) <= hop // 2
    assert abs(start - bar) <= hop // 2 and start % hop == 0
    baked = round((duration + GUARD_S) * rate) * hop  # a bake generates past the bar line
    assert loops.loop_points(baked, sr, bpm, snap=hop) == (start, end)
