"""Leitmotifs: a context that names a `theme` follows that context's melody (melody checkpoints only)."""

import subprocess
import sys

import pytest

from servers import PROFILES, Conn, ServerProcess, audio_of
from troubadour import protocol as P

THEMED = PROFILES + """
[contexts.town]
mood = "peaceful"
theme = "menu"
"""


@pytest.fixture(scope="module")
def melody_model(tmp_path_factory):
    from troubadour.testmodel import build_test_model

    return build_test_model(tmp_path_factory.mktemp("mel") / "m", melody=True)


def test_themed_context_follows_its_theme_on_a_melody_model(melody_model, tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(THEMED)
    srv = ServerProcess(melody_model, tmp_path, profiles).start()
    try:
        c = Conn(srv.address)
        town = c.call(P.GET_TRACK, context="town", stream=True)
        assert town[-1].type == P.END, [m.body for m in town]
        # the theme was generated (and cached) on the way
        menu = c.call(P.GET_TRACK, context="menu", stream=True)
        assert menu[0].body["cached"] is True
        # the same prompt without a theme is a different track
        plain = c.call(P.GET_TRACK, prompt=town[0].body["prompt"], params=town[0].body["params"], stream=True)
        assert plain[0].body["track_id"] != town[0].body["track_id"]
        assert audio_of(plain) != audio_of(town)
        c.close()
    finally:
        srv.stop()


def test_text_only_model_rejects_themes_when_profiles_load(tiny_model, tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(THEMED)
    r = subprocess.run([sys.executable, "-m", "troubadour.cli", "serve", "--model", str(tiny_model),
                        "--profiles", str(profiles), "--cache", str(tmp_path / "c"), "--bind", "tcp://127.0.0.1:0"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "town" in r.stderr and "theme" in r.stderr and "musicgen-melody" in r.stderr
    assert "Traceback" not in r.stderr


def test_hot_reload_adding_a_theme_on_text_model_is_a_profile_error(tiny_model, tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    srv = ServerProcess(tiny_model, tmp_path, profiles, args=["--no-watch"]).start()
    try:
        c = Conn(srv.address)
        profiles.write_text(THEMED)
        err = c.call(P.RELOAD_PROFILES)[-1].body
        assert err["code"] == "profile_error" and "town" in err["message"]
        names = {x["name"] for x in c.call(P.LIST_PROFILES)[0].body["contexts"]}
        assert "town" not in names
        c.close()
    finally:
        srv.stop()


def test_reload_sees_theme_edits_and_contexts_following_a_changed_theme(melody_model, tmp_path):
    """A context's track depends on its theme's: adding a theme, or changing the theme context, changes (and
    regenerates) the contexts that follow it, though their own fields did not change."""
    from troubadour.backends import load_backend
    from troubadour.engine import Engine
    from troubadour.server import Server

    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES + '\n[contexts.town]\nmood = "peaceful"\n')
    srv = Server(Engine(load_backend(str(melody_model), "cpu")), cache_dir=str(tmp_path / "cache"),
                 bind="tcp://127.0.0.1:0", profiles_path=profiles, watch=False)
    try:
        profiles.write_text(THEMED)
        _, changed, regenerating = srv.reload_profiles()
        assert changed == ["town"] and regenerating == 1
        profiles.write_text(THEMED.replace('mood = "happy"', 'mood = "sad"'))   # menu, the theme
        _, changed, regenerating = srv.reload_profiles()
        assert changed == ["menu", "town"] and regenerating == 2
    finally:
        srv.cache.close()
        srv.readers.shutdown()
