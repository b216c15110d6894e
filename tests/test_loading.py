"""The server while its model loads (PROTOCOL.md, health `loading`): it answers at once; with the model's
config at hand it serves cached tracks and queues generations for the engine, without it track requests wait
for the model; a model that fails to load fails what waits and ends the server with the loader's error."""

import subprocess
import sys
import threading
import time

import pytest

from servers import PROFILES, Conn, LoadingServer, free_port
from troubadour import protocol as P
from troubadour.backends import describe_model
from troubadour.errors import ModelLoadError, TroubadourError


@pytest.fixture
def loading(engine, tiny_model, tmp_path):
    """(server, gate, outcome, ready, result, thread) of a LoadingServer (tests/servers.py)."""
    srv = LoadingServer(engine, tiny_model, tmp_path, PROFILES, watch=True)
    yield srv.server, srv.gate, srv.outcome, srv.ready, srv.result, srv.thread
    srv.stop()


@pytest.fixture
def loading_unknown(engine, tiny_model, tmp_path):
    """The same with only the model's name known while it loads (a hub model not in the local cache)."""
    srv = LoadingServer(engine, tiny_model, tmp_path, PROFILES, watch=True, config=False)
    yield srv.server, srv.gate, srv.outcome, srv.ready, srv.result, srv.thread
    srv.stop()


def track(conn, prompt):
    return conn.send(P.GET_TRACK, prompt=prompt, stream=True, params={"duration": 0.5, "seed": 3})


