"""The Unity client (clients/unity): C# compiled with mcs and run with mono, against the golden vectors and a real
server (restarted mid-stream, profiles edited). Skipped only where mcs/mono are missing (CI installs mono-mcs).

Unity itself is not available here: the Unity-only code (MusicDirector, the sample) is compile-checked against
stub UnityEngine types (clients/unity/Tests~/UnityStubs) with UNITY_5_3_OR_NEWER defined.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from servers import PROFILES, Conn, LoadingServer, ServerProcess, audio_of  # 1 s tracks; ServerTests.cs relies on them
from troubadour import protocol as P

ROOT = Path(__file__).resolve().parents[1]
UNITY = ROOT / "clients" / "unity"
SAMPLE = ROOT / "unity_sample"
VECTORS = ROOT / "protocol" / "vectors" / "vectors.json"
MCS, MONO = shutil.which("mcs"), shutil.which("mono")
# 7.2 is the newest language version mcs knows; Unity 2019.4 compiles C# 7.3, so this is the stricter check.
MCS_FLAGS = ["-langversion:7.2", "-warn:4", "-warnaserror", "-r:System.dll", "-r:System.Core.dll"]

needs_mcs = pytest.mark.skipif(MCS is None, reason="needs mcs (apt-get install mono-mcs)")
needs_mono = pytest.mark.skipif(MCS is None or MONO is None, reason="needs mcs and mono (apt-get install mono-mcs)")

PROFILES_V2 = PROFILES.replace('mood = "happy"', 'mood = "mysterious"')   # changes `menu` only
SERVER_CHECKS = {
    "zmtp_handshake", "info", "health", "list_profiles", "subscribe", "get_track_cold", "get_track_cached",
    "get_track_not_streamed", "prefetch_with_progress", "events_during_prefetch", "fallback_logged_once",
    "error_unknown_context",
    "error_invalid_param_field", "cancel", "hot_swap_event", "reconnect_resends_stream",
    "reconnect_resumed_audio_intact", "reconnect_next_request", "resubscribed", "events_after_reconnect",
}


def compile_cs(out: Path, sources, *flags) -> None:
    cmd = [MCS, *MCS_FLAGS, *flags, f"-out:{out}", *map(str, sources)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"mcs failed:\n{r.stdout}{r.stderr}"


def runtime_sources() -> list[Path]:
    return sorted((UNITY / "Runtime").glob("*.cs"))


def parse(stdout: str) -> tuple[set, list]:
    lines = stdout.splitlines()
    return {l[3:].strip() for l in lines if l.startswith("OK ")}, [l for l in lines if l.startswith("FAIL")]


@pytest.fixture(scope="module")
def test_exe(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unity_client") / "TroubadourTests.exe"
    compile_cs(out, runtime_sources() + sorted((UNITY / "Tests~").glob("*.cs")))
    return out


@needs_mono
def test_engine_clients_unity_vectors(test_exe):
    r = subprocess.run([MONO, str(test_exe), "vectors", str(VECTORS)], capture_output=True, text=True, timeout=120)
    ok, fails = parse(r.stdout)
    count = len(json.loads(VECTORS.read_text())["vectors"])
    assert not fails and r.returncode == 0, r.stdout + r.stderr
    assert f"VECTORS {count} 0" in r.stdout and len(ok) == count


@needs_mono
def test_engine_clients_unity_units(test_exe):
    r = subprocess.run([MONO, str(test_exe), "unit"], capture_output=True, text=True, timeout=60)
    ok, fails = parse(r.stdout)
    assert not fails and r.returncode == 0, r.stdout + r.stderr
    assert {"buffer_underrun_is_silence", "buffer_loops_its_region", "buffer_plays_once_then_silence",
            "buffer_write_split_inside_a_frame", "buffer_cut_short_loops_what_arrived", "msgpack_keys_sorted_by_code_point", "track_resume_skips_delivered_bytes", "track_checksum_mismatch_detected",
            "offline_request_fails_with_connection_lost"} <= ok


@needs_mono
def test_engine_clients_unity_zmtp_heartbeat_and_long_frames(test_exe):
    """The hand-written ZMTP against libzmq: handshake, PING -> PONG while idle, 1- and 8-byte frame sizes."""
    import zmq

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.HEARTBEAT_IVL, 100)       # libzmq PINGs every 100 ms ...
    router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 500)   # ... and drops a peer that stays silent 500 ms after one
    port = router.bind_to_random_port("tcp://127.0.0.1")
    proc = subprocess.Popen([MONO, str(test_exe), "zmtp", "127.0.0.1", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert router.poll(20000), "no message from the C# DEALER"
        identity, *frames = router.recv_multipart()
        assert frames[:2] == [b"", b"echo"] and len(frames[2]) == 300 and len(frames[3]) == 70000
        assert frames[3] == bytes((i * 7) % 256 for i in range(70000))
        router.send_multipart([identity, *frames])
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        router.close(0)
        if proc.poll() is None:
            proc.kill()
    ok, fails = parse(stdout)
    assert not fails and proc.returncode == 0, stdout + stderr
    assert {"zmtp_connect", "zmtp_heartbeat_and_long_frames"} <= ok


@needs_mcs
def test_engine_clients_unity_director_compiles_with_unity_stubs(tmp_path):
    sources = (runtime_sources() + [UNITY / "Tests~" / "UnityStubs" / "UnityEngine.cs"]
               + sorted((SAMPLE / "Assets").rglob("*.cs")))
    compile_cs(tmp_path / "UnityCheck.dll", sources, "-target:library", "-define:UNITY_5_3_OR_NEWER",
               "-define:UNITY_EDITOR")


def test_engine_clients_unity_director_lifecycle():
    """Unity rules the stubs cannot check. A script reload in play mode calls OnDisable, never OnDestroy, before it
    unloads the domain, so the client's socket threads must stop there; and clips from AudioClip.Create live until
    Destroy, so each replaced or cleared clip is destroyed."""
    src = (UNITY / "Runtime" / "MusicDirector.cs").read_text()
    on_disable = re.search(r"void OnDisable\(\)\s*\{(.*?)\n        \}", src, re.S)
    assert on_disable and "CloseClient();" in on_disable.group(1)
    assert re.search(r"void CloseClient\(\)\s*\{[^}]*client\.Dispose\(\);", src)
    release = re.search(r"void ReleaseClip\(\)\s*\{(.*?)\n            \}", src, re.S)
    assert release and "Object.Destroy(clip)" in release.group(1)
    assert src.count("AudioClip.Create(") == 1 and "ReleaseClip();\n" in src.split("AudioClip.Create(")[0][-200:]


def test_engine_clients_unity_package_layout():
    """What the Package Manager reads: package.json, the asmdef, a .meta (own GUID) per asset, the sample's path."""
    package = json.loads((UNITY / "package.json").read_text())
    assert package["name"] == "com.troubadour.client" and package["unity"] == "2019.4"
    assert json.loads((UNITY / "Runtime" / "Troubadour.Runtime.asmdef").read_text())["name"] == "Troubadour.Runtime"
    manifest = json.loads((SAMPLE / "Packages" / "manifest.json").read_text())
    ref = manifest["dependencies"][package["name"]]
    assert ref.startswith("file:") and (SAMPLE / "Packages" / ref[5:]).resolve() == UNITY.resolve()
    guids = []
    for path in sorted(UNITY.rglob("*")):
        rel = path.relative_to(UNITY)
        if path.suffix == ".meta" or any(part.endswith("~") for part in rel.parts):
            continue   # Unity ignores folders ending in ~ (Tests~)
        meta = path.with_name(path.name + ".meta")
        assert meta.is_file(), f"{meta.relative_to(ROOT)} is missing (needed when installed from git)"
        guids.append(re.search(r"^guid: ([0-9a-f]{32})$", meta.read_text(), re.M).group(1))
    assert len(guids) == len(set(guids)) and len(guids) >= 5


