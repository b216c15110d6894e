"""Tests for troubadour.prompts: prompt composition and presets."""

from __future__ import annotations

import pytest

from troubadour.errors import ValidationError
from troubadour.params import GenParams
from troubadour.prompts import apply_presets, compose_prompt, find_preset, presets


# ---------------------------------------------------------------- composition

def test_compose_full_template_with_free_text():
    prompt = compose_prompt(genre="dreamy shoegaze", mood="wistful", instruments=["guitar", "bass", "drums"],
                            tempo="slow", bpm=120, key="D minor", structure="a slow build", extra="no vocals")
    assert prompt == ("A dreamy shoegaze piece in D minor with guitar, bass and drums featuring wistful "
                      "and slow tempo at 120 BPM. The music has a slow build. No vocals.")


def test_compose_omits_missing_parts():
    prompt = compose_prompt(genre="dreamy shoegaze", mood="wistful")
    assert prompt == "A dreamy shoegaze piece featuring wistful."
    assert " with " not in prompt and "BPM" not in prompt and "The music has" not in prompt
    assert compose_prompt(genre="dreamy shoegaze") == "A dreamy shoegaze piece."
    assert compose_prompt(structure="an intro and outro") == "The music has an intro and outro."
    assert compose_prompt() == ""


def test_compose_bpm_without_tempo_words_and_string_instruments():
    prompt = compose_prompt(genre="techno", instruments="a 909 drum machine", bpm=132.0)
    assert prompt == "A techno piece with a 909 drum machine featuring a tempo of 132 BPM."


def test_compose_key_already_with_in_and_extra_punctuation_kept():
    prompt = compose_prompt(genre="blues", key="in E major", extra="Gritty!")
    assert prompt == "A blues piece in E major. Gritty!"


def test_compose_expands_mood_and_genre_presets():
    tense = presets()["moods"]["tense"]["words"]
    orchestral = presets()["genres"]["orchestral"]
    prompt = compose_prompt(genre="orchestral", mood="tense")
    assert "epic orchestral" in orchestral["words"]
    assert prompt.startswith(f"An {orchestral['words']} piece")
    assert tense in prompt
    # Genre preset supplies default instruments when none are given ...
    assert "with " + orchestral["instruments"][0] in prompt
    # ... but explicit instruments win, and an empty list means none.
    assert "timpani" not in compose_prompt(genre="orchestral", instruments=["kazoo"])
    assert " with " not in compose_prompt(genre="orchestral", instruments=[])


def test_compose_preset_lookup_ignores_case_and_separators():
    assert compose_prompt(genre="Lo-Fi") == compose_prompt(genre="lofi")
    assert "lo-fi hip hop" in compose_prompt(genre="LoFi")


def test_compose_fix_words_appended():
    words = presets()["fixes"]["repetitive"]["words"]
    assert compose_prompt(genre="jazz", fix="repetitive").endswith(words)


def test_bundled_presets_have_required_names():
    p = presets()
    for mood in ["uplifting", "tense", "sad", "mysterious", "peaceful", "happy", "epic", "dark",
                 "melancholic", "playful", "heroic", "romantic"]:
        assert p["moods"][mood]["words"].strip()
    for genre in ["orchestral", "cinematic", "electronic", "edm", "jazz", "ambient", "chiptune", "rock",
                  "lofi", "folk", "synthwave", "piano"]:
        assert p["genres"][genre]["words"].strip()
    for fix in ["repetitive", "chaotic", "bland", "too_quiet"]:
        assert fix in p["fixes"]


def test_every_preset_yields_valid_params_from_extreme_bases():
    p = presets()
    for base in (GenParams().to_dict(), {**GenParams().to_dict(), "temperature": 0.1, "cfg_coef": 1.0,
                                         "top_k": 10}):
        for g in p["genres"]:
            for m in p["moods"]:
                for f in p["fixes"]:
                    GenParams(**apply_presets(base, genre=g, mood=m, fix=f)).validate()


# ---------------------------------------------------------------- presets on params

def test_mood_sad_lowers_temperature():
    base = GenParams().to_dict()
    assert apply_presets(base, mood="sad")["temperature"] < apply_presets(base)["temperature"]
    assert apply_presets(base)["temperature"] == base["temperature"]


def test_free_text_mood_and_genre_change_nothing():
    base = GenParams().to_dict()
    assert apply_presets(base, genre="dreamy shoegaze", mood="wistful") == base


def test_genre_then_mood_then_fix_order():
    base = GenParams().to_dict()
    ambient = apply_presets(base, genre="ambient")
    assert ambient["temperature"] == 0.9
    # Mood overrides genre for the same parameter.
    assert apply_presets(base, genre="ambient", mood="sad")["temperature"] == 0.8
    # Fix deltas apply last, on top of the mood value.
    assert apply_presets(base, genre="ambient", mood="sad", fix="repetitive")["temperature"] == 1.0


def test_fix_repetitive_raises_temperature_and_top_k():
    base = GenParams().to_dict()
    out = apply_presets(base, fix="repetitive")
    assert out["temperature"] > base["temperature"]
    assert out["top_k"] > base["top_k"]
    assert isinstance(out["top_k"], int)


def test_fix_chaotic_lowers_temperature_raises_cfg():
    base = GenParams().to_dict()
    out = apply_presets(base, fix="chaotic")
    assert out["temperature"] < base["temperature"]
    assert out["cfg_coef"] > base["cfg_coef"]


def test_fix_clamps_to_valid_range():
    out = apply_presets({"temperature": 0.1}, fix="chaotic")
    assert out["temperature"] > 0
    assert out["cfg_coef"] == GenParams().cfg_coef + 1.0  # missing key started from the default


def test_unknown_fix_in_apply_presets():
    with pytest.raises(ValidationError) as info:
        apply_presets({}, fix="repetative")
    assert info.value.field == "fix"
    assert "repetitive" in info.value.message  # suggestion


def test_find_preset():
    assert find_preset("genres", "Synth Wave") is presets()["genres"]["synthwave"]
    assert find_preset("moods", "nope") is None
    assert find_preset("moods", None) is None
