"""The decode loop against the real (tiny) model: streaming, determinism, batching, sampling, control."""

import numpy as np
import pytest
import torch

from conftest import native_kernel_expected
from troubadour.backends import load_backend
from troubadour.engine import Engine, Job
from troubadour.errors import Cancelled, ValidationError
from troubadour.params import GenParams

# Measured: streamed chunks differ from a whole decode by ~1e-7 (float rounding); a seam without
# lookahead differs by ~0.05. The bound sits well between the two.
STREAM_TOLERANCE = 1e-4


def job(prompt="calm piano", **kw):
    kw.setdefault("duration", 1.0)
    return Job(prompt, GenParams(**kw))


def test_loads_from_directory_with_real_model_shape(engine, tiny_model):
    info = engine.info
    assert (info.sample_rate, info.frame_rate, info.num_codebooks, info.channels) == (32000, 50, 4, 1)
    assert info.model_id == str(tiny_model)
    assert len(info.identity) == 16


def test_greedy_output_equals_transformers_generate(engine, backend):
    prompts = ["calm piano", "an epic orchestral battle theme with drums"]
    ours = engine.generate([job(p, top_k=1, cfg_coef=3.0, duration=1.0) for p in prompts])
    inputs = backend.tokenizer(prompts, padding=True, return_tensors="pt")
    ref = backend.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=50 + 3)
    for i, r in enumerate(ours):
        assert r.audio.shape == (1, 32000)
        np.testing.assert_allclose(r.audio, ref[i].numpy()[:, :32000], atol=1e-5)


def test_stereo_checkpoint_matches_transformers(tmp_path):
    from troubadour.testmodel import build_test_model

    be = load_backend(str(build_test_model(tmp_path / "stereo", stereo=True)), "cpu")
    eng = Engine(be)
    assert eng.info.channels == 2 and eng.info.num_codebooks == 8
    ours = eng.generate([job("calm piano", top_k=1, duration=0.5)])[0]
    inputs = be.tokenizer(["calm piano"], padding=True, return_tensors="pt")
    ref = be.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=25 + 3)
    assert ours.audio.shape == (2, 16000)
    np.testing.assert_allclose(ours.audio, ref[0].numpy()[:, :16000], atol=1e-5)


def test_streamed_chunks_equal_whole_decode(engine):
    chunks, first_chunk_step, steps_seen = [], None, []
    jobs = [job(duration=6.0, seed=1)]
    for c in engine.stream(jobs, progress=lambda d, t: steps_seen.append(d)):
        if first_chunk_step is None:
            first_chunk_step = steps_seen[-1]
        chunks.append(c)
    total = engine.steps_for(6.0)
    assert len(chunks) >= 10, "a 6 s track should leave in many chunks"
    assert first_chunk_step < total / 5, "audio must leave long before generation ends"
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    starts = np.cumsum([0] + [c.audio.shape[1] for c in chunks[:-1]])
    assert [c.start for c in chunks] == list(starts)
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])
    streamed = np.concatenate([c.audio for c in chunks], axis=1)
    whole = engine.decode(chunks[-1].codes)
    assert streamed.shape == whole.shape == (1, 6 * 32000)
    assert np.abs(streamed - whole).max() < STREAM_TOLERANCE


def test_chunk_seams_need_lookahead(backend):
    """Guards the tolerance above: without right context the seams visibly differ."""
    eng = Engine(backend, lookahead_frames=0)
    r = eng.generate([job(duration=3.0, seed=1)])[0]
    assert np.abs(r.audio - eng.decode(r.codes)).max() > 10 * STREAM_TOLERANCE


def test_same_seed_same_audio_and_different_seed_differs(engine):
    a = engine.generate([job(seed=7)])[0]
    b = engine.generate([job(seed=7)])[0]
    c = engine.generate([job(seed=8)])[0]
    assert np.array_equal(a.audio, b.audio) and np.array_equal(a.codes, b.codes)
    assert (a.codes != c.codes).mean() > 0.5


