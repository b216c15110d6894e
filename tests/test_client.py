"""troubadour.client and its CLI (fetch, prefetch, status) against a real `troubadour serve` subprocess."""

import io
import json
import re
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from conftest import troubadour_cmd
from serverutil import ServerProcess, free_port
from troubadour import protocol as P
from troubadour.client import (BusyError, CancelledError, Chunk, Client, ConnectionLost, EmptyPromptError,
                               InvalidParamError, NotFoundError, ServerError, Timeout, TrackHeader,
                               UnknownContextError)


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Shared server; tests here never stop it."""
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def restartable(tiny_model, tmp_path_factory):
    """A second server that tests may pause, kill and restart (same port, same cache)."""
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("restartable")) as srv:
        yield srv


@pytest.fixture
def client(server):
    with Client(server.address, timeout=10, retries=2) as c:
        yield c
        assert not c.violations, list(c.violations)


@pytest.fixture
def live(restartable):
    if restartable.proc is None:   # a failed test may have left it down
        restartable.start()
    return restartable


def cli(args, env, **kw):
    """The installed command line, as a user runs it (slow: `troubadour` imports the server and torch)."""
    return subprocess.run(troubadour_cmd() + args, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, **kw)


def cli_main(args, capsys):
    """The same command line in this process: (exit code, stdout, stderr)."""
    from troubadour.cli import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- plain requests
def test_info_health_profiles_ping(client):
    info = client.info()
    assert info["protocol_version"] == 1 and info["model"]["sample_rate"] == 32000
    assert set(info["profiles"]) == {"menu", "battle", "explore"}
    assert "pcm_s16le" in info["formats"] and info["heartbeat_ms"] > 0
    health = client.health()
    assert health["status"] in P.HEALTH_STATUSES and health["queue"] >= 0 and health["uptime_s"] >= 0
    profiles = client.list_profiles()
    battle = next(c for c in profiles["contexts"] if c["name"] == "battle")
    assert battle["variants"] == 2 and battle["bpm"] == 140
    assert 1.0 <= battle["duration"] <= 2.0   # the server may round a looping context to whole bars
    assert profiles["game"]["title"] == "Client test"
    assert client.ping()["time"] > 1e9
    reloaded = client.reload_profiles()
    assert set(reloaded["contexts"]) == {"menu", "battle", "explore"} and reloaded["changed"] == []


def test_get_track_cold_then_cached(client):
    params = {"duration": 1.0, "seed": 101}
    first = client.get_track(prompt="cold then cached", params=params)
    assert first.cached is False and first.format == "pcm_s16le" and first.channels == 1
    assert first.frames == 32000 and len(first.audio) == first.frames * 2
    second = client.get_track(prompt="cold then cached", params=params)
    assert second.cached is True and second.track_id == first.track_id
    assert second.audio == first.audio and second.sha256 == first.sha256
    whole = client.get_track(prompt="cold then cached", params=params, stream=False)
    assert whole.audio == first.audio and whole.sha256 == first.sha256
    samples = first.samples()
    assert samples.shape == (1, 32000) and samples.dtype == np.float32 and np.abs(samples).max() > 0.01


def test_context_track_and_fallback(client):
    t = client.get_track("explore")
    assert t.header["context"] == "explore" and t.header["variant"] == 0 and t.header["fallback"] is False
    fb = client.get_track("not_in_profiles", params={"duration": 0.5})
    assert fb.header["fallback"] is True and fb.frames == 16000


def test_the_server_log_says_each_track_it_makes_and_how_fast(client, server):
    """A developer sees the server work (a generation on a CPU takes minutes) and this machine's speed."""
    client.get_track(prompt="a log line please", params={"duration": 1.0, "seed": 31})
    line = next((l for l in server.log().splitlines() if "'a log line please': 1 s of audio made in" in l), None)
    assert line is not None and re.search(r"made in [0-9.]+ s \([0-9.]+x real time; generated\)", line), \
        server.log()[-1500:]
    client.get_track(prompt="a log line please", params={"duration": 1.0, "seed": 31})   # cached: no new line
    assert server.log().count("'a log line please'") == 1


