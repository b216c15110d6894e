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
    inputs = be.tokenizer(prompts, padding=True, return_tensors="pt")
    theme = tone([261.63, 329.63, 392.0])
    ours_plain = melody_engine.generate([Job(p, GenParams(duration=1.0, top_k=1)) for p in prompts])
    ours_theme = melody_engine.generate([Job(p, GenParams(duration=1.0, top_k=1), melody=theme) for p in prompts])
    ref_plain = be.model.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=53)
    feats = torch.as_tensor(np.stack([chroma_features(theme)] * 2))
    ref_theme = be.model.generate(**inputs, input_features=feats, do_sample=False, guidance_scale=3.0,
                                  max_new_tokens=53)
    for i in range(2):
        np.testing.assert_allclose(ours_plain[i].audio, ref_plain[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(ours_theme[i].audio, ref_theme[i].numpy(), atol=1e-5)


def test_melody_changes_the_music(melody_engine):
    a = melody_engine.generate([Job("calm piano", GenParams(duration=1.0, seed=3), melody=tone([261.63]))])[0]
    b = melody_engine.generate([Job("calm piano", GenParams(duration=1.0, seed=3), melody=tone([440.0]))])[0]
    assert (a.codes != b.codes).mean() > 0.1


def test_text_only_model_refuses_a_melody(engine):
    with pytest.raises(ValidationError) as e:
        engine.validate([Job("calm piano", GenParams(duration=1.0), melody=tone([440.0]))])
    assert e.value.field == "theme" and "musicgen-melody" in e.value.message