def test_while_loading_cached_tracks_play_and_new_ones_queue_for_the_model(engine, tiny_model, tmp_path):
    first = LoadingServer(engine, tiny_model, tmp_path, PROFILES)
    first.release()
    c = Conn(first.server.bound)
    made = c.call(P.GET_TRACK, context="menu", variant=0, stream=True)   # generated and cached
    assert made[0].body["cached"] is False and made[-1].type == P.END
    c.close()
    first.stop()

    srv = LoadingServer(engine, tiny_model, tmp_path, PROFILES)   # a restart, same cache; the model loads
    try:
        c = Conn(srv.server.bound)
        health = c.call(P.HEALTH)[0].body
        assert health["status"] == "loading" and health["generated"] == 0
        info = c.call(P.INFO)[0].body
        # what the server says of the model before loading it is what the loaded model says
        assert info["model"] == {"id": str(tiny_model), "identity": engine.info.identity, "device": "cpu",
                                 "sample_rate": engine.info.sample_rate, "channels": engine.info.channels}
        status = subprocess.run([sys.executable, "-m", "troubadour.cli", "status", "--server", srv.server.bound],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and "status    loading (loading the model" in status.stdout, status
        assert f"{engine.info.sample_rate} Hz, mono" in status.stdout, status.stdout

        again = c.call(P.GET_TRACK, context="menu", variant=0, stream=True)   # cached: served while loading
        assert again[0].body["cached"] is True and again[-1].type == P.END
        assert again[-1].body["sha256"] == made[-1].body["sha256"]
        assert again[0].body["track_id"] == made[0].body["track_id"]
        assert not srv.ready.is_set()

        wanted, dropped = track(c, "calm piano while loading"), track(c, "a track cancelled while loading")
        cancel = c.call(P.CANCEL, target=dropped)
        assert cancel[-1].body["found"] is True
        assert c.until_final(dropped)[-1].body["code"] == "cancelled"
        early = c.arriving(0.7, lambda m: m.id == wanted)   # queued for the engine: no audio before it exists
        assert [m.type for m in early] in ([], [P.TRACK]) and (not early or early[0].body["cached"] is False)
        assert c.call(P.HEALTH)[0].body["queue"] == 1

        srv.release()
        msgs = early + c.until_final(wanted)
        assert msgs[0].type == P.TRACK and msgs[-1].type == P.END
        assert sum(len(m.payload) for m in msgs if m.type == P.CHUNK) > 0
        assert srv.ready.wait(10)
        health = c.call(P.HEALTH)[0].body
        assert health["status"] == "ok" and health["generated"] == 1   # the cancelled request was never generated
        c.close()
    finally:
        srv.stop()


def test_without_the_config_track_requests_wait_for_the_model(loading_unknown, tiny_model):
    server, gate, _, ready, _, _ = loading_unknown
    c = Conn(server.bound)
    assert c.call(P.HEALTH)[0].body["status"] == "loading"
    assert set(c.call(P.INFO)[0].body["model"]) == {"id", "identity", "device"}   # no rate known yet
    assert {row["name"] for row in c.call(P.LIST_PROFILES)[0].body["contexts"]} >= {"battle", "menu"}
    wanted, dropped = track(c, "calm piano while loading"), track(c, "a track cancelled while loading")
    cancel = c.call(P.CANCEL, target=dropped)
    assert cancel[-1].body["found"] is True
    assert c.until_final(dropped)[-1].body["code"] == "cancelled"
    with pytest.raises(TimeoutError):   # held: nothing for it until the model is ready
        c.recv(timeout=0.5)
    assert not ready.is_set()

    gate.set()
    msgs = c.until_final(wanted)
    assert [m.type for m in msgs][0] == P.TRACK and msgs[-1].type == P.END
    assert msgs[0].body["cached"] is False and sum(len(m.payload) for m in msgs if m.type == P.CHUNK) > 0
    assert ready.is_set()
    health = c.call(P.HEALTH)[0].body
    assert health["status"] == "ok" and health["generated"] == 1   # the cancelled request was never generated
    assert c.call(P.INFO)[0].body["model"]["sample_rate"] > 0
    c.close()


def test_requests_waiting_for_the_model_are_capped_across_connections(loading_unknown):
    """Each connection may hold 32 open requests, but connections are not limited: while nothing can answer
    track requests the server keeps at most `max_held` of them, answers the rest `busy` (retryable), and a
    cancelled one frees its place."""
    server, gate, _, ready, _, _ = loading_unknown
    server.max_held = 3
    a, b = Conn(server.bound), Conn(server.bound)
    first, second, third = track(a, "one"), track(a, "two"), track(b, "three")
    deadline = time.time() + 10   # two connections: nothing orders a's requests before b's fourth
    while len(server.held) < 3 and time.time() < deadline:
        time.sleep(0.01)
    refused = b.until_final(track(b, "four"))[-1]
    assert refused.type == P.ERROR and refused.body["code"] == "busy", refused.body
    assert "still loading" in refused.body["message"]
    assert a.call(P.CANCEL, target=second)[-1].body["found"] is True
    assert a.until_final(second)[-1].body["code"] == "cancelled"
    fifth = track(b, "five")   # the cancelled request's place (the cancel was answered: it is out)
    with pytest.raises(TimeoutError):
        b.recv(timeout=0.5)
    gate.set()
    for conn, rid in ((a, first), (b, third), (b, fifth)):
        assert conn.until_final(rid)[-1].type == P.END
    assert ready.is_set()
    a.close()
    b.close()


def test_a_model_that_does_not_load_fails_held_requests_and_ends_the_server(loading):
    server, gate, outcome, ready, result, thread = loading
    outcome[0] = ModelLoadError("model 'x' could not be loaded (weights truncated)", field="model")
    c = Conn(server.bound)
    held = track(c, "calm piano")
    assert c.call(P.PING)[0].type == P.PONG   # answered while the track waits
    gate.set()
    error = c.until_final(held)[-1]
    assert error.type == P.ERROR and error.body["code"] == "engine_dead"
    assert "did not load" in error.body["message"] and "weights truncated" in error.body["message"]
    thread.join(15)
    assert not thread.is_alive() and isinstance(result.get("raised"), ModelLoadError) and not ready.is_set()
    c.close()


def test_profiles_edited_while_loading_without_the_config_are_loaded_once_ready(loading_unknown):
    server, gate, _, ready, _, _ = loading_unknown
    c = Conn(server.bound)
    sub = c.call(P.SUBSCRIBE, events=["profiles_changed"])
    assert sub[-1].type == P.SUBSCRIBED
    server.profiles_path.write_text(PROFILES + '\n[contexts.credits]\nprompt = "gentle end credits with harp"\n')
    deadline = time.time() + 10
    while (None, None) not in server.held and time.time() < deadline:   # the watcher saw it: kept for later
        time.sleep(0.05)
    assert (None, None) in server.held
    names = lambda: {row["name"] for row in c.call(P.LIST_PROFILES)[0].body["contexts"]}  # noqa: E731
    assert "credits" not in names()
    gate.set()
    events = c.events(5)
    assert any(e.body["event"] == "profiles_changed" and "credits" in e.body["contexts"] for e in events), events
    assert "credits" in names()
    c.close()


def test_serve_listens_before_the_model_is_ready_and_refuses_a_bad_model_up_front(tiny_model, tmp_path, cli_env):
    bad = subprocess.run([sys.executable, "-m", "troubadour.cli", "serve", "--model", str(tmp_path / "missing"),
                          "--cache", str(tmp_path / "c"), "--bind", f"tcp://127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, env=cli_env, timeout=120)
    assert bad.returncode == 3 and "no such directory" in bad.stderr and "listening on" not in bad.stderr
    from servers import ServerProcess
    (tmp_path / "w").mkdir()
    srv = ServerProcess(tiny_model, tmp_path / "w", args=["--no-watch", "--device", "cpu"]).start()
    try:
        lines = "".join(srv.lines)
        assert lines.index("listening on") < lines.index("loading model") < lines.index(" ready on ")
    finally:
        srv.stop()


def test_describe_model_gives_the_info_loading_gives(backend, tiny_model, tmp_path):
    from troubadour.backends import load_backend
    from troubadour.testmodel import build_test_model

    assert describe_model(str(tiny_model), "cpu")[1] == backend.info
    for kind in ({"stereo": True}, {"melody": True}):
        path = tmp_path / next(iter(kind))
        build_test_model(path, **kind)
        summary, info = describe_model(str(path), "cpu")
        loaded = load_backend(str(path), "cpu").info
        assert info == loaded and (loaded.channels, loaded.melody) != (1, False)
        assert summary == {"id": str(path), "identity": loaded.identity, "device": "cpu",
                           "sample_rate": loaded.sample_rate, "channels": loaded.channels}


def test_describe_model_refuses_what_loading_would(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        describe_model(str(tmp_path / "empty"), "cpu")
    with pytest.raises(TroubadourError) as bad_device:
        describe_model(str(tiny_model), "no-such-device")
    assert bad_device.value.field == "device" and not isinstance(bad_device.value, ModelLoadError)


def test_bake_from_a_server_waits_for_its_model(loading, engine):
    from troubadour.bake_sources import ServerSource

    server, gate, _, _, _, _ = loading
    said, made = [], []
    thread = threading.Thread(target=lambda: made.append(ServerSource(server.bound, log=said.append)), daemon=True)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and said == ["waiting for the server to load its model"]
    gate.set()
    thread.join(30)
    source = made[0]
    assert source.sample_rate == engine.info.sample_rate and source.identity == engine.info.identity
    source.close()