def test_batch_rows_have_own_shapes_and_match_solo_generation(engine):
    jobs = [job("calm piano", duration=1.0, seed=3), job("battle drums", duration=2.0, seed=4),
            job("calm piano", duration=0.5, seed=5, temperature=0.7, top_k=50, cfg_coef=1.0)]
    batch = engine.generate(jobs)
    assert [r.audio.shape for r in batch] == [(1, 32000), (1, 64000), (1, 16000)]
    assert [r.codes.shape for r in batch] == [(4, 50), (4, 100), (4, 25)]
    for j, r in zip(jobs, batch):
        solo = engine.generate([j])[0]
        assert np.array_equal(solo.codes, r.codes)


def test_variants_differ(engine):
    rows = engine.generate([job(seed=10), job(seed=11), job(seed=12)])
    for i in range(3):
        for k in range(i + 1, 3):
            assert (rows[i].codes != rows[k].codes).mean() > 0.5


def test_top_k_one_and_tiny_top_p_are_greedy(engine):
    greedy = [engine.generate([job(seed=s, top_k=1)])[0].codes for s in (1, 2)]
    nucleus = engine.generate([job(seed=3, top_p=1e-6)])[0].codes
    assert np.array_equal(greedy[0], greedy[1])
    assert np.array_equal(greedy[0], nucleus)


def test_progress_reports_every_step(engine):
    seen = []
    engine.generate([job(duration=1.0)], progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 53) for i in range(1, 54)], "N seconds need N*50+3 decoder steps"


def test_cancel_between_steps_then_engine_still_works(engine):
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 10

    with pytest.raises(Cancelled):
        list(engine.stream([job(duration=2.0)], should_stop=stop))
    assert len(calls) == 11
    assert engine.generate([job(duration=0.2)])[0].audio.shape == (1, 6400)


@pytest.mark.parametrize("field,value", [
    ("duration", 0), ("duration", -1.0), ("duration", 301.0), ("duration", float("nan")),
    ("temperature", 0), ("temperature", -0.5), ("top_k", -1), ("top_k", 2.5), ("top_p", -0.1),
    ("top_p", 1.5), ("cfg_coef", 0.5), ("seed", 1.5), ("seed", "7"), ("seed", -1), ("temperature", "hot"),
    ("temperature", 1e-300), ("temperature", 100.5), ("cfg_coef", 1e39), ("cfg_coef", 101),   # float32 overflows
])
def test_invalid_parameters_are_coded_errors(engine, field, value):
    with pytest.raises(ValidationError) as e:
        engine.validate([Job("calm piano", GenParams(**{field: value}))])
    assert e.value.code == "invalid_param" and e.value.field == field
    assert e.value.to_dict()["field"] == field and e.value.message


@pytest.mark.parametrize("prompt", ["", "   ", None])
def test_empty_prompt_is_a_coded_error(engine, prompt):
    with pytest.raises(ValidationError) as e:
        engine.validate([Job(prompt)])
    assert e.value.field == "prompt"
    assert e.value.code == ("empty_prompt" if isinstance(prompt, str) else "invalid_param")


def test_unknown_parameter_names_field():
    with pytest.raises(ValidationError) as e:
        GenParams.from_dict({"duration": 2, "tempreature": 1})
    assert e.value.field == "tempreature"


