"""Chunked EnCodec decoding with the LSTM's state carried (codec_stream.py): chunks of any size equal a whole
decode, every frame goes through the LSTM once, and the engine streams through it."""

import numpy as np
import pytest
import torch

from conftest import native_kernel_expected
from troubadour import codec_stream
from troubadour.backends import load_backend
from troubadour.chunking import RowCodes
from troubadour.engine import Engine, Job
from troubadour.params import GenParams

TOLERANCE = 1e-4   # as test_engine's STREAM_TOLERANCE: measured ~1e-7


def _stream(be, codes, chunk_frames, lookahead=5, gemv=None):
    k, total = codes.shape
    row = RowCodes(total, k, "cpu", be.info.sample_rate // be.info.frame_rate, chunk_frames, 50, lookahead)
    row.codec = be.stream_decoder(lookahead, gemv)
    assert row.codec is not None
    out = []
    for f in range(total):
        w = row.push(codes[:, f:f + 1])
        if w is not None:
            out.append(row.decode(w, None))   # never the windowed decode
    return out


@pytest.mark.parametrize("chunk_frames", [1, 7, 25, 200])
def test_chunks_of_any_size_equal_a_whole_decode(backend, chunk_frames):
    torch.manual_seed(chunk_frames)
    codes = torch.randint(0, 64, (backend.info.num_codebooks, 137))
    chunks = _stream(backend, codes, chunk_frames)
    assert chunks[-1].final and [c.start for c in chunks] == sorted(c.start for c in chunks)
    got = np.concatenate([c.audio for c in chunks], axis=1)
    with torch.inference_mode():
        whole = backend.decode_audio(codes[None])[0].numpy()
    assert got.shape == whole.shape == (1, 137 * 640)
    assert np.abs(got - whole).max() < TOLERANCE


def test_each_frame_goes_through_the_lstm_once(backend):
    lstm = backend.model.audio_encoder.decoder.layers[1].lstm
    seen = []
    hook = lstm.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        _stream(backend, torch.randint(0, 64, (backend.info.num_codebooks, 300)), 25)
    finally:
        hook.remove()
    assert sum(seen) == 300 and len(seen) == 12   # 11 chunks of 25 due before the end, then the final one


def test_stereo_tracks_carry_one_state_per_channel(tmp_path):
    from troubadour.testmodel import build_test_model

    be = load_backend(str(build_test_model(tmp_path / "stereo", stereo=True)), "cpu")
    codes = torch.randint(0, 64, (be.info.num_codebooks, 90))
    got = np.concatenate([c.audio for c in _stream(be, codes, 25)], axis=1)
    with torch.inference_mode():
        whole = be.decode_audio(codes[None])[0].numpy()
    assert got.shape == whole.shape == (2, 90 * 640)
    assert np.abs(got - whole).max() < TOLERANCE


def test_too_little_lookahead_falls_back_to_windows(backend):
    assert backend.stream_decoder(codec_stream.PRE_REACH + codec_stream.POST_REACH) is not None
    assert backend.stream_decoder(codec_stream.PRE_REACH + codec_stream.POST_REACH - 1) is None


def test_the_engine_streams_without_decoding_windows_again(engine, backend, monkeypatch):
    """The engine's chunks come from the carried state: decoding a window from its codes is not called."""
    def refuse(codes):
        raise AssertionError("windowed decode used")

    job = Job("calm piano", GenParams(duration=2.0, seed=4))
    monkeypatch.setattr(backend, "decode_audio", refuse)
    r = engine.generate([job])[0]
    monkeypatch.undo()
    whole = Engine(backend, lookahead_frames=5).decode(r.codes)
    assert np.abs(r.audio - whole).max() < TOLERANCE


@pytest.mark.skipif(not native_kernel_expected(), reason="not Linux with a C compiler")
def test_the_lstm_in_the_native_kernel_equals_torchs(backend):
    """PanelLSTM: the same outputs and state as torch.nn.LSTM, from zeros and from a carried state."""
    from troubadour import native

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(128, 128, num_layers=2)
    ours = codec_stream.PanelLSTM(lstm, native.kernel())
    seq = torch.randn(9, 1, 128)
    with torch.inference_mode():
        ref, ref_state = lstm(seq)
        got, state = ours(seq, None)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        more = torch.randn(4, 1, 128)
        ref2, _ = lstm(more, ref_state)
        got2, _ = ours(more, state)
        torch.testing.assert_close(got2, ref2, atol=1e-5, rtol=1e-5)
    # and a stream through it equals a whole decode
    assert isinstance(backend.stream_decoder(5, native.kernel()).tracks[0].lstm, codec_stream.PanelLSTM)
    codes = torch.randint(0, 64, (backend.info.num_codebooks, 120))
    got = np.concatenate([c.audio for c in _stream(backend, codes, 25, gemv=native.kernel())], axis=1)
    with torch.inference_mode():
        whole = backend.decode_audio(codes[None])[0].numpy()
    assert np.abs(got - whole).max() < TOLERANCE
