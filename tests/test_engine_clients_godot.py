"""The Godot addon (clients/godot/addons/troubadour) and the sample project (godot_sample/).

The addon's protocol core and nodes are written in GDScript that both Godot 3.2+ and Godot 4 run. CI has
Godot 3.2 (Debian's godot3-server) and no Godot 4, so:

* every .gd file must parse with gdtoolkit's Godot 4 grammar (gdparse);
* clients/godot/tests/run_tests.gd runs headless on Godot 3 against the golden vectors and a real
  `troubadour serve` (tiny model): handshake, info, cold and cached streamed tracks (SHA-256 checked
  against the server's and against a raw Python fetch), prefetch progress, an error reply, cancel,
  a hot-swap event after this driver edits the profiles file, heartbeats against a frozen (SIGSTOP)
  server, a server restart while connected, the client node's signals and the music player node;
* godot_sample gets the addon by a README copy step (no second copy in the repository).

The Godot tests skip only where godot3-server is missing; CI installs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from servers import PROFILES, Conn, LoadingServer, ServerProcess, audio_of
from troubadour import protocol as P

ROOT = Path(__file__).resolve().parents[1]
GODOT_CLIENT = ROOT / "clients" / "godot"
ADDON = GODOT_CLIENT / "addons" / "troubadour"
SAMPLE = ROOT / "godot_sample"
VECTORS = ROOT / "protocol" / "vectors" / "vectors.json"
GODOT = os.environ.get("TROUBADOUR_GODOT3") or shutil.which("godot3-server") or shutil.which("godot3")
RUN_TIMEOUT = 170   # seconds for the whole headless Godot run

needs_godot = pytest.mark.skipif(GODOT is None, reason="godot3-server is not installed (apt-get install godot3-server)")


def gd_files() -> list[Path]:
    return sorted(p for base in (GODOT_CLIENT, SAMPLE) for p in base.rglob("*.gd"))


# ---------------------------------------------------------------- static checks (no Godot needed)
def test_engine_clients_godot_scripts_parse_as_godot4():
    pytest.importorskip("gdtoolkit.parser", reason="gdtoolkit (gdparse) is not installed")
    from gdtoolkit.parser import parser as gdparser

    with pytest.raises(Exception):          # the grammar is Godot 4's: Godot 3's `export` is refused
        gdparser.parse("export var x = 1\n")
    files = gd_files()
    assert len(files) >= 8, files
    errors = []
    for path in files:
        try:
            gdparser.parse(path.read_text(encoding="utf-8"))
        except Exception as e:  # lark's UnexpectedInput and friends
            errors.append(f"{path.relative_to(ROOT)}: {type(e).__name__}: {str(e)[:300]}")
    assert not errors, "\n".join(errors)


NEUTRAL = sorted((ADDON / "core").glob("*.gd")) + [ADDON / "client.gd", ADDON / "player.gd"]
# Spellings that exist in only one of Godot 3 and Godot 4 (the neutral files go through core/compat.gd).
NOT_NEUTRAL = [r"^\s*@", r"^\s*(export|onready|tool)\b", r"\b(await|yield|super)\b", r"\bfunc\s*\(",
               r"\b(Pool|Packed)\w*Array\b", r"\bArray\[", r"\bTYPE_(REAL|FLOAT|RAW_ARRAY|PACKED_\w+)\b",
               r":=", r"\bOS\.get_ticks", r"\bTime\.", r"\bFileAccess\b", r"\bFile\.new\b",
               r"\.(to_utf8|to_utf8_buffer|to_ascii|to_ascii_buffer|subarray|remove_at|is_empty|empty)\(",
               r"\bsort_custom\b", r"\bconnect\(\s*\"\w+\"\s*,\s*self", r"\bCallable\b"]


def test_engine_clients_godot_core_is_version_neutral():
    """The shared files avoid what Godot 3 or 4 lacks; compat.gd alone holds the version switches."""
    problems = []
    for path in NEUTRAL:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if path.name == "compat.gd" and re.search(r"\.(to_utf8|to_ascii|subarray)\w*\(", code):
                continue            # the shims themselves
            for pattern in NOT_NEUTRAL:
                if re.search(pattern, code):
                    problems.append(f"{path.name}:{n}: {line.strip()}  [{pattern}]")
    assert not problems, "\n".join(problems)


def godot4_sources() -> dict[str, str]:
    """Godot-4-only GDScript: the sample, the editor plugin and the READMEs' gdscript blocks."""
    out = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in (SAMPLE / "main.gd", ADDON / "plugin.gd")}
    for readme in (GODOT_CLIENT / "README.md", SAMPLE / "README.md"):
        for i, block in enumerate(re.findall(r"```gdscript\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)):
            out[f"{readme.relative_to(ROOT)} block {i + 1}"] = block
    return out


def test_engine_clients_godot4_code_does_not_infer_from_the_addon():
    """The addon's API is untyped (it must run on Godot 3), so in Godot 4 `var x := addon_object.anything`
    is a parse error ("Cannot infer the type ... the value doesn't have a set type"): a type is needed."""
    scripts = {p.stem for p in (ADDON / "client.gd", ADDON / "player.gd")}
    problems = []
    for name, text in godot4_sources().items():
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        types = {"TroubadourClient", "TroubadourPlayer"}
        types |= {c for c, s in re.findall(r"const\s+(\w+)\s*=\s*preload\(\"[^\"]*/(\w+)\.gd\"\)", code) if s in scripts}
        alt = "|".join(sorted(types))
        objects = set(re.findall(rf"\b(\w+)\s*:\s*(?:{alt})\b", code))
        objects |= set(re.findall(rf"\bvar\s+(\w+)\s*:?=\s*(?:{alt})\.new\(", code))
        for n, line in enumerate(code.splitlines(), 1):
            m = re.search(r"\bvar\s+\w+\s*:=(.*)", line)
            if m and any(re.search(rf"\b{o}\.(?!new\()", m.group(1)) for o in objects):
                problems.append(f"{name}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_engine_clients_godot_sample_uses_the_addon_from_clients(tmp_path):
    """The sample has no copy of its own (one source of truth); README's copy step makes it runnable."""
    assert not (SAMPLE / "addons" / "troubadour" / "plugin.gd").exists() or \
        (SAMPLE / ".gitignore").read_text().count("addons/troubadour")
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    assert "cp -r clients/godot/addons/troubadour godot_sample/addons/" in readme
    sample = tmp_path / "godot_sample"
    shutil.copytree(SAMPLE, sample, ignore=shutil.ignore_patterns("addons"))
    shutil.copytree(ADDON, sample / "addons" / "troubadour")
    assert (sample / "addons" / "troubadour" / "plugin.cfg").is_file()
    project = (sample / "project.godot").read_text(encoding="utf-8")
    for res in re.findall(r'"res://([^"]+)"', project):
        assert (sample / res).exists(), f"project.godot points at a missing res://{res}"


def test_engine_clients_godot_sample_project_is_wired():
    project = (SAMPLE / "project.godot").read_text(encoding="utf-8")
    assert "config_version=5" in project                      # a Godot 4 project
    assert 'run/main_scene="res://main.tscn"' in project
    assert "res://addons/troubadour/plugin.cfg" in project    # the plugin is enabled
    scene = (SAMPLE / "main.tscn").read_text(encoding="utf-8")
    assert scene.startswith("[gd_scene") and "format=3" in scene
    assert 'path="res://main.gd"' in scene
    cfg = (ADDON / "plugin.cfg").read_text(encoding="utf-8")
    assert 'script="plugin.gd"' in cfg
    main = (SAMPLE / "main.gd").read_text(encoding="utf-8")
    for needle in ("prefetch", "main_menu", "exploration", "battle", "victory", "Label"):
        assert needle in main, needle
    # every $Node/Path main.gd uses exists in the scene
    nodes = {(parent, name) for name, parent in re.findall(r'\[node name="(\w+)" type="\w+" parent="([^"]*)"\]', scene)}
    for path in set(re.findall(r"\$([\w/]+)", main)):
        parent, _, name = path.rpartition("/")
        assert (parent or ".", name) in nodes, f"main.gd uses ${path}, not in main.tscn"
    # the contexts the sample plays are in the bundled profiles that `troubadour serve` uses by default
    bundled = (ROOT / "troubadour" / "data" / "profiles.toml").read_text(encoding="utf-8")
    for context in ("main_menu", "exploration", "battle", "victory"):
        assert f"[contexts.{context}]" in bundled, context


# ---------------------------------------------------------------- vectors for the Godot runner
def canon(v) -> str:
    """Canonical text of a vector's decoded JSON value, as run_tests.gd writes a decoded msgpack value."""
    if v is None:
        return "n"
    if v is True:
        return "T"
    if v is False:
        return "F"
    if isinstance(v, int):
        return f"i{v}"
    if isinstance(v, float):
        return "fnan" if math.isnan(v) else "f" + struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "s" + v.encode("utf-8").hex()
    if isinstance(v, list):
        return "[" + ",".join(canon(x) for x in v) + "]"
    assert isinstance(v, dict), v
    if set(v) == {"$bin"}:
        return "b" + v["$bin"]
    if set(v) == {"$int"}:
        return "i" + str(int(v["$int"]))
    if set(v) == {"$float"}:
        return canon(float(v["$float"]))
    items = sorted((k.encode("utf-8").hex(), canon(x)) for k, x in v.items())
    return "{" + ",".join(f"{k}:{x}" for k, x in items) + "}"


def vector_lines() -> list[str]:
    lines = []
    for v in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]:
        if v["valid"]:
            d = v["decoded"]
            expected = f"{d['type']}|{canon(d['body'])}|{d['payload_hex'] or '-'}"
            stage = "-"
        else:
            e = v["error"]
            expected = f"{e['code']}|{e['field'] or '-'}|{canon(e['id'])}"
            stage = e["stage"]
        lines.append("\t".join([v["name"], v["direction"], "1" if v["valid"] else "0", stage,
                                ",".join(v["frames"]), expected]))
    return lines


def test_engine_clients_godot_vector_conversion():
    """The pre-converted vectors agree with the reference decoder (so run_tests.gd compares to the truth)."""
    def canon_py(x):  # a Python-decoded value, written like canon()
        if isinstance(x, bytes):
            return "b" + x.hex()
        if isinstance(x, dict):
            return "{" + ",".join(f"{k.encode().hex()}:{canon_py(x[k])}" for k in sorted(x)) + "}"
        if isinstance(x, list):
            return "[" + ",".join(canon_py(i) for i in x) + "]"
        return canon(x)

    lines = vector_lines()
    assert len(lines) == len(json.loads(VECTORS.read_text())["vectors"])
    for line in lines:
        name, direction, valid, _, frames, expected = line.split("\t")
        if valid == "1":
            msg = P.decode([bytes.fromhex(f) for f in frames.split(",")], reply=direction == "reply")
            payload = bytes(msg.payload).hex() if msg.payload is not None else "-"
            assert expected == f"{msg.type}|{canon_py(msg.body)}|{payload}", name


# ---------------------------------------------------------------- headless Godot 3 run
class GodotRun:
    """godot3-server running run_tests.gd; relays its @@ACTION requests to `handlers`."""

    def __init__(self, project: Path, handlers: dict):
        self.project, self.handlers = project, handlers
        self.lines: list[str] = []
        self.handled: list[str] = []
        self.errors: list[str] = []

    def run(self, timeout: float) -> int:
        env = dict(os.environ, LANG="en_US.UTF-8", HOME=str(self.project / "home"))
        env.pop("LC_ALL", None)
        (self.project / "home").mkdir(exist_ok=True)
        cmd = ["timeout", "-k", "5", str(int(timeout)), GODOT, "--no-window", "--path", str(self.project),
               "-s", "res://tests/run_tests.gd"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", env=env)
        actions: list[str] = []

        def read():
            for line in proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("@@ACTION "):
                    actions.append(line.split()[1])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while proc.poll() is None or actions:
            if actions:
                name = actions.pop(0)
                try:
                    self.handlers[name]()
                    self.handled.append(name)
                except Exception as e:  # reported, and the script times out waiting for its ack
                    self.errors.append(f"action {name}: {type(e).__name__}: {e}")
                    continue
                (self.project / "work" / f"ack_{name}").write_text("ok")
            time.sleep(0.05)
        reader.join(10)
        return proc.returncode

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def assemble_project(dest: Path, port: int | None) -> Path:
    (dest / "addons").mkdir(parents=True)
    shutil.copytree(ADDON, dest / "addons" / "troubadour")
    (dest / "tests").mkdir()
    shutil.copy(GODOT_CLIENT / "tests" / "run_tests.gd", dest / "tests" / "run_tests.gd")
    (dest / "project.godot").write_text("config_version=4\n")  # a Godot 3 project
    (dest / "work").mkdir()
    (dest / "work" / "vectors.txt").write_text("\n".join(vector_lines()) + "\n", encoding="utf-8")
    (dest / "work" / "config.txt").write_text(f"port={port}\n" if port else "")
    return dest


def fetch_sha(address: str, **req) -> tuple[str, dict]:
    conn = Conn(address)
    try:
        msgs = conn.call(P.GET_TRACK, stream=True, **req)
    finally:
        conn.close()
    assert msgs[-1].type == P.END, [m.body for m in msgs]
    return hashlib.sha256(audio_of(msgs)).hexdigest(), msgs[0].body


REQUIRED = ["vectors", "msgpack_roundtrip", "pcm_decode", "error_codes", "handshake", "info_health", "cold_track",
            "cached_track", "prefetch_progress", "fallback_warning", "unknown_context_error", "cancel", "hot_swap", "heartbeat",
            "reconnect", "client_node", "player"]


@needs_godot
def test_engine_clients_godot_headless_against_server(tiny_model, tmp_path):
    work = tmp_path / "server"
    work.mkdir()
    profiles = work / "profiles.toml"
    profiles.write_text(PROFILES)
    server = ServerProcess(tiny_model, work, profiles).start()
    python_sha = {}

    def edit_profiles():
        # The raw Python fetch of the track Godot fetched cold (now cached), before the edit replaces it.
        python_sha["battle"], header = fetch_sha(server.address, context="battle", variant=0)
        assert header["cached"] is True
        profiles.write_text(profiles.read_text().replace('mood = "tense"', 'mood = "mysterious"'))

    def restart():
        assert server.stop() == 0
        server.start()

    project = assemble_project(tmp_path / "project", server.port)
    run = GodotRun(project, {"edit_profiles": edit_profiles, "restart": restart,
                             "freeze": lambda: server.proc.send_signal(signal.SIGSTOP),
                             "thaw": lambda: server.proc.send_signal(signal.SIGCONT)})
    try:
        rc = run.run(RUN_TIMEOUT)
    finally:
        if server.proc and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()
    out = run.output
    report = f"godot exit {rc}\n--- godot output ---\n{out}\n--- server log (last start) ---\n{server.log()[-3000:]}"
    assert not run.errors, f"{run.errors}\n{report}"
    script_errors = [l for l in run.lines if re.search(r"SCRIPT ERROR|Parse Error|Script error|Invalid call|"
                                                           r"Invalid get index|Invalid operands|Stack Trace|"
                                                           r"Attempt to call", l)]
    assert not script_errors, f"script errors: {script_errors}\n{report}"
    assert rc == 0, report
    assert "DONE" in run.lines, f"run_tests.gd did not finish\n{report}"
    fails = [l for l in run.lines if l.startswith("FAIL ")]
    assert not fails, f"{fails}\n{report}"
    ok = {l.split()[1] for l in run.lines if l.startswith("OK ")}
    assert set(REQUIRED) <= ok, f"missing: {set(REQUIRED) - ok}\n{report}"
    assert run.handled == ["edit_profiles", "freeze", "thaw", "restart"], report
    warned = [l for l in run.lines if "'menuu' is not in the server's profiles" in l]
    assert len(warned) == 1 and "WARNING" in warned[0], f"fallback warnings: {warned}\n{report}"
    shas = dict(l.split()[1:3] for l in run.lines if l.startswith("SHA "))
    assert shas.get("cold_battle") == python_sha["battle"], report
    print(out)   # shown with pytest -s / -rP


@needs_godot
def test_engine_clients_godot_vectors_without_server(tmp_path):
    """The vectors alone (a quick check that pins protocol failures apart from server ones)."""
    run = GodotRun(assemble_project(tmp_path / "project", None), {})
    rc = run.run(60)
    assert rc == 0 and "DONE" in run.lines, run.output
    assert not [l for l in run.lines if "SCRIPT ERROR" in l or "Parse Error" in l], run.output
    assert any(l.startswith("OK vectors") for l in run.lines), run.output
    assert any(l.startswith("OK msgpack_roundtrip") for l in run.lines), run.output
    assert any(l.startswith("OK pcm_decode") for l in run.lines), run.output
    assert any(l.startswith("OK error_codes") for l in run.lines), run.output
    assert not [l for l in run.lines if l.startswith("FAIL ")], run.output


def run_mode(tmp_path, srv, mode: str, handlers: dict, after=None) -> GodotRun:
    """run_tests.gd in `mode` against `srv` (stopped afterwards; `after()` runs first), checked to have run
    through without script errors."""
    project = assemble_project(tmp_path / "project", srv.port)
    with open(project / "work" / "config.txt", "a") as f:
        f.write(f"mode={mode}\n")
    run = GodotRun(project, handlers)
    try:
        rc = run.run(90)
        if after:
            after()
    finally:
        srv.stop()
    script_errors = [l for l in run.lines if re.search(r"SCRIPT ERROR|Parse Error|Script error|Invalid call|"
                                                           r"Invalid get index|Stack Trace", l)]
    assert not script_errors and not run.errors and rc == 0 and "DONE" in run.lines, run.output
    return run


@needs_godot
def test_engine_clients_godot_waits_for_a_loading_server(engine, tiny_model, tmp_path):
    """A game started before the server finished loading its model: the GDScript client connects (info is
    answered), sees health `loading`, and its track request waits through the load (7 s, more than 3 heartbeats
    of 2 s) without a disconnect, then gets the track."""
    work = tmp_path / "server"
    work.mkdir()
    srv = LoadingServer(engine, tiny_model, work, PROFILES)
    run = run_mode(tmp_path, srv, "loading", {"release": lambda: threading.Timer(7.0, srv.release).start()})
    assert any(l.startswith("OK loading") for l in run.lines), run.output
    assert run.handled == ["release"], run.output


@needs_godot
def test_engine_clients_godot_undecodable_replies(tmp_path):
    """A server sending undecodable messages (tests/fakeserver.py): the one carrying a request's id fails that
    request, one with id nil fails nothing (reported with handle -1), one with no readable id fails every open
    get_track (which has no timeout, so it would wait forever); what failed is cancelled, the connection goes on."""
    from fakeserver import BadRepliesServer

    srv = BadRepliesServer()

    def cancels_arrive():
        deadline = time.monotonic() + 10
        while len(srv.cancelled) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)

    run = run_mode(tmp_path, srv, "badreply", {}, cancels_arrive)
    assert any(l.startswith("OK bad_replies") for l in run.lines), run.output
    ids = srv.track_ids
    assert sorted(srv.cancelled) == sorted([ids["broken_own"], ids["unreadable_a"], ids["unreadable_b"]]), run.output


@needs_godot
def test_engine_clients_godot_keeps_messages_that_came_before_a_close(tmp_path):
    """A server that sends a whole track and closes the connection: the bytes read together with the close are
    parsed before the connection is reported lost (they were dropped, and the finished track resent forever)."""
    from fakeserver import ClosingServer

    srv = ClosingServer()
    run = run_mode(tmp_path, srv, "closing", {})
    assert any(l.startswith("OK last_words") for l in run.lines), run.output
    assert srv.requests == {"last_words": 1}, run.output


@needs_godot
def test_engine_clients_godot_player_cut_short(tmp_path):
    """The player against a scripted server that cuts streams short (tests/fakeserver.py's DirectorServer): a
    track failing while it waits for its bar line leaves the heard one playing at full volume (not faded out to
    silence); the heard track cut short loops what arrived (no underrun) and is fetched again (reason resume).
    The game changing its mind while a track waits for its bar line: A -> B -> C never lets B play; A -> B -> A
    keeps A playing."""
    from fakeserver import DirectorServer

    srv = DirectorServer()
    run = run_mode(tmp_path, srv, "director", {
        "hold_dies": lambda: srv.hold("dies"), "fail_dies": lambda: srv.fail("dies", "engine_error"),
        "hold_flaky": lambda: srv.hold("flaky"), "fail_flaky": lambda: srv.fail("flaky", "busy")})
    assert any(l.startswith("OK cut_short") for l in run.lines), run.output
    assert any(l.startswith("OK change_of_mind") for l in run.lines), run.output
    # (third: fetched once, not again when the game went back to it)
    assert srv.requests == {"steady": 1, "dies": 1, "flaky": 2, "first": 1, "second": 1, "third": 1, "fourth": 1}, \
        (srv.requests, run.output)