def test_stream_chunks_in_order_concatenate_to_get_track(client):
    params = {"duration": 2.0, "seed": 102}
    stream = client.stream_track(prompt="streamed chunks", params=params)
    assert isinstance(stream.id, int)
    items = list(stream)
    header, chunks = items[0], items[1:]
    assert isinstance(header, TrackHeader) and header.track_id and header.frames == 64000
    assert chunks and all(isinstance(c, Chunk) for c in chunks)
    offset = 0
    for c in chunks:
        assert c.offset == offset and len(c.data) == c.frames * 2
        offset += c.frames
    assert offset == header.frames == stream.end["frames"]
    again = client.get_track(prompt="streamed chunks", params=params)
    assert again.cached and again.audio == b"".join(c.data for c in chunks)
    assert again.sha256 == stream.end["sha256"]


@pytest.mark.parametrize("fmt", ["wav", "pcm_f32le", "ogg"])
def test_formats_and_sample_rates(client, fmt, tmp_path):
    t = client.get_track("menu", format=fmt, sample_rate=48000)
    assert t.format == fmt and t.sample_rate == 48000 and t.frames == 48000
    assert t.samples().shape == (1, 48000)
    for suffix in ("wav", "ogg"):
        path = t.save(tmp_path / f"out.{suffix}")
        info = sf.info(str(path))
        assert info.samplerate == 48000 and abs(info.frames - 48000) <= 1
        assert info.format == suffix.upper()
    if fmt != "ogg":
        same = t.save(tmp_path / "same.wav").read_bytes()
        if fmt == "wav":   # the server's bytes, not encoded again; menu loops: a `smpl` chunk follows them
            assert same[8:len(t.audio)] == t.audio[8:] and same[len(t.audio):len(t.audio) + 4] == b"smpl"
        else:
            assert same == (tmp_path / "out.wav").read_bytes()
        from troubadour.audio import read_loop_points
        assert t.loop is not None and read_loop_points(tmp_path / "same.wav") == t.loop
    client.violations.clear()   # ogg chunk frames: see test_ogg_chunk_frames_add_up


def test_ogg_live_and_cached_are_the_same_bytes(client):
    """A get_track resent after a reconnect may be served from the cache while the first try streamed live:
    the two must be byte-identical for the client to skip what it already has."""
    params = {"duration": 1.0, "seed": 9071}
    live = client.get_track(prompt="ogg twice", params=params, format="ogg")
    cached = client.get_track(prompt="ogg twice", params=params, format="ogg")
    assert not live.cached and cached.cached and cached.audio == live.audio and cached.sha256 == live.sha256
    client.violations.clear()   # ogg chunk frames: see test_ogg_chunk_frames_add_up


def test_ogg_chunk_frames_add_up(server):
    with Client(server.address, timeout=10) as client:
        stream = client.stream_track("menu", format="ogg")
        chunks = [c for c in stream if isinstance(c, Chunk)]
        data, sr = sf.read(io.BytesIO(b"".join(c.data for c in chunks)))
        assert sr == 32000 and len(data) == stream.header.frames
        assert sum(c.frames for c in chunks) == stream.header.frames
        assert not client.violations


# ---------------------------------------------------------------- prefetch, cancel, events
def test_a_game_request_goes_before_a_long_prefetch_already_running(tiny_model, tmp_path):
    """On a CPU a level's prefetch runs for minutes; the game asking for another track meanwhile gets it while the
    prefetch waits (it waited for the whole prefetch batch), and the prefetch then finishes."""
    profiles = ('[contexts.level]\nprompt = "long level music"\nduration = 30\n'
                '[contexts.boss]\nprompt = "the boss appears"\nduration = 0.5\n')
    with ServerProcess(tiny_model, tmp_path / "srv", profiles=profiles) as srv:
        started, finished = threading.Event(), []

        def level_loading():
            with Client(srv.address, timeout=30) as c:
                c.prefetch(["level"], on_progress=lambda p: started.set())
                finished.append(("prefetch", time.monotonic()))

        loader = threading.Thread(target=level_loading, daemon=True)
        loader.start()
        assert started.wait(60)
        with Client(srv.address, timeout=30) as game:
            boss = game.get_track("boss")
        finished.append(("boss", time.monotonic()))
        loader.join(120)
        made = [line for line in srv.log().splitlines() if "of audio made in" in line]
    assert not boss.cached and [name for name, _ in sorted(finished, key=lambda f: f[1])] == ["boss", "prefetch"]
    assert [re.search(r"(\w+#\d+): ", line).group(1) for line in made] == ["boss#0", "level#0"], made


