"""Tests for troubadour.profiles: profile files, contexts and their errors."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from troubadour.errors import ProfileError, TroubadourError, ValidationError
from troubadour.params import GenParams
from troubadour.profiles import Context, Profiles, default_profiles_path, load_profiles, parse_profiles
from troubadour.prompts import presets

BUNDLED_CONTEXTS = {"main_menu", "exploration", "battle", "boss", "victory", "game_over", "sad_moment"}


def write(tmp_path: Path, text: str, name: str = "game.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> Profiles:
    return load_profiles(write(tmp_path, text))


def profile_error(tmp_path: Path, text: str) -> ProfileError:
    with pytest.raises(ProfileError) as info:
        load_text(tmp_path, text)
    return info.value


# ---------------------------------------------------------------- bundled profiles

def test_bundled_profiles_load():
    prof = load_profiles()
    assert set(prof.names()) == BUNDLED_CONTEXTS
    assert prof.game["title"] and prof.game["genre"]
    assert prof.path == default_profiles_path() and prof.path.is_file()
    for name in BUNDLED_CONTEXTS:
        ctx = prof.get(name, strict=True)
        assert ctx.params.validate() is ctx.params
        assert 0 < ctx.params.duration <= 15
        assert ctx.prompt.strip() and not ctx.fallback
    for name in ("victory", "game_over"):
        assert not prof.contexts[name].loop
        assert 4 <= prof.contexts[name].params.duration <= 6
    for name in BUNDLED_CONTEXTS - {"victory", "game_over"}:
        assert prof.contexts[name].loop and prof.contexts[name].bpm
    # the default model (musicgen-small) is text-only, so the bundled set must not need a melody model
    assert not any(c.theme for c in prof.contexts.values())


def test_bundled_text_parses_the_same_via_parse_profiles():
    text = default_profiles_path().read_text(encoding="utf-8")
    prof = parse_profiles(text, "bundled")
    assert prof.contexts == load_profiles().contexts


# ---------------------------------------------------------------- contexts and precedence

GAME = """
[game]
title = "Test"
genre = "ambient"
"""


def test_precedence_of_param_sources(tmp_path):
    prof = load_text(tmp_path, GAME + """
[defaults]
duration = 8
temperature = 1.5
top_k = 111
top_p = 0.3
cfg_coef = 2.0
seed = 5

[contexts.plain]
mood = "wistful"

[contexts.moody]
mood = "sad"

[contexts.fixed]
mood = "sad"
fix = "repetitive"

[contexts.explicit]
mood = "sad"
fix = "repetitive"
temperature = 0.5
cfg = 7
""")
    plain = prof.contexts["plain"].params
    # [defaults] beats built-ins; ambient genre (from [game]) beats [defaults] for what it sets.
    # the ambient genre brings a bpm, so the 8 s default rounds to whole bars (2 bars of 4/4)
    bpm = prof.contexts["plain"].bpm
    assert plain.duration == pytest.approx(2 * 4 * 60 / bpm)
    assert (plain.top_k, plain.top_p, plain.seed) == (111, 0.3, 5)
    assert (plain.temperature, plain.cfg_coef) == (0.9, 3.0)
    assert prof.contexts["moody"].params.temperature == 0.8  # mood beats genre
    fixed = prof.contexts["fixed"].params
    assert fixed.temperature == 1.0 and fixed.top_k == 211  # fix deltas on top
    explicit = prof.contexts["explicit"].params
    assert explicit.temperature == 0.5 and explicit.cfg_coef == 7.0  # context wins, cfg alias works
    assert explicit.top_k == 211


def test_context_genre_overrides_game_genre(tmp_path):
    prof = load_text(tmp_path, GAME + """
[contexts.a]
mood = "calm"
[contexts.b]
genre = "chiptune"
""")
    assert prof.contexts["a"].prompt.startswith("An atmospheric ambient piece")
    assert prof.contexts["a"].bpm == 70.0  # ambient default bpm
    assert "chiptune" in prof.contexts["b"].prompt and "ambient" not in prof.contexts["b"].prompt
    assert prof.contexts["b"].params.top_k == 150


def test_raw_prompt_used_verbatim_and_defaults(tmp_path):
    prof = load_text(tmp_path, GAME + """
