"""The server over real ZeroMQ sockets with the tiny model: tracks, cache, dedup, priority, cancel, errors."""

import hashlib
import time

import msgpack
import xxhash
import zmq
import numpy as np
import pytest

from servers import PROFILES, Conn, ServerProcess, audio_of
from troubadour import protocol as P


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    profiles = work / "profiles.toml"
    profiles.write_text(PROFILES)
    srv = ServerProcess(tiny_model, work, profiles, args=["--max-batch", "1", "--max-queue", "6"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def conn(server):
    c = Conn(server.address)
    yield c
    c.close()


def track(conn, **req):
    msgs = conn.call(P.GET_TRACK, stream=True, **req)
    assert [m.type for m in msgs][0] == P.TRACK and msgs[-1].type == P.END, [m.body for m in msgs]
    return msgs


def test_info_health_profiles(conn, server):
    (info,) = conn.call(P.INFO)
    assert info.body["model"]["sample_rate"] == 32000 and info.body["protocol_version"] == 1
    assert set(info.body["profiles"]) == {"menu", "explore", "battle", "boss", "victory"}
    (health,) = conn.call(P.HEALTH)
    assert health.body["status"] == "ok"
    (profiles,) = conn.call(P.LIST_PROFILES)
    explore = next(c for c in profiles.body["contexts"] if c["name"] == "explore")
    assert explore["variants"] == 2 and "peaceful" in explore["prompt"].lower()


def test_cold_then_cached_identical_audio_in_order(conn):
    cold = track(conn, context="battle", params={"duration": 2.0})
    hot = track(conn, context="battle", params={"duration": 2.0})
    assert cold[0].body["cached"] is False and hot[0].body["cached"] is True
    assert cold[0].body["track_id"] == hot[0].body["track_id"]
    for msgs in (cold, hot):
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        assert [m.final for m in msgs].count(True) == 1
        chunks = [m for m in msgs if m.type == P.CHUNK]
        assert len(chunks) >= 2
        offsets = np.cumsum([0] + [c.body["frames"] for c in chunks[:-1]])
        assert [c.body["offset"] for c in chunks] == list(offsets)
        data = audio_of(msgs)
        head = msgs[0].body
        # battle has 140 bpm: 2 s rounds to one bar (1.71 s), a seamless loop ending with the track on the
        # codec frame (20 ms) nearest the bar line
        assert len(data) == head["frames"] * 2 and abs(head["frames"] - 4 * 60 / 140 * 32000) <= 320
        assert head["loop_end"] == head["frames"] and 0 < head["loop_start"] < head["loop_end"]
        assert head["loop_start"] % 640 == head["loop_end"] % 640 == 0
        assert msgs[-1].body["sha256"] == hashlib.sha256(data).hexdigest()
        assert msgs[-1].body["xxh3_64"] == xxhash.xxh3_64_hexdigest(data)
    assert audio_of(cold) == audio_of(hot)


def test_a_looping_track_keeps_its_last_bar(conn):
    """10 s of battle (140 bpm) is 6 bars, 10.2857 s, generated as 514 codec frames (10.28 s): the loop runs
    from bar 1 to the end of the track, over 5 bars (it stopped at bar 5, dropping 1.7 s of the track)."""
    head = track(conn, context="battle", params={"duration": 10.0})[0].body
    bar = 4 * 60 / 140 * 32000
    assert head["loop_end"] == head["frames"] and abs(head["frames"] - 6 * bar) <= 320
    assert abs(head["loop_start"] - bar) <= 320 and abs(head["loop_end"] - head["loop_start"] - 5 * bar) <= 640


def test_cold_stream_starts_before_generation_ends(conn):
    rid = conn.send(P.GET_TRACK, context="boss", stream=True, params={"duration": 8.0, "seed": 5})
    t0 = time.time()
    arrivals = []
    while True:
        m = conn.recv()
        assert m.id == rid
        arrivals.append((m.type, time.time() - t0))
        if m.final:
            break
    first_chunk = next(t for kind, t in arrivals if kind == P.CHUNK)
    assert first_chunk < 0.5 * arrivals[-1][1], arrivals


def test_resampled_and_file_formats(conn):
    base = dict(prompt="format test", params={"duration": 1.0})
    pcm48 = track(conn, sample_rate=48000, format="pcm_f32le", **base)
    assert pcm48[0].body["sample_rate"] == 48000 and pcm48[0].body["frames"] == 48000
    data = np.frombuffer(audio_of(pcm48), dtype="<f4")
    assert len(data) == 48000 and np.abs(data).max() > 0.01
    again = track(conn, sample_rate=48000, format="pcm_f32le", **base)
    assert again[0].body["cached"] and audio_of(again) == audio_of(pcm48)
    import io

    import soundfile as sf
    for fmt in ("wav", "ogg"):
        msgs = track(conn, format=fmt, **base)
        audio, sr = sf.read(io.BytesIO(audio_of(msgs)))
        assert sr == 32000 and abs(len(audio) - 32000) < 200
    (whole,) = conn.call(P.GET_TRACK, stream=False, **base)
    assert whole.type == P.TRACK and whole.final and len(whole.payload) == 2 * 32000
    assert whole.body["sha256"] == hashlib.sha256(bytes(whole.payload)).hexdigest()
    assert whole.body["xxh3_64"] == xxhash.xxh3_64_hexdigest(bytes(whole.payload))


def test_two_clients_same_track_one_generation(server):
    a, b = Conn(server.address), Conn(server.address)
    probe = Conn(server.address)
    before = probe.call(P.HEALTH)[0].body["generated"]
    req = dict(context="explore", variant=1, stream=True, params={"duration": 3.0, "seed": 77})
    ra = a.send(P.GET_TRACK, **req)
    time.sleep(0.3)
    rb = b.send(P.GET_TRACK, **req)
    ma, mb = a.until_final(ra), b.until_final(rb)
    after = probe.call(P.HEALTH)[0].body["generated"]
    assert after - before == 1, "identical requests must share one generation"
    assert ma[0].body["cached"] is False and mb[0].body["track_id"] == ma[0].body["track_id"]
    # explore has 140 bpm here: 3 s rounds to 2 bars (3.43 s), and the loop keeps both (not 7 beats, 3.0 s)
    frames = ma[0].body["frames"]
    assert audio_of(ma) == audio_of(mb) and len(audio_of(ma)) == 2 * frames
    assert abs(frames - 2 * 4 * 60 / 140 * 32000) <= 320 and ma[0].body["loop_end"] == frames
    for c in (a, b, probe):
        c.close()


def test_get_track_beats_queued_prefetch(server):
    sub, c = Conn(server.address), Conn(server.address)
    sub.call(P.SUBSCRIBE, events=["track_ready"])
    # distinct seeds so nothing is cached; max-batch 1 so jobs run one by one
    pf = c.send(P.PREFETCH, contexts=["menu", "battle", "boss", "victory"], stream=True, priority=-50)
    g = c.send(P.GET_TRACK, context="explore", variant=0, stream=True, params={"duration": 1.0, "seed": 999})
    c.until_final(g, timeout=120)
    prefetch = c.until_final(pf, timeout=120)
    accepted, done = prefetch[0], prefetch[-1]
    assert accepted.type == P.ACCEPTED and done.type == P.DONE
    ready = [e.body["context"] for e in sub.events(1.0)]
    pending = [j["context"] for j in accepted.body["jobs"] if not j["cached"]]
    assert "explore" in ready
    later = [ctx for ctx in pending if ctx in ready[ready.index("explore"):]]
    assert len(later) >= len(pending) - 1, f"get_track waited behind prefetch: {ready}"
    sub.close()
    c.close()


def test_prefetch_progress_then_cached(conn):
    msgs = conn.call(P.PREFETCH, contexts=["victory"], stream=True, priority=-50, variants="all")
    kinds = [m.type for m in msgs]
    assert kinds[0] == P.ACCEPTED and kinds[-1] == P.DONE
    done = msgs[-1].body
    assert done["generated"] + done["cached"] == 1 and done["failed"] == []
    if done["generated"]:
        progress = [m.body for m in msgs if m.type == P.PROGRESS]
        assert progress and progress[-1]["done_steps"] == progress[-1]["total_steps"] == 53
    (hit,) = conn.call(P.GET_TRACK, context="victory", cached_only=True)
    assert hit.body["cached"] is True


def test_cancel_stops_delivery_and_generation(conn, server):
    rid = conn.send(P.GET_TRACK, context="boss", stream=True, params={"duration": 20.0, "seed": 4242})
    first = conn.recv()
    assert first.type == P.TRACK
    (cancelled,) = conn.call(P.CANCEL, target=rid)
    assert cancelled.body == {**cancelled.body, "found": True, "target": rid}
    rest = conn.until_final(rid, timeout=5)
    assert rest[-1].type == P.ERROR and rest[-1].body["code"] == "cancelled"
    deadline = time.time() + 10
    while conn.call(P.HEALTH)[0].body["generating"] and time.time() < deadline:
        time.sleep(0.1)
    assert conn.call(P.HEALTH)[0].body["generating"] == 0, "an unwanted generation must stop"
    (miss,) = conn.call(P.GET_TRACK, context="boss", cached_only=True, params={"duration": 20.0, "seed": 4242})
    assert miss.body["code"] == "not_found"
    (again,) = conn.call(P.CANCEL, target=rid)
    assert again.body["found"] is False


def test_a_track_requested_again_right_after_its_cancel_is_generated_and_shared(conn, server):
    """Cancel a generation and ask for the same track in the same burst: the new generation must not lose its
    listeners when the cancelled one reports its end, and a third request joins it (not an internal error)."""
    req = dict(context="boss", stream=True, params={"duration": 6.0, "seed": 777})
    first = conn.send(P.GET_TRACK, **req)
    assert conn.recv().type == P.TRACK
    conn.send(P.CANCEL, target=first)
    second = conn.send(P.GET_TRACK, **req)     # queued behind the cancel: the old job is still running
    time.sleep(0.3)                            # the cancelled job has stopped and reported by now
    third = conn.send(P.GET_TRACK, **req)
    msgs = {rid: conn.until_final(rid, timeout=60) for rid in (first, second, third)}
    assert msgs[first][-1].body["code"] == "cancelled"
    audio = []
    for rid in (second, third):
        assert msgs[rid][-1].type == P.END, [m.body for m in msgs[rid]][-1]
        audio.append(b"".join(bytes(m.payload) for m in msgs[rid] if m.type == P.CHUNK))
    assert audio[0] == audio[1] and len(audio[0]) == msgs[second][-1].body["bytes"] > 0


def test_error_codes(conn, server):
    def err(msgs):
        assert msgs[-1].type == P.ERROR, [m.body for m in msgs]
        return msgs[-1].body

    assert err(conn.call(P.GET_TRACK, prompt="x", params={"temperature": 0}))["field"] == "params.temperature"
    assert err(conn.call(P.GET_TRACK, prompt="   "))["code"] == "empty_prompt"
    assert err(conn.call(P.GET_TRACK, context="nowhere", fallback=False))["code"] == "unknown_context"
    assert err(conn.call(P.PREFETCH, contexts=["menu", "nowhere"]))["field"] == "contexts[1]"
    assert err(conn.call(P.GET_TRACK, context="menu", variant=3))["code"] == "invalid_param"
    assert err(conn.call(P.GET_TRACK, context="menu", tempo=3))["code"] == "bad_request"
    conn.send_raw([P.HEADER, b"get_track", msgpack.packb({"id": 7, "prompt": "x" * 20000})])
    assert conn.recv().body["code"] == "too_large"
    assert err(conn.call(P.GET_TRACK, prompt="never made", cached_only=True))["code"] == "not_found"
    conn.send_raw([b"TRB\x07", b"info", msgpack.packb({"id": 5})])
    assert conn.recv().body["code"] == "unsupported_version"
    conn.send_raw([P.HEADER, b"get_trak", msgpack.packb({"id": 6})])
    m = conn.recv()
    assert m.body["code"] == "unknown_type" and m.id == 6
    conn.send_raw([P.HEADER, b"info", b"\xc1garbage"])
    assert conn.recv().body["code"] == "bad_request"
    # the server still serves after all of that
    assert conn.call(P.PING)[0].type == P.PONG


def test_busy_when_queue_is_full(conn):
    ids = [conn.send(P.GET_TRACK, prompt=f"busy test {i}", stream=True, params={"duration": 5.0, "seed": i})
           for i in range(10)]
    finals = {}
    for rid in ids:
        msgs = conn.until_final(rid, timeout=180)
        finals[rid] = msgs[-1]
    codes = [finals[r].body.get("code") for r in ids]
    assert "busy" in codes, codes
    assert sum(1 for r in ids if finals[r].type == P.END) >= 6, "queued requests still complete"


def test_profile_error_on_reload_keeps_old_profiles(conn, server):
    good = server.profiles.read_text()
    try:
        server.profiles.write_text(good + "\n[contexts.broken]\ntemperature = -1\n")
        body = conn.call(P.RELOAD_PROFILES)[-1].body
        assert body["code"] == "profile_error" and "broken" in body["message"]
        names = {c["name"] for c in conn.call(P.LIST_PROFILES)[0].body["contexts"]}
        assert "battle" in names and "broken" not in names
    finally:
        server.profiles.write_text(good)
        conn.call(P.RELOAD_PROFILES)


def test_unread_stream_does_not_block_other_clients(server):
    slow = Conn(server.address)
    slow.sock.setsockopt(zmq.RCVHWM, 1)
    slow.send(P.GET_TRACK, context="battle", stream=True, format="pcm_f32le", sample_rate=48000,
              params={"duration": 2.0})
    fast = Conn(server.address)
    t0 = time.time()
    assert fast.call(P.PING)[0].type == P.PONG
    assert time.time() - t0 < 2
    slow.close()
    fast.close()



def test_whole_track_over_the_message_limit_must_stream(conn):
    (err,) = conn.call(P.GET_TRACK, prompt="long", stream=False, format="pcm_f32le", sample_rate=48000,
                       params={"duration": 200.0})
    assert err.type == P.ERROR and err.body["code"] == "too_large" and err.body["field"] == "stream"


def test_track_past_the_model_window_streams_by_continuation(conn):
    rid = conn.send(P.GET_TRACK, prompt="a long journey", stream=True, params={"duration": 34.0, "seed": 2})
    msgs = conn.until_final(rid, timeout=300)
    assert msgs[-1].type == P.END, [m.body for m in msgs[-3:]]
    head, data = msgs[0].body, audio_of(msgs)
    assert head["frames"] == 34 * 32000 and len(data) == 2 * 34 * 32000
    assert msgs[-1].body["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("args, field", [
    (["--bind", None], "bind"),   # None: the running module server's address, already in use
    (["--bind", "nonsense"], "bind"),
    (["--max-queue", "0"], "max-queue"),
    (["--max-batch", "0"], "max-batch"),
    (["--cache-size", "-1"], "cache-size"),
    (["--threads", "0"], "threads"),
    (["--device", "tpu"], "device"),
])
def test_bad_serve_options_exit_2_before_loading_the_model(server, tiny_model, tmp_path, cli_env, args, field):
    import subprocess

    from conftest import troubadour_cmd

    args = [a if a is not None else server.address for a in args]
    if "--bind" not in args:
        args += ["--bind", "tcp://127.0.0.1:0"]
    r = subprocess.run(troubadour_cmd() + ["serve", "--model", str(tiny_model), "--cache", str(tmp_path / "c"),
                                           *args], env=cli_env, cwd=tmp_path, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and field in r.stderr and "loading model" not in r.stderr, r.stderr
    assert "listening on" not in r.stderr   # refused before the socket is bound


def test_cache_stats_count_the_servers_hits_and_misses(tiny_model, tmp_path):
    """`troubadour cache stats` after a session: a track generated for a request is a miss, a track answered
    from the server's memory or from disk a hit, an uncached `cached_only` request a miss; across restarts."""
    from troubadour.cache import TrackCache

    srv = ServerProcess(tiny_model, tmp_path).start()
    try:
        c = Conn(srv.address)
        for _ in range(3):   # generated, then twice from memory
            track(c, prompt="calm piano", params={"duration": 1.0, "seed": 1})
        (err,) = c.call(P.GET_TRACK, prompt="harp", params={"duration": 1.0}, cached_only=True)
        assert err.type == P.ERROR and err.body["code"] == P.NOT_FOUND
        time.sleep(1.5)      # written about once a second
        stats = TrackCache(str(srv.cache)).stats()
        assert (stats["hits"], stats["misses"]) == (2, 2), stats
        c.close()
        srv.restart()
        c = Conn(srv.address)
        track(c, prompt="calm piano", params={"duration": 1.0, "seed": 1})   # from disk
        c.close()
    finally:
        srv.stop()
    stats = TrackCache(str(srv.cache)).stats()
    assert (stats["hits"], stats["misses"], stats["entries"]) == (3, 2, 1), stats


def test_duplicate_open_id_is_bad_request_with_id_nil_and_the_first_continues(conn):
    """Section 4: the duplicate's error carries id nil, so the open request still has exactly one final
    message and its seq runs on unbroken."""
    rid = conn.send(P.GET_TRACK, prompt="duplicate id", stream=True, params={"duration": 2.0, "seed": 31})
    conn.send(P.PING, id=rid)
    got = []
    while not (got and got[-1].id == rid and got[-1].final):
        got.append(conn.recv(60))
    dup = [m for m in got if m.type == P.ERROR]
    assert len(dup) == 1 and dup[0].id is None and dup[0].final, [m.body for m in dup]
    assert dup[0].body["code"] == "bad_request" and dup[0].body["field"] == "id", dup[0].body
    mine = [m for m in got if m.id == rid]
    assert [m.seq for m in mine] == list(range(len(mine))) and [m.final for m in mine].count(True) == 1
    assert mine[-1].type == P.END, mine[-1].body


def test_seed_override_is_the_variants_base_and_prompt_length_is_counted_trimmed(conn):
    """With a context, params.seed is the base seed (variant i uses seed + i, as in a profile); one that
    would pass 2**63-1 for the asked variant is refused saying why. A prompt is counted after trimming."""
    (m,) = conn.call(P.GET_TRACK, context="explore", variant=1, params={"seed": 2**63 - 1}, cached_only=True)
    assert (m.body["code"], m.body["field"]) == ("invalid_param", "params.seed") and "seed + variant" in \
        m.body["message"], m.body
    (m,) = conn.call(P.GET_TRACK, context="explore", variant=0, params={"seed": 2**63 - 1}, cached_only=True)
    assert m.body["code"] == "not_found", m.body            # valid: just not generated
    (m,) = conn.call(P.GET_TRACK, prompt="  " + "a" * 2000 + "  ", cached_only=True)
    assert m.body["code"] == "not_found", m.body
    (m,) = conn.call(P.GET_TRACK, prompt="a" * 2001, cached_only=True)
    assert (m.body["code"], m.body["field"]) == ("invalid_param", "prompt"), m.body


def test_context_names_are_checked_whole(conn):
    """A name is 1-64 of A-Z a-z 0-9 _ - and nothing else: a trailing newline is not forgiven."""
    for name in ("menu\n", "a" * 64 + "\n"):
        (err,) = conn.call(P.GET_TRACK, context=name, cached_only=True)
        assert (err.type, err.body["code"], err.body["field"]) == (P.ERROR, "invalid_param", "context"), err.body
    (err,) = conn.call(P.PREFETCH, contexts=["menu\n"])
    assert (err.body["code"], err.body["field"]) == ("invalid_param", "contexts[0]"), err.body


def test_cancel_naming_itself_gets_one_final_reply(conn):
    conn.send(P.CANCEL, id="self-cancel", target="self-cancel")
    got = []
    while True:
        try:
            got.append(conn.recv(1.0))
        except TimeoutError:
            break
    mine = [m for m in got if m.id == "self-cancel"]
    assert [(m.type, m.final) for m in mine] == [(P.CANCELLED_REPLY, True)], [m.body for m in mine]
    assert mine[0].body["found"] is False


def test_cached_only_does_not_wait_for_a_generation_in_flight(conn):
    req = dict(prompt="cached only while generating", params={"duration": 8.0, "seed": 55})
    cold = conn.send(P.GET_TRACK, stream=True, **req)
    assert conn.recv().type == P.TRACK   # the generation has started
    (miss,) = conn.call(P.GET_TRACK, cached_only=True, **req)
    assert miss.type == P.ERROR and miss.body["code"] == "not_found", miss.body
    assert conn.until_final(cold, timeout=120)[-1].type == P.END
    (hit,) = conn.call(P.GET_TRACK, cached_only=True, **req)
    assert hit.type == P.TRACK and hit.body["cached"] is True


def test_every_field_the_server_sends_is_in_the_spec(conn):
    """PROTOCOL.md names, in the section of each reply, every field a client can see (clients ignore unknown
    ones, but the contract lists them)."""
    import re
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[1] / "protocol" / "PROTOCOL.md").read_text("utf-8")

    def section(number):
        return re.search(rf"^### {re.escape(number)} .*?(?=^##)", spec, re.M | re.S).group(0)

    missing = []

    def check(number, where, body):
        text = section(number)
        missing.extend(f"{where}.{k} (section {number})" for k in body if f"`{k}`" not in text
                       and k not in ("id", "seq", "final"))

    (info,) = conn.call(P.INFO)
    for where, body in (("info", info.body), ("model", info.body["model"]), ("limits", info.body["limits"])):
        check("5.1", where, body)
    check("5.2", "health", conn.call(P.HEALTH)[0].body)
    profiles = conn.call(P.LIST_PROFILES)[0].body
    check("5.3", "profiles", profiles)
    check("5.3", "game", profiles["game"])
    for row in profiles["contexts"]:
        check("5.3", "contexts[]", row)
    for m in track(conn, context="menu"):
        check("5.4", m.type, m.body)
    (whole,) = conn.call(P.GET_TRACK, context="menu")
    check("5.4", "track (whole)", whole.body)
    check("5.9", "pong", conn.call(P.PING)[0].body)
    assert not missing, f"fields sent but not in their PROTOCOL.md section: {sorted(set(missing))}"


def test_message_without_the_empty_frame_gets_no_reply(conn):
    conn.sock.send_multipart([P.HEADER, b"ping", msgpack.packb({"id": "no-delimiter"})])
    with pytest.raises(TimeoutError):
        conn.recv(1.0)
    assert conn.call(P.PING)[0].type == P.PONG


def test_subscribed_reply_comes_before_the_first_event(conn):
    """An event raised in the same pass as the subscribe (here by a reload sent right behind it) must not
    overtake the `subscribed` reply: event seq restarts at 0 after that reply (sections 4 and 5.7)."""
    for _ in range(30):
        sub = conn.send(P.SUBSCRIBE, events=["profiles_changed"])
        reload = conn.send(P.RELOAD_PROFILES)
        order = []
        while not {sub, reload} <= {m.id for m in order} or not any(m.type == P.EVENT for m in order):
            order.append(conn.recv(10))
        kinds = [(m.type, m.seq) for m in order]
        assert kinds.index((P.SUBSCRIBED, 0)) < kinds.index((P.EVENT, 0)), kinds
    conn.call(P.UNSUBSCRIBE)


def test_prefetch_error_field_indexes_the_request_and_duplicates_are_ignored(conn):
    (err,) = conn.call(P.PREFETCH, contexts=["menu", "menu", "nowhere"])
    assert err.body["code"] == "unknown_context" and err.body["field"] == "contexts[2]", err.body
    (accepted,) = conn.call(P.PREFETCH, contexts=["menu", "menu"])
    assert [(j["context"], j["variant"]) for j in accepted.body["jobs"]] == [("menu", 0)]