def test_prefetch_progress_and_done(client):
    progress, accepted = [], []
    done = client.prefetch(["battle"], on_progress=progress.append, on_accepted=accepted.append)
    jobs = accepted[0]["jobs"]
    assert [(j["context"], j["variant"]) for j in jobs] == [("battle", 0), ("battle", 1)]
    assert done["generated"] + done["cached"] == 2 and done["failed"] == [] and done["jobs"] == jobs
    if done["generated"]:
        assert progress and all(0 < p["done_steps"] <= p["total_steps"] for p in progress)
        assert {p["track_id"] for p in progress} <= {j["track_id"] for j in jobs}
    again = client.prefetch(["battle"], variants=1)
    assert again["cached"] == 1 and again["generated"] == 0
    t = client.get_track("battle", variant=1, cached_only=True)
    assert t.cached and t.track_id == jobs[1]["track_id"]


def test_cancel_open_stream(client):
    stream = client.stream_track(prompt="to be cancelled", params={"duration": 20.0, "seed": 103})
    assert next(stream).cached is False
    reply = client.cancel(stream)
    assert reply["found"] is True and reply["target"] == stream.id
    assert not stream._req.open   # the target's final error came before the `cancelled` reply
    with pytest.raises(CancelledError) as e:
        list(stream)
    assert e.value.code == "cancelled"
    assert client.cancel(987654)["found"] is False
    assert client.ping()["time"] > 0   # the connection is still fine


def test_busy_when_too_many_open(client):
    limit = client.info()["limits"]["max_inflight_per_client"]
    streams = [client.stream_track(prompt=f"busy {i}", params={"duration": 20.0, "seed": i})
               for i in range(limit + 2)]
    outcomes = []
    for s in streams:
        try:
            next(s)
            outcomes.append("ok")
        except BusyError as e:
            assert e.retryable and e.code == "busy"
            outcomes.append("busy")
    for s in streams:
        s.close()
    assert outcomes == ["ok"] * limit + ["busy"] * 2
    assert client.ping()["time"] > 0


def test_pings_keep_a_quiet_request_alive(server):
    # Non-streamed: nothing arrives until the whole track is generated, longer than `timeout`.
    with Client(server.address, timeout=1.0, retries=0) as c:
        start = time.monotonic()
        t = c.get_track(prompt="quiet while generating", params={"duration": 20.0, "seed": 109}, stream=False)
        assert t.cached is False and t.frames == 640000
        if time.monotonic() - start > 1.5:
            assert c.reconnects == 0


def test_events_track_ready_on_regenerate(server, client):
    sub = client.subscribe(["track_ready", "no_such_event"])
    assert sub["events"] == ["track_ready"]
    with Client(server.address, timeout=10) as other:
        other.get_track("menu", regenerate=True)
    ev = client.next_event(timeout=10)
    assert ev is not None and ev["event"] == "track_ready"
    assert ev["context"] == "menu" and ev["variant"] == 0 and ev["reason"] == "hot_swap"
    assert client.events_lost == 0
    assert client.unsubscribe()["final"] is True


# ---------------------------------------------------------------- errors
def test_typed_errors(client):
    with pytest.raises(UnknownContextError) as e:
        client.get_track("nowhere", fallback=False)
    assert e.value.code == "unknown_context" and e.value.field == "context"
    with pytest.raises(UnknownContextError) as e:
        client.prefetch(["menu", "nowhere"])
    assert e.value.field == "contexts[1]"
    with pytest.raises(InvalidParamError) as e:
        client.get_track(prompt="too long", params={"duration": 999})
    assert e.value.field == "params.duration" and not e.value.retryable
    with pytest.raises(InvalidParamError) as e:
        client.get_track("battle", variant=5)
    assert e.value.field == "variant"
    with pytest.raises(InvalidParamError) as e:
        client.get_track("menu", format="mp3")
    assert e.value.field == "format"
    with pytest.raises(EmptyPromptError):
        client.get_track(prompt="   ")
    with pytest.raises(NotFoundError) as e:
        client.get_track(prompt="never generated", params={"seed": 104}, cached_only=True)
    assert e.value.retryable
    with pytest.raises(ServerError) as e:
        client.request("get_track", {"context": "menu", "bogus": 1})
    assert e.value.code == "bad_request" and e.value.field == "bogus"