def _reader(stream, q):
    for line in stream:
        q.put(line.rstrip("\n"))
    q.put(None)


@needs_mono
def test_engine_clients_unity_against_server(test_exe, tiny_model, tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    srv = ServerProcess(tiny_model, tmp_path, profiles).start()
    out, err_lines, proc = [], [], None
    try:
        proc = subprocess.Popen([MONO, str(test_exe), "server", "127.0.0.1", str(srv.port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
        deadline = time.time() + 240
        try:
            while True:
                line = lines.get(timeout=max(1.0, deadline - time.time()))
                if line is None:
                    break
                out.append(line)
                if line.startswith("CMD "):
                    what = line.split()[1]
                    if what == "profiles_v2":
                        profiles.write_text(PROFILES_V2)
                    elif what == "profiles_v1":
                        profiles.write_text(PROFILES)
                    elif what == "restart":
                        assert srv.stop() == 0
                        srv.start()
                    else:
                        raise AssertionError(f"unknown driver command {line!r}")
                    proc.stdin.write("ACK\n")
                    proc.stdin.flush()
            rc = proc.wait(30)
        except queue.Empty:
            raise AssertionError("the C# program hung:\n" + "\n".join(out) + "".join(err_lines[-40:])) from None
        # The same track fetched by the raw Python protocol connection.
        conn = Conn(srv.address)
        msgs = conn.call(P.GET_TRACK, context="battle", sample_rate=44100, stream=True)
        conn.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        srv.stop()
    log = "\n".join(out) + "\n--- client stderr ---\n" + "".join(err_lines[-60:]) + "\n--- server ---\n" + srv.log()[-3000:]
    print(log)   # shown with -s or on failure
    ok, fails = parse("\n".join(out))
    assert not fails and rc == 0, log
    assert SERVER_CHECKS <= ok, f"missing: {SERVER_CHECKS - ok}\n{log}"
    (checksum,) = [l.split() for l in out if l.startswith("CHECKSUM ")]
    _, _, _, track_id, end_sha, own_sha = checksum
    assert msgs[-1].type == P.END and msgs[0].body["cached"] is True
    assert msgs[0].body["track_id"] == track_id
    assert own_sha == end_sha == msgs[-1].body["sha256"] == hashlib.sha256(audio_of(msgs)).hexdigest()


@needs_mono
def test_engine_clients_unity_music_director(tmp_path):
    """MusicDirector run as Unity runs it (Tests~/DirectorTests.cs: magic methods, a frame clock, an audio thread
    pulling the clips, on the UnityStubs stand-ins) against a scripted server: it plays; a track failing during its
    crossfade leaves the old one playing at full volume (Update does not throw); the heard track cut short keeps
    sounding (loops what arrived) and is fetched again; an audio device change (clips lost) resumes the music;
    every clip is destroyed once released."""
    from fakeserver import DirectorServer

    exe = tmp_path / "DirectorTests.exe"
    compile_cs(exe, runtime_sources() + [UNITY / "Tests~" / "UnityStubs" / "UnityEngine.cs",
                                         UNITY / "Tests~" / "DirectorTests.cs"], "-define:UNITY_5_3_OR_NEWER")
    srv = DirectorServer()
    proc = subprocess.Popen([MONO, str(exe), "127.0.0.1", str(srv.port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    out = []
    try:
        for line in proc.stdout:
            out.append(line.rstrip("\n"))
            if line.startswith("CMD hold "):
                srv.hold(line.split()[2])
            elif line.startswith("CMD fail "):
                srv.fail(*line.split()[2:4])
            elif line.startswith("CMD swap "):
                srv.swap(line.split()[2])
            else:
                continue
            proc.stdin.write("ACK\n")
            proc.stdin.flush()
        rc = proc.wait(30)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()
    ok, fails = parse("\n".join(out))
    log = "\n".join(out) + "\n--- stderr ---\n" + err[-3000:]
    assert not fails and rc == 0, log
    assert {"plays", "error_during_crossfade_keeps_the_old_track", "cut_short_track_keeps_sounding_then_reloads",
            "device_change_resumes_the_music", "hot_swap_with_the_same_track_id_reloads",
            "released_clips_destroyed"} <= ok, log
    assert srv.requests["flaky"] == 3 and srv.requests["dies"] == 1, srv.requests


@needs_mono
def test_engine_clients_unity_waits_for_a_loading_server(test_exe, engine, tiny_model, tmp_path):
    """A game started before the server finished loading its model: the client connects (info is answered),
    sees health `loading`, and its track request waits through the load on heartbeats alone (7 s, more than
    3 heartbeats of 2 s) without reconnecting, then gets the track."""
    srv = LoadingServer(engine, tiny_model, tmp_path, PROFILES)
    proc = subprocess.Popen([MONO, str(test_exe), "loading", "127.0.0.1", str(srv.port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    out, err_lines = [], []
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
        threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True).start()
        while (line := lines.get(timeout=120)) is not None:
            out.append(line)
            if line == "CMD release":
                time.sleep(7)
                assert not srv.ready.is_set()
                srv.release()
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()
    log = "\n".join(out) + "\n--- client stderr ---\n" + "".join(err_lines[-40:])
    ok, fails = parse("\n".join(out))
    assert not fails and rc == 0, log
    assert {"loading_connected", "loading_health", "loading_track_waited", "loading_no_reconnect",
            "loaded_health"} <= ok, log


@needs_mono
def test_engine_clients_unity_undecodable_replies(test_exe):
    """A server sending undecodable messages (tests/fakeserver.py): the one carrying a request's id fails that
    request, one with id nil fails nothing, one with no readable id fails every open get_track (which has no
    timeout, so it would wait forever); what failed is cancelled and the connection goes on."""
    from fakeserver import BadRepliesServer

    srv = BadRepliesServer()
    try:
        r = subprocess.run([MONO, str(test_exe), "badreply", "127.0.0.1", str(srv.port)], capture_output=True,
                           text=True, timeout=120)
        deadline = time.monotonic() + 10
        while len(srv.cancelled) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        srv.stop()
    ok, fails = parse(r.stdout)
    assert not fails and r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert {"bad_connected", "bad_own_id_fails_its_request", "bad_nil_id_fails_nothing",
            "bad_unreadable_fails_all_open", "bad_connection_goes_on"} <= ok, r.stdout
    ids = srv.track_ids
    assert sorted(srv.cancelled) == sorted([ids["broken_own"], ids["unreadable_a"], ids["unreadable_b"]])