def test_missing_or_broken_model_gives_model_error(tmp_path):
    from troubadour.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no such directory"):
        load_backend(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_backend(str(tmp_path / "empty"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"model_type": "musicgen"}')
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_backend(str(tmp_path / "half"))
    with pytest.raises(ModelLoadError, match="offline"):
        load_backend("facebook/musicgen-small")


def test_long_track_continues_window_by_window_matching_transformers(backend):
    """A 1 s window and 0.4 s of continuation: 1.6 s = a window + one continuation of 0.6 s."""
    eng = Engine(backend, window_s=1.0, continuation_s=0.4)
    jobs = [job("calm piano", duration=1.6, top_k=1)]
    steps = []
    (ours,) = eng.generate(jobs, progress=lambda d, t: steps.append((d, t)))
    assert ours.codes.shape == (4, 80) and ours.audio.shape == (1, 80 * 640)
    assert steps[-1] == (eng.steps_for(1.6), eng.steps_for(1.6)) == (53 + 33, 86)
    # seamless: the streamed audio is the decode of one continuous code sequence
    assert np.abs(ours.audio - eng.decode(ours.codes)).max() < STREAM_TOLERANCE
    # the continuation equals transformers' generate() given the same 20 frames as an audio prompt
    inputs = backend.tokenizer(["calm piano"], return_tensors="pt")
    start = torch.full((4, 1), backend.decoder.config.decoder_start_token_id)
    prompt = torch.cat([start, torch.as_tensor(ours.codes[:, 30:50])], dim=1)
    ref = backend.model.generate(**inputs, decoder_input_ids=prompt, do_sample=False, guidance_scale=3.0,
                                 max_new_tokens=30 + 3)
    np.testing.assert_allclose(eng.decode(ours.codes[:, 30:80]), ref[0].numpy(), atol=1e-5)


def test_batch_with_long_and_short_rows(backend):
    eng = Engine(backend, window_s=1.0, continuation_s=0.4)
    rows = eng.generate([job(duration=2.5, seed=1), job(duration=0.5, seed=2)])
    assert [r.audio.shape[1] for r in rows] == [2.5 * 32000, 0.5 * 32000]
    solo = eng.generate([job(duration=2.5, seed=1)])[0]
    assert np.array_equal(solo.codes, rows[0].codes)


def test_ninety_second_track_by_continuation_with_the_real_window(engine):
    """30 s windows continuing from the last 10 s: 90 s = one window + three continuations of 20 s."""
    chunks = list(engine.stream([job(duration=90.0, seed=5)]))
    audio = np.concatenate([c.audio for c in chunks], axis=1)
    codes = chunks[-1].codes
    assert audio.shape == (1, 90 * 32000) and codes.shape == (4, 4500)
    assert engine.steps_for(90.0) == 1503 + 3 * (1000 + 3)
    assert np.abs(audio - engine.decode(codes)).max() < STREAM_TOLERANCE


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_cpu_precision_options_generate_and_stay_deterministic(tiny_model, precision):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # (int8: PyTorch's deprecation notes are ours to say, not three warnings)
        eng = Engine(load_backend(str(tiny_model), "cpu"), precision=precision)
    assert eng.precision == precision
    if precision == "int8":   # the fused q/k/v projection is quantized too, not only transformers' modules
        assert all("quantized" in type(m).__module__ for m in eng._qkv)
        assert eng.matmuls == "PyTorch dynamic int8"
    a = eng.generate([job(seed=4, duration=1.0)])[0]
    b = eng.generate([job(seed=4, duration=1.0)])[0]
    assert a.audio.shape == (1, 32000) and np.isfinite(a.audio).all()
    assert np.array_equal(a.codes, b.codes)


def test_unknown_precision_is_refused(tiny_model):
    with pytest.raises(ValidationError) as e:
        Engine(load_backend(str(tiny_model), "cpu"), precision="fp8")
    assert e.value.field == "precision"


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory):
    """Wide enough (256) for the engine's skinny-matmul paths; the tiny checkpoint takes F.linear."""
    from troubadour.testmodel import build_test_model

    return build_test_model(tmp_path_factory.mktemp("wide") / "m", layers=1, hidden=256, heads=4)


@pytest.fixture(scope="module")
def wide_backend(wide_path):
    return load_backend(str(wide_path), "cpu")


WIDE_PROMPTS = ["calm piano", "an epic orchestral battle theme with drums", "rain"]


@pytest.fixture(scope="module")
def wide_reference(wide_path):
    """transformers' greedy generate on the checkpoint as loaded (an Engine repacks its backend's weights)."""
    be = load_backend(str(wide_path), "cpu")
    inputs = be.tokenizer(WIDE_PROMPTS, padding=True, return_tensors="pt")
    return be.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=25 + 3)