def test_oversized_request_is_refused_before_sending(client):
    names = [f"context_number_{i:05d}" for i in range(3500)]
    with pytest.raises(P.ProtocolError) as e:
        client.prefetch(names)
    assert e.value.code == "too_large"
    assert client.ping()["time"] > 0


# ---------------------------------------------------------------- Lazy Pirate
def test_no_server_times_out_after_retries():
    address = f"tcp://127.0.0.1:{free_port()}"
    with Client(address, timeout=0.3, retries=2) as c:
        start = time.monotonic()
        with pytest.raises(Timeout) as e:
            c.info()
        elapsed = time.monotonic() - start
    # 3 tries of 0.3 s, backoff 0.25 + 0.5 s in between
    assert 1.5 < elapsed < 4.0, elapsed
    assert e.value.tries == 3 and e.value.code == "timeout" and address in str(e.value)


def test_resends_while_server_paused(live):
    with Client(live.address, timeout=0.5, retries=8) as c:
        c.ping()
        live.pause()
        timer = threading.Timer(1.5, live.resume)
        timer.start()
        try:
            assert c.health()["status"] in P.HEALTH_STATUSES
        finally:
            timer.join()
        assert c.reconnects >= 1


def test_prefetch_is_not_resent(live):
    with Client(live.address, timeout=0.5, retries=8) as c:
        c.ping()
        live.pause()
        try:
            with pytest.raises(ConnectionLost) as e:
                c.prefetch(["explore"])
            assert not isinstance(e.value, Timeout)
        finally:
            live.resume()
        assert c.ping()["time"] > 0


def test_request_lost_with_killed_server_is_resent(live):
    with Client(live.address, timeout=1.0, retries=10) as c:
        c.ping()
        live.pause()   # the request reaches the socket but is never answered

        def crash_and_restart():
            time.sleep(0.3)
            live.kill()
            live.start()

        helper = threading.Thread(target=crash_and_restart)
        helper.start()
        try:
            t = c.get_track(prompt="lost request", params={"duration": 1.0, "seed": 106})
        finally:
            helper.join()
        assert t.frames == 32000 and c.reconnects >= 1 and not c.violations


def test_stream_resumes_after_server_crash(live):
    params = {"duration": 8.0, "seed": 107}
    with Client(live.address, timeout=2.0, retries=10) as c:
        stream = c.stream_track(prompt="crash mid stream", params=params)
        header, first = next(stream), next(stream)
        assert header.cached is False
        live.pause()
        live.kill()
        helper = threading.Thread(target=live.start)
        helper.start()
        try:
            rest = list(stream)
        finally:
            helper.join()
        got = bytes(first.data) + b"".join(x.data for x in rest)
        assert [x.offset for x in rest][0] == first.offset + first.frames
        assert c.reconnects >= 1
        full = c.get_track(prompt="crash mid stream", params=params)
        assert full.audio == got and full.frames == header.frames
        assert not c.violations


def test_subscription_survives_restart(live):
    with Client(live.address, timeout=1.0, retries=10) as c, Client(live.address, timeout=5) as other:
        c.subscribe(["track_ready"])
        live.restart()
        c.next_event(timeout=3)          # notices the restart and subscribes again
        other.get_track("menu", regenerate=True)
        ev = c.next_event(timeout=10)
        assert ev is not None and ev["event"] == "track_ready" and ev["context"] == "menu"
        assert c.events_lost == 0 and not c.violations


