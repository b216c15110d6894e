"""MusicGen-Melody checkpoints: chroma conditioning through our decode loop, checked against transformers."""

import numpy as np
import pytest
import torch

from troubadour.backends import load_backend
from troubadour.chroma import chroma_features
from troubadour.engine import Engine, Job
from troubadour.errors import ValidationError
from troubadour.params import GenParams


@pytest.fixture(scope="module")
def melody_engine(tmp_path_factory):
    from troubadour.testmodel import build_test_model

    return Engine(load_backend(str(build_test_model(tmp_path_factory.mktemp("m") / "mel", melody=True)), "cpu"))


def tone(freqs, seconds=3.0, sr=32000):
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate(freqs))[None].astype(np.float32)


@pytest.mark.parametrize("freq,pitch_class", [(261.63, 0), (440.0, 9), (392.0, 7)])
def test_chroma_finds_the_pitch_class(freq, pitch_class):
    ch = chroma_features(tone([freq]))
    assert ch.shape[1] == 12 and np.all(ch.sum(axis=1) == 1)
    assert np.bincount(ch.argmax(axis=1), minlength=12).argmax() == pitch_class


def test_melody_model_matches_transformers_with_and_without_a_melody(melody_engine):
    be = melody_engine.backend
    assert melody_engine.info.melody
    prompts = ["calm piano", "epic battle drums"]
    theme = tone([261.63, 329.63, 392.0])
    ours_plain = melody_engine.generate([Job(p, GenParams(duration=1.0, top_k=1)) for p in prompts])
    ours_theme = melody_engine.generate([Job(p, GenParams(duration=1.0, top_k=1), melody=theme) for p in prompts])
    feats = torch.as_tensor(chroma_features(theme))[None]
    for i, prompt in enumerate(prompts):   # transformers one prompt at a time: padding changes its rows
        inputs = be.tokenizer([prompt], return_tensors="pt")
        ref_plain = be.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=53)
        ref_theme = be.model.generate(**inputs, input_features=feats, do_sample=False, guidance_scale=3.0,
                                      max_new_tokens=53)
        np.testing.assert_allclose(ours_plain[i].audio, ref_plain[0].numpy(), atol=1e-5)
        np.testing.assert_allclose(ours_theme[i].audio, ref_theme[0].numpy(), atol=1e-5)


def test_melody_tracks_do_not_depend_on_their_batch(melody_engine):
    """The text is part of a melody model's decoder sequence, padded to the batch's longest prompt: batched
    with a longer prompt a track changed (85-97 % of its codes, greedy too). Rows of other lengths run apart."""
    be = melody_engine.backend
    prompts = ["calm piano", "epic battle drums with a choir and brass, fast", "calm piano", "sad strings"]
    assert len(set(be.text_lengths(prompts))) == 3
    theme = tone([261.63, 329.63, 392.0])
    jobs = [Job(p, GenParams(duration=0.6, seed=i), melody=theme if i % 2 else None) for i, p in enumerate(prompts)]
    ticks = []
    batched = melody_engine.generate(jobs, progress=lambda d, t: ticks.append((d, t)))
    for job, got in zip(jobs, batched):
        np.testing.assert_array_equal(got.audio, melody_engine.generate([job])[0].audio)
    total = 3 * melody_engine.steps_for(0.6)   # three groups, one after the other
    assert [d for d, _ in ticks] == list(range(1, total + 1)) and {t for _, t in ticks} == {total}
    assert melody_engine.batch_groups(prompts) == [[0, 2], [1], [3]]


def test_melody_changes_the_music(melody_engine):
    a = melody_engine.generate([Job("calm piano", GenParams(duration=1.0, seed=3), melody=tone([261.63]))])[0]
    b = melody_engine.generate([Job("calm piano", GenParams(duration=1.0, seed=3), melody=tone([440.0]))])[0]
    assert (a.codes != b.codes).mean() > 0.1


def test_text_only_model_refuses_a_melody(engine):
    with pytest.raises(ValidationError) as e:
        engine.validate([Job("calm piano", GenParams(duration=1.0), melody=tone([440.0]))])
    assert e.value.field == "theme" and "musicgen-melody" in e.value.message