def test_wide_checkpoint_takes_the_few_rows_layouts(wide_backend):
    eng = Engine(wide_backend)
    assert eng._skinny
    if native_kernel_expected():   # .ci/run's machines: Linux with gcc
        assert eng._gemv is not None and eng.matmuls == "native kernel"
        assert eng._attend   # decode steps' self-attention too (head size 64)
        hidden, mask = wide_backend.encode_text(["calm piano", "an epic orchestral battle theme with drums"])
        h, m = torch.cat([hidden, torch.zeros_like(hidden)]), torch.cat([mask, torch.zeros_like(mask)])
        kv, _, lengths = eng._cross_kv(h, m)   # and the text cross-attention, a length per row
        assert lengths.tolist() == mask.sum(1).tolist() + [h.shape[1]] * 2   # null rows: all (zero) keys
    else:                          # the fallback names its reason
        assert eng._gemv is None and eng.matmuls.startswith("PyTorch (")
    assert Engine(wide_backend, native_kernel=False)._gemv is None
    assert not Engine(wide_backend, native_kernel=False)._attend
    lin = torch.nn.Linear(256, 96)
    for rows in (1, 2, 3, 8, 40):   # the layouts themselves are tested in test_matmul.py
        x = torch.randn(rows, 1, 256)
        np.testing.assert_allclose(eng._lin(lin, x).detach(), lin(x).detach(), atol=1e-5)


@pytest.mark.parametrize("native_kernel", [True, False])
def test_wide_checkpoint_matches_transformers_alone_and_batched(wide_path, wide_reference, native_kernel):
    be = load_backend(str(wide_path), "cpu")   # fresh: TROUBADOUR_NATIVE=0 never packs
    eng = Engine(be, native_kernel=native_kernel)
    batched = eng.generate([job(p, top_k=1, duration=0.5) for p in WIDE_PROMPTS])          # 6 rows with CFG
    alone = [eng.generate([job(p, top_k=1, duration=0.5)])[0] for p in WIDE_PROMPTS]      # 2 rows each
    for i in range(len(WIDE_PROMPTS)):
        np.testing.assert_allclose(batched[i].audio, wide_reference[i].numpy()[:, :16000], atol=1e-4)
        np.testing.assert_allclose(alone[i].audio, wide_reference[i].numpy()[:, :16000], atol=1e-4)


def test_codec_weight_norm_is_folded_once_with_the_same_audio(tiny_model, backend):
    """load_backend computes EnCodec's normalised weights once: no parametrization left, and the same audio,
    bit for bit, as the checkpoint loaded by transformers alone."""
    from torch.nn.utils import parametrize
    from transformers import MusicgenForConditionalGeneration

    raw = MusicgenForConditionalGeneration.from_pretrained(str(tiny_model)).eval()
    assert any(parametrize.is_parametrized(m) for m in raw.audio_encoder.modules())
    assert not any(parametrize.is_parametrized(m) for m in backend.model.audio_encoder.modules())
    codes = torch.randint(0, 64, (1, 1, 4, 30))
    with torch.inference_mode():
        ref = raw.audio_encoder.decode(codes, audio_scales=[None]).audio_values
        got = backend.model.audio_encoder.decode(codes, audio_scales=[None]).audio_values
    assert torch.equal(ref, got)


def test_null_condition_rows_get_the_projection_of_zeros(engine, backend):
    hidden, mask = backend.encode_text(["calm piano", "battle drums"])
    h = torch.cat([hidden, torch.zeros_like(hidden)])
    m = torch.cat([mask, torch.zeros_like(mask)])
    with torch.inference_mode():
        kv, _, _ = engine._cross_kv(h, m)
        for (kk, vv), layer in zip(kv, engine._layers):
            att = layer.encoder_attn
            for got, mod in ((kk, att.k_proj), (vv, att.v_proj)):
                ref = mod(h).view(*h.shape[:2], got.shape[1], -1).transpose(1, 2)
                torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