# ---------------------------------------------------------------- CLI
def test_restart_between_requests_library_and_cli(live, cli_env, tmp_path):
    """The same track through the CLI (cold, cached) and a long-lived Client, across a server restart."""
    out = tmp_path / "a.wav"
    args = ["fetch", "--server", live.address, "--prompt", "survives restart", "--duration", "1", "--seed", "108",
            "--out", str(out), "--json"]

    def fetch() -> dict:
        r = cli(args, cli_env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.strip().splitlines()
        assert len(lines) == 1
        return json.loads(lines[0])

    records = [fetch(), fetch()]
    with Client(live.address, timeout=3, retries=5) as c:
        before = c.get_track(prompt="survives restart", params={"duration": 1.0, "seed": 108})
        live.restart()
        after = c.get_track(prompt="survives restart", params={"duration": 1.0, "seed": 108})
        assert before.cached and after.cached and after.audio == before.audio
        assert c.info()["protocol_version"] == 1 and not c.violations
    records.append(fetch())
    assert [rec["cached"] for rec in records] == [False, True, True]
    rec = records[0]
    assert rec["track_id"] == records[2]["track_id"] == after.track_id and rec["sample_rate"] == 32000
    assert rec["frames"] == 32000 and rec["channels"] == 1 and rec["file"] == str(out) and rec["seconds"] >= 0
    data, sr = sf.read(out, dtype="int16")
    assert sr == 32000 and data.tobytes() == after.audio


def test_cli_fetch_ogg_and_human_line(server, capsys, tmp_path):
    out = tmp_path / "m.ogg"
    code, stdout, err = cli_main(["fetch", "--server", server.address, "--context", "menu", "--out", str(out),
                                  "--sample-rate", "44100"], capsys)
    assert code == 0, err
    assert str(out) in stdout and "44100 Hz" in stdout
    info = sf.info(str(out))
    assert info.format == "OGG" and info.samplerate == 44100


def test_cli_fetch_server_error_is_one_line(server, capsys, tmp_path):
    code, _, err = cli_main(["fetch", "--server", server.address, "--context", "nowhere", "--no-fallback", "--out",
                             str(tmp_path / "x.wav")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err
    assert not (tmp_path / "x.wav").exists()


def test_fallback_is_reported_once_with_the_closest_name(server, capsys, tmp_path):
    """A context missing from the profiles (at dev time usually a typo) still gets music, and both `troubadour
    fetch` and the server's log say so, naming the closest context; the server says it once per name."""
    for _ in range(2):
        code, stdout, err = cli_main(["fetch", "--server", server.address, "--context", "explor", "--duration",
                                      "0.5", "--out", str(tmp_path / "x.wav"), "--json"], capsys)
        assert code == 0, err
        assert json.loads(stdout)["fallback"] is True
        assert "context 'explor' is not in the server's profiles (did you mean 'explore'?)" in err
    code, _, err = cli_main(["fetch", "--server", server.address, "--context", "explore", "--out",
                             str(tmp_path / "y.wav")], capsys)
    assert code == 0 and err == ""
    said = "context 'explor' is not in the profiles (did you mean 'explore'?): playing fallback music"
    assert server.log().count(said) == 1, server.log()[-2000:]


def test_cli_fetch_out_in_a_new_folder_or_unwritable_path(server, capsys, tmp_path):
    out = tmp_path / "music" / "menu.wav"
    code, _, err = cli_main(["fetch", "--server", server.address, "--context", "menu", "--out", str(out)], capsys)
    assert code == 0 and sf.info(str(out)).samplerate == 32000, err
    (tmp_path / "afile").write_text("")
    code, _, err = cli_main(["fetch", "--server", server.address, "--context", "menu", "--out",
                             str(tmp_path / "afile" / "x.wav")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "afile" in err, err


@pytest.mark.parametrize("out,fmt,why", [
    ("b.mp3", None, "name a .wav, .ogg, .raw or .pcm file"), ("b", None, "name a .wav"),
    ("x.wav", "ogg", "--format ogg does not match --out x.wav, which takes wav"),
    ("x.ogg", "pcm_s16le", "which takes ogg"), ("x.raw", "wav", "which takes pcm_s16le or pcm_f32le"),
])
def test_cli_fetch_file_name_and_format_must_agree(server, capsys, tmp_path, out, fmt, why):
    """`--out b.mp3` got WAV bytes and `--format ogg --out x.wav` a WAV that --json called ogg: refused before
    anything is asked of the server, as is a folder given as --out (it failed after the track arrived)."""
    args = ["fetch", "--server", server.address, "--context", "menu", "--out", str(tmp_path / out)]
    code, _, err = cli_main(args + (["--format", fmt] if fmt else []), capsys)
    assert code == 2 and why in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "folder.wav").mkdir()
    code, _, err = cli_main(args[:-1] + [str(tmp_path / "folder.wav")], capsys)
    assert code == 2 and "is a folder" in err, err


@pytest.mark.parametrize("suffix,fmt", [("wav", None), ("ogg", None), ("wav", "wav"), ("ogg", "ogg")])
def test_cli_fetch_writes_a_looping_tracks_loop_points(server, capsys, tmp_path, suffix, fmt):
    """A looping context's track from `fetch` loops in an engine as a baked file does: loop points in the file
    (WAV smpl, Ogg LOOPSTART/LOOPLENGTH) and in --json, whether the server sent PCM or the container itself."""
    from troubadour.audio import read_loop_points

    out = tmp_path / f"battle.{suffix}"
    args = ["fetch", "--server", server.address, "--context", "battle", "--out", str(out), "--json"]
    code, stdout, err = cli_main(args + (["--format", fmt] if fmt else []), capsys)
    assert code == 0, err
    record = json.loads(stdout)
    assert record["bpm"] == 140 and 0 < record["loop_start"] < record["loop_end"] == record["frames"]
    assert read_loop_points(out) == (record["loop_start"], record["loop_end"])
    assert sf.info(str(out)).frames == record["frames"]


def test_cli_status(server, capsys, monkeypatch):
    code, out, err = cli_main(["status", "--server", server.address], capsys)
    assert code == 0, err
    assert "cpu" in out and "menu" in out and "queue" in out
    monkeypatch.setenv("TROUBADOUR_SERVER", server.address)
    code, out, err = cli_main(["status", "--json"], capsys)
    assert code == 0, err
    status = json.loads(out)
    assert status["address"] == server.address and status["info"]["protocol_version"] == 1
    assert status["health"]["status"] in P.HEALTH_STATUSES


def test_cli_prefetch(server, capsys):
    code, out, err = cli_main(["prefetch", "--server", server.address, "explore", "menu", "--variants", "1"], capsys)
    assert code == 0, err
    assert "0 failed" in out and "cached" in out
    code, out, _ = cli_main(["prefetch", "--server", server.address, "explore", "--json"], capsys)
    assert code == 0 and json.loads(out)["cached"] == 1
    code, _, err = cli_main(["prefetch", "--server", server.address, "nowhere"], capsys)
    assert code == 2 and "nowhere" in err
    code, _, err = cli_main(["prefetch", "--server", server.address, "menu", "explor"], capsys)
    assert code == 2 and "unknown context 'explor' (did you mean 'explore'?)" in err, err


def test_cli_no_server(cli_env, capsys, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    r = cli(["status", "--server", address, "--timeout", "0.3", "--retries", "1"], cli_env)
    assert r.returncode == 4 and r.stderr == f"troubadour: error: no answer from {address} after 2 tries\n"
    for args in (["fetch", "--context", "menu", "--out", str(tmp_path / "x.wav")], ["prefetch", "menu"]):
        code, _, err = cli_main(args + ["--server", address, "--timeout", "0.3", "--retries", "1"], capsys)
        assert code == 4, (args, err)
        assert err.strip() == f"troubadour: error: no answer from {address} after 2 tries"


@pytest.mark.parametrize("damage", ["hash", "bytes", "payload"])
def test_damaged_stream_is_a_protocol_error(damage):
    """A server (here a bare ROUTER) whose `end` does not match the chunks it sent: the client says so."""
    import xxhash
    import zmq

    from troubadour.client import ProtocolError

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    pcm = bytes(range(256)) * 400   # 102400 bytes = 25600 stereo s16 frames
    sent = pcm[:-1] + b"\x00" if damage == "payload" else pcm

    def serve():
        ident, _, *frames = router.recv_multipart()
        rid = P.decode(frames).body["id"]
        head = dict(track_id="t", cached=True, prompt="p", params={}, sample_rate=32000, channels=2,
                    frames=len(pcm) // 4, format="pcm_s16le")
        end = dict(frames=len(pcm) // 4, bytes=len(pcm) + (damage == "bytes"), sha256="0" * 64,
                   xxh3_64=xxhash.xxh3_64_hexdigest(pcm + b"x" * (damage == "hash")))
        half = len(sent) // 2
        for msg in (P.reply(rid, 0, False, P.TRACK, **head),
                    P.reply(rid, 1, False, P.CHUNK, sent[:half], offset=0, frames=half // 4, bytes=half),
                    P.reply(rid, 2, False, P.CHUNK, sent[half:], offset=half // 4, frames=half // 4, bytes=half),
                    P.reply(rid, 3, True, P.END, **end)):
            router.send_multipart([ident, b"", *msg])

    t = threading.Thread(target=serve)
    t.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=5, retries=0) as c:
            with pytest.raises(ProtocolError, match="xxh3_64" if damage != "bytes" else "bytes"):
                c.get_track(prompt="p")
    finally:
        t.join(5)
        router.close(0)


def test_undecodable_replies_fail_what_they_may_belong_to():
    """Server messages the client cannot decode (a scripted server): one carrying a request's id fails that
    request; one whose id is nil fails nothing; one with no readable id fails every open request, since any of
    them may have lost its final message (pings would keep it waiting forever). Failed requests are cancelled on
    the server and the connection goes on working."""
    from fakeserver import BadRepliesServer
    from troubadour.client import ProtocolError

    srv = BadRepliesServer()
    outcome = {}

    def play(c):
        with pytest.raises(ProtocolError, match="payload"):
            c.get_track("broken_own")
        with pytest.raises(UnknownContextError):
            c.get_track("nil_noise")
        streams = [c.stream_track("unreadable_a"), c.stream_track("unreadable_b")]
        for s in streams:
            with pytest.raises(ProtocolError, match="unreadable message from the server"):
                list(s)
        outcome["pong"] = c.ping()

    try:
        with Client(srv.address, timeout=30, retries=0) as c:
            worker = threading.Thread(target=play, args=(c,), daemon=True)
            worker.start()
            worker.join(60)
            assert not worker.is_alive(), f"a request was left waiting; server saw {srv.seen}"
            assert outcome.get("pong", {}).get("final") is True, outcome
            assert [v for v in c.violations if "undecodable message:" in v and "final" in v], c.violations
            assert [v for v in c.violations if "no readable id" in v], c.violations
            deadline = time.monotonic() + 10
            while len(srv.cancelled) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            ids = srv.track_ids
            assert sorted(srv.cancelled) == sorted([ids["broken_own"], ids["unreadable_a"], ids["unreadable_b"]])
    finally:
        srv.stop()


def test_busy_after_a_dropped_backlog_is_busy_not_lost_messages():
    """PROTOCOL.md 7: a server that dropped an unread backlog sends a seq gap, then a final `busy`; the client
    raises BusyError (retry later), not a protocol error."""
    from fakeserver import BadRepliesServer

    srv = BadRepliesServer()
    try:
        with Client(srv.address, timeout=10, retries=0) as c:
            with pytest.raises(BusyError, match="dropped"):
                c.get_track("gap_busy")
            with pytest.raises(BusyError):
                list(c.stream_track("gap_busy"))
            assert not c.violations
    finally:
        srv.stop()


def test_cached_replay_chunks_stay_under_the_chunk_limit(client):
    """Cached replays send few, large chunks; float32 48 kHz stereo is the widest delivery."""
    req = dict(prompt="rain on a tin roof", params={"duration": 12.0, "seed": 3}, format="pcm_f32le",
               sample_rate=48000)
    client.get_track(**req)   # generate and cache
    with client.stream_track(**req) as ts:
        items = list(ts)
    chunks = [c for c in items if isinstance(c, Chunk)]
    assert items[0].cached and sum(c.frames for c in chunks) == items[0].frames
    assert max(len(c.data) for c in chunks) <= P.MAX_CHUNK_BYTES
    assert len(chunks) <= 8   # not the 24 half-second chunks of a live stream


@pytest.mark.parametrize("args,field", [
    (["--timeout", "0"], "timeout"), (["--timeout", "-1"], "timeout"), (["--retries", "-1"], "retries"),
    (["--server", "tcp://127.0.0.1:99999"], "server"), (["--server", "127.0.0.1:5555"], "server"),
    (["--server", "tcp://127.0.0.1"], "server"),
])
def test_cli_bad_connection_settings_are_usage_errors(capsys, tmp_path, args, field):
    """They read as "no answer after 3 tries" (exit 4, after up to 15 s): a usage error names them at once."""
    code, _, err = cli_main(["status"] + args, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err, err   # (no answer is exit 4)