[contexts.custom]
prompt = "  Solo cello, slow and sad  "
bpm = 60
""")
    ctx = prof.contexts["custom"]
    assert ctx.prompt == "Solo cello, slow and sad"
    # a raw prompt takes no genre/mood preset params; its 10 s default rounds to 3 bars of 60 bpm 4/4
    assert ctx.params == dataclasses.replace(GenParams(), duration=12.0)
    assert (ctx.variants, ctx.loop, ctx.bpm, ctx.meter, ctx.key, ctx.theme, ctx.loudness) == \
        (1, True, 60.0, "4/4", None, None, -16.0)
    assert ctx.source_fields == {"prompt": "  Solo cello, slow and sad  ", "bpm": 60}


def test_all_context_fields_parsed(tmp_path):
    prof = load_text(tmp_path, GAME + """
[contexts.town]
genre = "folk"
mood = "happy"
instruments = ["fiddle"]
tempo = "lively"
bpm = 112
key = "G major"
structure = "a dance"
extra = "festival"
variants = 3
loop = false
meter = "6/8"
theme = "field"
loudness = -18
duration = 9

[contexts.field]
prompt = "birdsong"
""")
    ctx = prof.contexts["town"]
    assert ctx.prompt == ("An acoustic folk piece in G major with fiddle featuring "
                          + presets()["moods"]["happy"]["words"]
                          + " and lively tempo at 112 BPM. The music has a dance. Festival.")
    assert (ctx.variants, ctx.loop, ctx.bpm, ctx.meter, ctx.key, ctx.theme, ctx.loudness) == \
        (3, False, 112.0, "6/8", "G major", "field", -18.0)
    # 9 s at 112 bpm 6/8 (bars of 6 eighths = 3.21 s) rounds to 3 bars
    assert ctx.params.duration == pytest.approx(3 * 6 * 60 / 112) and isinstance(ctx.params.duration, float)


# ---------------------------------------------------------------- seeds and audio keys

def make_ctx(**kw) -> Context:
    base = dict(name="x", prompt="p", params=GenParams(seed=10), variants=3)
    return Context(**{**base, **kw})


def test_seed_for_and_params_for():
    ctx = make_ctx()
    assert [ctx.seed_for(v) for v in range(3)] == [10, 11, 12]
    assert ctx.params_for(2) == GenParams(seed=12)
    for bad in (-1, 3, 1.0, True, "1"):
        with pytest.raises(ValidationError) as info:
            ctx.seed_for(bad)
        assert info.value.field == "variant"


def test_audio_key_tracks_audio_fields_not_variants():
    ctx = make_ctx()
    key = ctx.audio_key()
    assert make_ctx(variants=7).audio_key() == key
    changed = [make_ctx(prompt="q"), make_ctx(params=GenParams(seed=10, temperature=0.9)),
               make_ctx(loop=False), make_ctx(bpm=90.0), make_ctx(meter="3/4"), make_ctx(loudness=-14.0),
               make_ctx(params=GenParams(seed=11))]
    for other in changed:
        assert other.audio_key() != key


def test_audio_key_changes_when_profile_file_changes(tmp_path):
    one = load_text(tmp_path, GAME + "[contexts.a]\nmood = 'sad'\nvariants = 1\n").contexts["a"]
    two = load_text(tmp_path, GAME + "[contexts.a]\nmood = 'sad'\nvariants = 4\n").contexts["a"]
    three = load_text(tmp_path, GAME + "[contexts.a]\nmood = 'dark'\nvariants = 1\n").contexts["a"]
    assert one.audio_key() == two.audio_key()
    assert one.audio_key() != three.audio_key()
    assert one.source_fields != two.source_fields


# ---------------------------------------------------------------- lookup and fallback

def test_fallback_for_unknown_context(tmp_path):
    prof = load_text(tmp_path, GAME + "[defaults]\nseed = 9\nduration = 7\n[contexts.a]\nmood = 'sad'\n")
    ctx = prof.get("ice_cave")
    assert ctx.fallback and ctx.name == "ice_cave"
    assert "ice cave" in ctx.prompt and "ambient" in ctx.prompt
    assert ctx.prompt == "An atmospheric ambient piece for an ice cave scene in a video game."
    assert (ctx.variants, ctx.loop) == (1, True)
    assert ctx.params.seed == 9 and ctx.params.duration == 7.0
    assert not prof.get("a").fallback


def test_fallback_notice_once_per_name_with_the_closest_context(tmp_path):
    prof = load_text(tmp_path, GAME + "[contexts.battle]\nmood = 'tense'\n")
    assert prof.fallback_notice("batle") == ("context 'batle' is not in the profiles (did you mean 'battle'?): "
                                             "playing fallback music in the game's style")
    assert prof.fallback_notice("batle") is None
    assert "did you mean" not in prof.fallback_notice("zzz")
    notes = [prof.fallback_notice(f"made_up_{i}") for i in range(200)]
    assert sum(n is not None for n in notes) == 99 and notes[98] == "more unknown contexts asked for; no longer listed"
    assert load_text(tmp_path, GAME + "[contexts.battle]\nmood = 'tense'\n").fallback_notice("batle")   # per load


def test_fallback_without_game_genre(tmp_path):
    prof = load_text(tmp_path, "[contexts.a]\nprompt = 'x'\n")
    assert prof.get("dark-forest").prompt == "Music for a dark forest scene in a video game."


def test_context_names_differing_only_in_case_are_refused(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_text(tmp_path, GAME + "[contexts.Battle]\nmood = 'tense'\n[contexts.battle]\nmood = 'epic'\n")
    assert info.value.field == "contexts.battle" and "'Battle' only in case" in info.value.message


def test_deeply_nested_toml_is_a_profile_error(tmp_path):
    with pytest.raises(ProfileError, match="nested too deeply"):
        load_text(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")


def test_strict_unknown_context(tmp_path):
    prof = load_text(tmp_path, GAME + "[contexts.battle]\nmood = 'tense'\n")
    with pytest.raises(TroubadourError) as info:
        prof.get("batle", strict=True)
    assert info.value.code == "unknown_context" and info.value.field == "context"
    assert "battle" in info.value.message  # suggestion


@pytest.mark.parametrize("name", ["../x", "", "a b", "x" * 65, "a/b", None, "caf\u00e9", "battle\n"])
def test_invalid_names_rejected_by_get(name):
    prof = load_profiles()
    with pytest.raises(ValidationError) as info:
        prof.get(name)
    assert info.value.code == "invalid_param" and info.value.field == "context"


# ---------------------------------------------------------------- errors

def assert_names(err: ProfileError, path: Path, context: str | None, field: str | None, dotted: str | None):
    msg = err.message
    assert msg.startswith(str(path) + ":"), msg
    if context:
        assert f"context '{context}'" in msg, msg
    if field:
        assert f"field '{field}'" in msg, msg
    assert err.field == dotted
    assert err.code == "profile_error"


TEMPERATURE_RANGE = "must be in [0.001, 100] (for the likeliest codes use top_k = 1)"


def test_error_message_format(tmp_path):
    path = write(tmp_path, "[contexts.battle]\nmood = 'tense'\ntemperature = 0\n", name="profiles.toml")
    with pytest.raises(ProfileError) as info:
        load_profiles(path)
    assert info.value.message == f"{path}: context 'battle': field 'temperature': {TEMPERATURE_RANGE}, got 0"
    assert info.value.field == "contexts.battle.temperature"
    parse = pytest.raises(ProfileError, parse_profiles, "[contexts.battle]\nmood='x'\ntemperature=0\n",
                          "profiles.toml")
    assert parse.value.message == f"profiles.toml: context 'battle': field 'temperature': {TEMPERATURE_RANGE}, got 0"


def test_toml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "[game]\ntitle = 'ok'\n\n[contexts.a]\nmood = \n")
    with pytest.raises(ProfileError) as info:
        load_profiles(path)
    assert str(path) in info.value.message and "invalid TOML" in info.value.message
    assert re.search(r"line 5", info.value.message)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_bytes(b"[contexts.a]\nmood = '\xff\xfe'\n")
    with pytest.raises(ProfileError) as info:
        load_profiles(path)
    msg = info.value.message
    assert str(path) in msg and "UTF-8" in msg and "line 2" in msg


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path / "nope.toml")
    assert "nope.toml" in info.value.message and "not found" in info.value.message
    with pytest.raises(ProfileError) as info:
        load_profiles(tmp_path)  # a directory
    assert str(tmp_path) in info.value.message and "cannot read" in info.value.message


def test_unknown_context_key_with_suggestion(tmp_path):
    err = profile_error(tmp_path, GAME + "[contexts.battle]\nmood = 'tense'\ntemprature = 1.2\n")
    assert_names(err, tmp_path / "game.toml", "battle", "temprature", "contexts.battle.temprature")
    assert "did you mean 'temperature'" in err.message


def test_unknown_top_level_game_and_defaults_keys(tmp_path):
    err = profile_error(tmp_path, "[gmae]\ntitle = 'x'\n")
    assert_names(err, tmp_path / "game.toml", None, "gmae", "gmae")
    assert "did you mean 'game'" in err.message
    err = profile_error(tmp_path, "[game]\ntitel = 'x'\n")
    assert_names(err, tmp_path / "game.toml", None, "titel", "game.titel")
    err = profile_error(tmp_path, "[defaults]\nprompt = 'x'\n")
    assert_names(err, tmp_path / "game.toml", None, "prompt", "defaults.prompt")


@pytest.mark.parametrize("body, field, words", [
    ("temperature = 'hot'", "temperature", "number"),
    ("top_k = 2.5", "top_k", "integer"),
    ("seed = -1", "seed", "seed"),
    ("duration = 400", "duration", "duration"),
    ("top_p = 1.5", "top_p", "[0, 1]"),
    ("cfg_coef = 0.5", "cfg_coef", "in [1, 100]"),
    ("cfg = 0.5", "cfg", "in [1, 100]"),
    ("cfg = 3\ncfg_coef = 3", "cfg", "not both"),
    ("variants = 0", "variants", "[1, 16]"),
    ("variants = 17", "variants", "[1, 16]"),
    ("variants = true", "variants", "integer"),
    ("loop = 'yes'", "loop", "true or false"),
    ("bpm = 10", "bpm", "[20, 300]"),
    ("bpm = '120'", "bpm", "number"),
    ("loudness = -3", "loudness", "[-40, -5]"),
    ("meter = 'waltz'", "meter", "4/4"),
    ("mood = 3", "mood", "string"),
    ("genre = ''", "genre", "empty"),
    ("instruments = ['a', 2]", "instruments", "list"),
    ("instruments = 5", "instruments", "string"),
    ("fix = 'repetative'", "fix", "did you mean 'repetitive'"),
    ("theme = 'nowhere'", "theme", "no context"),
    ("theme = 'battle'", "theme", "itself"),
    ("theme = '../up'", "theme", "invalid"),
    ("prompt = 'x'\nmood = 'sad'", "prompt", "mood"),
    ("prompt = 'x' \nextra = 'y'", "prompt", "extra"),
    ("prompt = '" + "x" * 2001 + "'", "prompt", "2000"),
])
def test_context_field_errors(tmp_path, body, field, words):
    err = profile_error(tmp_path, GAME + "[contexts.battle]\n" + (body if "prompt" in body else
                                                                   "structure = 'a loop'\n" + body) + "\n")
    assert_names(err, tmp_path / "game.toml", "battle", field, f"contexts.battle.{field}")
    assert words in err.message


def test_defaults_errors_name_defaults(tmp_path):
    err = profile_error(tmp_path, "[defaults]\ntemperature = -1\n")
    assert_names(err, tmp_path / "game.toml", None, "temperature", "defaults.temperature")
    assert "[defaults]" in err.message
    err = profile_error(tmp_path, "[defaults]\nloudness = 0\n")
    assert_names(err, tmp_path / "game.toml", None, "loudness", "defaults.loudness")


def test_context_with_nothing_to_compose(tmp_path):
    err = profile_error(tmp_path, "[contexts.empty]\nduration = 5\n")
    assert_names(err, tmp_path / "game.toml", "empty", "prompt", "contexts.empty.prompt")


@pytest.mark.parametrize("name", ["../x", "a b", "x" * 65, "a.b"])
def test_invalid_context_names_in_file(tmp_path, name):
    err = profile_error(tmp_path, f'[contexts."{name}"]\nprompt = "x"\n')
    assert_names(err, tmp_path / "game.toml", name, None, f"contexts.{name}")
    assert "invalid context name" in err.message


def test_wrong_table_types(tmp_path):
    err = profile_error(tmp_path, "contexts = 3\n")
    assert_names(err, tmp_path / "game.toml", None, "contexts", "contexts")
    err = profile_error(tmp_path, "[contexts]\nbattle = 'loud'\n")
    assert_names(err, tmp_path / "game.toml", "battle", None, "contexts.battle")
    assert "table" in err.message


def test_free_text_mood_and_genre_allowed(tmp_path):
    prof = load_text(tmp_path, "[contexts.a]\ngenre = 'dreamy shoegaze'\nmood = 'hazy nostalgia'\n")
    assert prof.contexts["a"].prompt == "A dreamy shoegaze piece featuring hazy nostalgia."
    assert prof.contexts["a"].params == GenParams()


@pytest.mark.parametrize("bpm,meter,duration,expected", [
    (120, "4/4", 9.0, 10.0), (120, "3/4", 9.0, 9.0), (90, "4/4", 12.0, 40 / 3), (140, "6/8", 2.0, 18 / 7),
])
def test_durations_round_to_whole_bars_when_bpm_is_known(tmp_path, bpm, meter, duration, expected):
    prof = load_text(tmp_path, GAME + f"""
[contexts.x]
prompt = "music"
bpm = {bpm}
meter = "{meter}"
duration = {duration}
""")
    ctx = prof.contexts["x"]
    assert ctx.params.duration == pytest.approx(expected)
    bar = int(meter.split("/")[0]) * 60 / bpm
    assert (ctx.params.duration / bar) == pytest.approx(round(ctx.params.duration / bar))


def test_a_file_without_contexts_is_refused_everywhere(tmp_path):
    """Refused by hot-swap (an editor half-way through a save) but a server started with it served 0 contexts
    and a bake of it made 0 tracks with exit code 0: the loader refuses it for all of them."""
    for text in ("", "[game]\ntitle = 'x'\n", "[defaults]\nduration = 5\n"):
        path = write(tmp_path, text, name="profiles.toml")
        with pytest.raises(ProfileError, match="no contexts: add at least one") as e:
            load_profiles(path)
        assert e.value.field == "contexts"


def test_a_byte_order_mark_is_not_a_syntax_error(tmp_path):
    """Notepad saves UTF-8 with a BOM; TOML parsers call it an invalid statement at line 1."""
    path = tmp_path / "profiles.toml"
    path.write_bytes("\ufeff[contexts.battle]\nmood = 'tense'\n".encode("utf-8"))
    assert list(load_profiles(path).contexts) == ["battle"]


def test_a_theme_naming_its_own_context_is_explained():
    """It said "'explore' cannot name the context itself (did you mean 'explore'?)"."""
    with pytest.raises(ProfileError) as e:
        parse_profiles("[contexts.explore]\nmood = 'calm'\ntheme = 'explore'\n", "p.toml")
    assert "cannot name the context itself (a theme is another context" in e.value.message
    assert "did you mean" not in e.value.message and e.value.field == "contexts.explore.theme"



def test_a_genre_or_mood_one_letter_off_a_preset_is_noted(tmp_path, cli_env):
    """`mood = "heroik"` loaded as free words and silently lost the preset's settings: the profiles keep a note
    (shown by serve, bake, generate and a hot-swap's log); multi-word free text and presets are not noted."""
    import subprocess

    from conftest import troubadour_cmd

    text = ("[game]\ngenre = 'orchestrl'\n[contexts.battle]\nmood = 'heroik'\n"
            "[contexts.calm]\nmood = 'heroic'\ngenre = 'lofi'\n[contexts.odd]\nmood = 'misty and strange'\n")
    profiles = parse_profiles(text, "p.toml")
    assert profiles.notes == [
        "p.toml: [game]: genre 'orchestrl' is not a preset, so it is only words in the prompt (did you mean "
        "'orchestral'?)",
        "p.toml: context 'battle': mood 'heroik' is not a preset, so it is only words in the prompt (did you mean "
        "'heroic'?)"]
    path = write(tmp_path, text, name="profiles.toml")
    r = subprocess.run(troubadour_cmd() + ["generate", "--context", "battle", "--profiles", str(path), "--model",
                                          str(tmp_path / "no-model")], env=cli_env, capture_output=True,
                       text=True, timeout=120)
    assert "warning: " + profiles.notes[1].replace("p.toml", str(path)) in r.stderr, r.stderr
