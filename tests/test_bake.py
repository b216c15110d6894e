"""`troubadour bake`: the bundled profiles baked with the tiny model, through the CLI and a real server."""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from conftest import troubadour_cmd
from servers import ServerProcess
from troubadour import audio, bake as B, loops
from troubadour.bake import bake
from troubadour.bake_sources import EngineSource
from troubadour.profiles import default_profiles_path, load_profiles

# Short tracks keep the test fast; 4 s still fits a bar of the slowest bundled tempo (70 bpm).
OPTS = ["--variants", "2", "--max-duration", "4", "--sample-rate", "48000"]
SUMMARY = re.compile(r"(\d+) tracks in .*: (\d+) generated \((\d+) batches\), (\d+) from cache, (\d+) up to date")
FRAME_S = 0.02     # tiny model codec frame


def run(args, env, cwd, timeout=400):
    r = subprocess.run(troubadour_cmd() + args, env=env, cwd=cwd, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r


def cli_environment() -> dict:
    # One torch thread: the tiny model's matrices are too small to gain from more, and on a busy 2-core
    # machine threads contending made these runs ~6x slower.
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                PYTHONPATH=str(Path(__file__).resolve().parents[1]))


def summary(stderr: str) -> dict:
    m = SUMMARY.search(stderr)
    assert m, stderr
    return dict(zip(("tracks", "generated", "batches", "from_cache", "up_to_date"), map(int, m.groups())))


def files_state(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.read_bytes())
            for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts and p.name != ".bake.lock"}


def assert_balanced(page: str) -> None:
    """Every element the page opens is closed in order (void and SVG leaf elements excepted)."""
    from html.parser import HTMLParser

    void = {"meta", "link", "br", "img", "input", "source", "hr", "rect", "path"}
    stack, errors = [], []

    class Check(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag not in void:
                stack.append(tag)

        def handle_endtag(self, tag):
            if tag not in void and (not stack or stack.pop() != tag):
                errors.append((tag, self.getpos()))

    Check().feed(page)
    assert errors == [] and stack == [], (errors, stack)


@pytest.fixture(scope="module")
def baked(tiny_model, tmp_path_factory):
    env = cli_environment()
    cwd = tmp_path_factory.mktemp("bake")
    args = ["bake", str(default_profiles_path()), "--out", "out", "--model", str(tiny_model), "--device", "cpu",
            *OPTS]
    r = run(args, env, cwd)
    return {"dir": cwd / "out", "stderr": r.stderr, "stdout": r.stdout, "args": args, "env": env, "cwd": cwd}


def test_every_track_written_with_loop_points_and_consistent_manifest(baked):
    out = baked["dir"]
    assert baked["stdout"].strip().endswith("manifest.json")
    s = summary(baked["stderr"])
    profiles = load_profiles(default_profiles_path())
    assert s == {"tracks": 2 * len(profiles.contexts), "generated": 2 * len(profiles.contexts),
                 "batches": len(profiles.contexts), "from_cache": 0, "up_to_date": 0}   # one batch per context
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == B.FORMAT_VERSION and m["sample_rate"] == 48000 and m["format"] == "wav"
    assert m["model"]["identity"] and m["game"] == profiles.game
    assert list(m["contexts"]) == list(profiles.contexts)
    for name, ctx in profiles.contexts.items():
        c = m["contexts"][name]
        assert c["prompt"] == ctx.prompt and c["loop"] == ctx.loop and c["bpm"] == ctx.bpm
        # the genre its prompt was built with: its own, or the game's it follows (it said null)
        assert c["genre"] == ctx.source_fields.get("genre", profiles.game.get("genre")) and c["genre"]
        assert c["meter"] == ctx.meter and c["loudness_target"] == ctx.loudness
        assert c["params"]["seed"] == ctx.params.seed and c["params"]["top_k"] == ctx.params.top_k
        assert [v["variant"] for v in c["variants"]] == [0, 1]
        for v in c["variants"]:
            assert v["file"] == f"{name}/{name}_v{v['variant']}.wav"
            assert v["seed"] == ctx.params.seed + v["variant"]
            path = out / v["file"]
            info = sf.info(str(path))
            assert info.samplerate == 48000 and info.frames == v["frames"]
            assert v["duration"] == pytest.approx(info.frames / 48000, abs=1e-5)
            assert 0.4 < v["duration"] <= 4.0
            assert B._sha256(path) == v["sha256"]
            sidecar = json.loads(path.with_suffix(".json").read_text())
            assert {k: sidecar[k] for k in B.ENTRY_KEYS} == v
            if ctx.bpm is not None and not ctx.loop:          # stingers are cut to whole bars
                bars = info.frames / (loops.bar_seconds(ctx.bpm, ctx.meter) * 48000)
                assert bars == pytest.approx(round(bars), abs=1e-3)
            if ctx.loop:
                assert audio.read_loop_points(path) == (v["loop_start"], v["loop_end"])
                assert v["loop_end"] == info.frames and 0 < v["loop_start"] < v["loop_end"]
                assert v["loop_start_s"] == pytest.approx(v["loop_start"] / 48000, abs=1e-5)
            else:
                assert audio.read_loop_points(path) is None and v["loop_start"] is None and v["seam"] is None
    info_txt = (out / "soundtrack_info.txt").read_text()
    for name, c in m["contexts"].items():
        assert f"== {name}:" in info_txt and c["prompt"] in info_txt
        assert all(v["file"] in info_txt for v in c["variants"])
    page = (out / "index.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert all(f'<section class="context" id="{n}">' in page for n in m["contexts"])
    assert_balanced(page)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_loudness_and_seams(baked):
    out = baked["dir"]
    m = json.loads((out / "manifest.json").read_text())
    fully_checked = 0
    for c in m["contexts"].values():
        for v in c["variants"]:
            data, sr = sf.read(str(out / v["file"]), dtype="float64")
            lufs = pyloudnorm.Meter(sr).integrated_loudness(data)
            assert abs(lufs - c["loudness_target"]) <= 1.0, (v["file"], lufs)
            assert v["true_peak_dbfs"] <= B.TRUE_PEAK_DBFS + 0.05
            if not c["loop"]:
                assert np.abs(data[-8:]).max() < 1e-3             # stingers fade to silence
                continue
            seam = loops.seam_metric(data[None, :] if data.ndim == 1 else data.T, sr, v["loop_start"], v["loop_end"])
            assert seam["jump_ratio"] <= loops.SEAM_LIMITS["jump_ratio"], (v["file"], seam)   # no click
            assert v["seam"]["jump_ratio"] == pytest.approx(seam["jump_ratio"], rel=0.05, abs=0.05)
            # loops span whole codec frames, so the model's 50 Hz frame texture stays in phase at the seam
            length = (v["loop_end"] - v["loop_start"]) / sr
            assert abs(length / FRAME_S - round(length / FRAME_S)) < 1e-3, (v["file"], length)
            assert loops.meets_limits(seam, loops.SEAM_LIMITS), (v["file"], seam)
            fully_checked += 1
    assert fully_checked >= 4


def test_second_run_regenerates_nothing_and_touches_no_file(baked):
    before = files_state(baked["dir"])
    r = run(baked["args"], baked["env"], baked["cwd"])
    s = summary(r.stderr)
    assert s["generated"] == 0 and s["batches"] == 0 and s["from_cache"] == 0 and s["up_to_date"] == s["tracks"]
    assert "bake: model" not in r.stderr                   # nothing to generate: the model is never loaded
    assert files_state(baked["dir"]) == before


def test_server_mode_gives_the_same_soundtrack(baked, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")     # inherited by the server, see cli_environment
    srv = ServerProcess(tiny_model, tmp_path).start()
    try:
        args = ["bake", str(default_profiles_path()), "--out", str(tmp_path / "out"), "--server", srv.address, *OPTS]
        r = run(args, baked["env"], tmp_path)
    finally:
        srv.stop()
    assert summary(r.stderr)["generated"] == summary(baked["stderr"])["tracks"]
    local = json.loads((baked["dir"] / "manifest.json").read_text())
    remote = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert remote["model"] == local["model"]
    # Same model, prompt and params give the same audio whichever way it is batched (per-row seeded
    # sampling), so the files are byte-identical.
    keys = ("file", "seed", "frames", "loop_start", "loop_end", "track_id", "sha256")
    for name, c in local["contexts"].items():
        assert [[v[k] for k in keys] for v in remote["contexts"][name]["variants"]] == \
               [[v[k] for k in keys] for v in c["variants"]]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").glob("[!.]*/*")) == \
           sorted(p.relative_to(baked["dir"]).as_posix() for p in baked["dir"].glob("[!.]*/*"))


# --------------------------------------------------------------- resuming and re-processing (in process)
SMALL = """
[game]
title = "Small"

[defaults]
duration = 1.5
seed = 3

[contexts.town]
prompt = "calm piano"
bpm = 120
variants = 2

[contexts.fight]
prompt = "epic drums"
bpm = 150

[contexts.win]
prompt = "victory fanfare"
loop = false
"""


class Counting(EngineSource):
    def __init__(self, engine, fail_after=None):
        super().__init__(engine)
        self.batches, self.fail_after = 0, fail_after

    def render(self, plans, progress, melody=None):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt
        self.batches += 1
        return super().render(plans, progress, melody)


def quiet(**kw):
    return dict(progress=False, log=lambda msg: None, **kw)


def test_interrupted_bake_resumes_and_settings_reprocess_from_cache(engine, tmp_path):
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        bake(profiles, out, Counting(engine, fail_after=1), **quiet())
    assert (out / "town" / "town_v1.wav").exists() and not (out / "fight").exists()
    town = files_state(out / "town")

    src = Counting(engine)
    r = bake(profiles, out, src, **quiet())
    assert (r.generated, r.skipped, r.batches, src.batches) == (2, 2, 2, 2)
    assert files_state(out / "town") == town

    # A lost file comes back from the raw cache; other settings re-process everything without the model.
    (out / "win" / "win_v0.wav").unlink()
    r = bake(profiles, out, src, **quiet())
    assert (r.generated, r.from_cache, r.skipped) == (0, 1, 3)
    r = bake(profiles, out, src, **quiet(fmt="ogg", sample_rate=44100, loudness=-20.0, variants=1))
    assert (r.generated, r.from_cache, src.batches) == (0, 3, 2)
    m = r.manifest
    assert sorted(p.name for p in out.glob("[!.]*/*")) == sorted(["town_v0.ogg", "town_v0.json", "fight_v0.ogg",
                                                             "fight_v0.json", "win_v0.ogg", "win_v0.json"])
    v = m["contexts"]["town"]["variants"][0]
    assert audio.read_loop_points(out / v["file"]) == (v["loop_start"], v["loop_end"])
    assert sf.info(str(out / v["file"])).samplerate == 44100
    assert abs(audio.integrated_loudness(sf.read(str(out / v["file"]), always_2d=True)[0].T, 44100) + 20) <= 1


def test_a_bake_that_changes_files_has_no_manifest_until_it_is_done(engine, tmp_path):
    """A stopped bake left the earlier manifest beside files it had already replaced (other frames, other loop
    points): while files change there is no manifest.json; the next complete bake still knows which old files
    were ours (a dropped context's files and folder go)."""
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    out = tmp_path / "out"
    bake(profiles, out, Counting(engine), **quiet())
    assert (out / "manifest.json").exists() and (out / "fight").is_dir()
    bake(profiles, out, Counting(engine, fail_after=0), **quiet())   # nothing to change: nothing moves
    assert (out / "manifest.json").exists()

    profiles.write_text(SMALL.replace("bpm = 120", "bpm = 90").replace('[contexts.fight]\nprompt = "epic drums"\n'
                                                                       'bpm = 150\n', ""))
    with pytest.raises(KeyboardInterrupt):
        bake(profiles, out, Counting(engine, fail_after=0), **quiet())
    assert not (out / "manifest.json").exists() and (out / ".manifest-previous.json").exists()
    r = bake(profiles, out, Counting(engine), **quiet())
    assert sorted(r.manifest["contexts"]) == ["town", "win"] and r.manifest["contexts"]["town"]["bpm"] == 90
    assert (out / "manifest.json").exists() and not (out / ".manifest-previous.json").exists()
    assert not (out / "fight").exists()      # its files were listed by the set-aside manifest; no empty folder


def test_a_context_the_model_fails_is_named_and_the_others_are_made(engine, nan_for, tmp_path):
    """The model turning out NaN for one context's prompt (fp16 overflow on a GPU, say): that context is named,
    the other tracks are made and cached, no manifest is written; once it works the bake finishes from the
    cache."""
    from troubadour.bake import BakeFailed

    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    out, logs = tmp_path / "out", []
    nan_for[0] = "drums"
    with pytest.raises(BakeFailed) as e:
        bake(profiles, out, Counting(engine), progress=False, log=logs.append)
    assert e.value.code == "engine_error" and list(e.value.report.failed) == ["fight"]
    assert "fight" in e.value.message and "non-finite" in e.value.message
    assert any(line.startswith("fight:") for line in logs), logs
    assert (out / "town" / "town_v1.wav").exists() and (out / "win" / "win_v0.wav").exists()
    assert not (out / "manifest.json").exists()
    nan_for[0] = None
    src = Counting(engine)
    r = bake(profiles, out, src, **quiet())
    assert (r.generated, r.skipped, src.batches) == (1, 3, 1) and (out / "manifest.json").exists()


def test_the_same_track_twice_counts_once_as_made_and_once_from_cache(engine, tmp_path):
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL + '\n[contexts.win_again]\nprompt = "victory fanfare"\nloop = false\n')
    r = bake(profiles, tmp_path / "out", Counting(engine), **quiet())
    assert r.tracks == 5 and (r.generated, r.from_cache, r.skipped) == (4, 1, 0), r.summary()


def test_a_stinger_without_a_bpm_is_cut_to_its_duration(engine, tmp_path):
    """The model makes whole 20 ms frames, the nearest count: 0.27 s came out as 0.28 s (and --max-duration
    0.001 as 0.02 s)."""
    profiles = tmp_path / "p.toml"
    profiles.write_text('[contexts.win]\nprompt = "victory fanfare"\nloop = false\nduration = 0.27\n')
    r = bake(profiles, tmp_path / "out", Counting(engine), **quiet(variants=1))
    v = r.manifest["contexts"]["win"]["variants"][0]
    assert v["frames"] == 12960 and sf.info(str(tmp_path / "out" / v["file"])).frames == 12960


def test_manifest_is_reproducible_and_names_a_local_model_by_its_folder(engine, tmp_path, monkeypatch):
    """Two bakes of the same profiles into two folders give the same bytes in every file (SOURCE_DATE_EPOCH
    sets the timestamps), and the manifest holds no path of this machine."""
    from troubadour.bake_sources import EngineSource as Source

    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    states = []
    for name in ("a", "b"):
        src = Source(model=str(engine.backend.info.model_id))
        src._engine = engine
        r = bake(profiles, tmp_path / name, src, **quiet(fmt="ogg"))
        states.append({k: v[1] for k, v in files_state(tmp_path / name).items()})
    assert states[0] == states[1]
    assert r.manifest["generated_at"] == "2023-11-14T22:13:20+00:00"
    assert r.manifest["model"]["id"] == Path(engine.backend.info.model_id).name
    assert str(tmp_path) not in (tmp_path / "b" / "manifest.json").read_text()


def test_interrupted_bake_then_other_settings_leaves_only_what_the_manifest_lists(engine, tmp_path):
    """A bake stopped before its manifest, then one with another format and fewer variants: the first one's
    files are removed (they were ours: the journal says so), not left beside the new ones."""
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    out = tmp_path / "out"
    (out / "town").mkdir(parents=True)
    (out / "town" / "notes.txt").write_text("mine")       # not ours: stays
    with pytest.raises(KeyboardInterrupt):
        bake(profiles, out, Counting(engine, fail_after=1), **quiet())
    assert (out / "town" / "town_v1.wav").exists() and not (out / "manifest.json").exists()
    r = bake(profiles, out, Counting(engine), **quiet(fmt="ogg", variants=1))
    listed = {v["file"] for c in r.manifest["contexts"].values() for v in c["variants"]}
    audio_files = {p.relative_to(out).as_posix() for p in out.glob("[!.]*/*") if p.suffix in (".wav", ".ogg")}
    assert audio_files == listed == {"town/town_v0.ogg", "fight/fight_v0.ogg", "win/win_v0.ogg"}
    assert not list(out.glob("*/*_v1.json")) and (out / "town" / "notes.txt").read_text() == "mine"
    assert not (out / B.JOURNAL).exists()


def test_edge_settings_loops_at_any_rate_cap_below_a_bar_and_unreachable_loudness(engine, tmp_path):
    """A looping context without a bpm loops at the same place at every output rate (its tempo is estimated
    from the model's audio, not from the resampled file); a cap shorter than one bar is a cap; a loudness the
    true-peak ceiling cannot reach is said in the log."""
    profiles = tmp_path / "p.toml"
    profiles.write_text('''
[defaults]
duration = 6.0
seed = 5
[contexts.drift]
prompt = "ambient pads"
[contexts.slow]
prompt = "slow march"
bpm = 40
loudness = -5
''')
    logs, entries = [], {}
    for rate in (32000, 48000):
        r = bake(profiles, tmp_path / f"out{rate}", EngineSource(engine), progress=False, log=logs.append,
                 sample_rate=rate, max_duration=5.0)
        entries[rate] = {name: c["variants"][0] for name, c in r.manifest["contexts"].items()}
    a, b = entries[32000]["drift"], entries[48000]["drift"]
    assert a["bpm"] == b["bpm"]
    assert abs(a["loop_start_s"] - b["loop_start_s"]) <= 0.02 and abs(a["loop_end_s"] - b["loop_end_s"]) <= 0.02
    slow = entries[48000]["slow"]          # a 40 bpm bar is 6 s: the 5 s cap holds
    assert slow["duration"] <= 5.0 and slow["frames"] <= 5 * 48000
    assert any("slow/slow_v0.wav" in m and "LUFS where -5" in m for m in logs), logs


def test_page_ids_are_unique_whatever_the_context_names(engine, tmp_path):
    """Context names that look like the page's other ids (the moods section, a mood row, a variant figure)
    do not collide with them: every id is unique and every in-page link has its target."""
    profiles = tmp_path / "p.toml"
    profiles.write_text("[defaults]\nduration = 1.0\nseed = 2\n" + "".join(
        f'[contexts.{n}]\ngenre = "folk"\nmood = "happy"\n' for n in ("moods", "a", "a-v0", "mood-happy")))
    bake(profiles, tmp_path / "out", EngineSource(engine), **quiet())
    page = (tmp_path / "out" / "index.html").read_text()
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)) and {"moods", "a", "a-v0", "mood-happy"} <= set(ids)
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert links and links <= set(ids), links - set(ids)


def test_killed_bake_process_resumes(tiny_model, tmp_path):
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL.replace("duration = 1.5", "duration = 3.0"))
    env = cli_environment()
    args = troubadour_cmd() + ["bake", str(profiles), "--out", "out", "--model", str(tiny_model), "--device", "cpu"]
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "out" / "town" / "town_v1.json"
    deadline = time.monotonic() + 300
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL and first.exists()
    assert not (tmp_path / "out" / "manifest.json").exists()       # really stopped mid-way
    done = files_state(tmp_path / "out" / "town")
    r = run(args[len(troubadour_cmd()):], env, tmp_path)
    s = summary(r.stderr)
    assert s["tracks"] == 4 and s["up_to_date"] >= 2 and s["generated"] <= 2
    assert files_state(tmp_path / "out" / "town") == done
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sum(len(c["variants"]) for c in m["contexts"].values()) == 4
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_cli_rejects_bad_options(tmp_path, cli_env):
    r = subprocess.run(troubadour_cmd() + ["bake", "--variants", "0", "--out", str(tmp_path)], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--variants" in r.stderr


def test_cli_server_that_does_not_answer_exits_4(tmp_path, capsys, monkeypatch):
    """As fetch/prefetch/status: a server that does not answer is exit code 4 (README), not a bad value."""
    from servers import free_port
    from troubadour.cli import main

    t0 = time.monotonic()
    code = main(["bake", "--out", str(tmp_path / "out"), "--server", f"tcp://127.0.0.1:{free_port()}",
                 "--timeout", "0.2", "--retries", "1"])
    err = capsys.readouterr().err
    assert code == 4 and "no answer" in err.strip().splitlines()[-1], err
    assert time.monotonic() - t0 < 10     # (the defaults wait 10 s x 4 tries)


THEMED = SMALL + """
[contexts.castle]
prompt = "castle halls, the town theme on strings"
bpm = 120
theme = "town"
"""


def test_themed_context_follows_its_theme_on_a_melody_model(tmp_path):
    from troubadour.backends import load_backend
    from troubadour.cache import track_key
    from troubadour.engine import Engine
    from troubadour.testmodel import cached_test_model

    profiles = tmp_path / "p.toml"
    profiles.write_text(THEMED)
    engine = Engine(load_backend(str(cached_test_model(melody=True)), "cpu"))
    r = bake(profiles, tmp_path / "out", EngineSource(engine), **quiet())
    castle = r.manifest["contexts"]["castle"]
    assert castle["theme"] == "town" and r.generated == 5
    v = castle["variants"][0]
    plain = track_key(engine.info.identity, castle["prompt"], {**castle["params"], "seed": v["seed"]})
    assert v["track_id"] != plain              # the melody is part of what made the track
    assert json.loads((tmp_path / "out" / v["file"]).with_suffix(".json").read_text())["theme"] == "town"


def test_a_theme_made_for_a_context_earlier_in_the_file_counts_once(tmp_path):
    """castle follows town's theme and comes first: town's track is made for castle, then finished in town's
    turn; it was counted generated and again from cache (3 tracks reported of 2)."""
    from troubadour.backends import load_backend
    from troubadour.engine import Engine
    from troubadour.testmodel import cached_test_model

    profiles = tmp_path / "p.toml"
    profiles.write_text('[contexts.castle]\nprompt = "castle halls"\ntheme = "town"\nduration = 1\n'
                        '[contexts.town]\nprompt = "calm town"\nduration = 1\n')
    engine = Engine(load_backend(str(cached_test_model(melody=True)), "cpu"))
    r = bake(profiles, tmp_path / "out", EngineSource(engine), **quiet(variants=1))
    assert (r.tracks, r.generated, r.from_cache, r.skipped) == (2, 2, 0, 0), r.summary()


def test_text_only_model_refuses_themes_before_generating(engine, tmp_path):
    from troubadour.errors import ProfileError

    profiles = tmp_path / "p.toml"
    profiles.write_text(THEMED)
    src = Counting(engine)
    with pytest.raises(ProfileError, match="castle.*musicgen-melody"):
        bake(profiles, tmp_path / "out", src, **quiet())
    assert src.batches == 0 and not list((tmp_path / "out").glob("[!.]*/*"))


def test_ogg_peaks_are_measured_on_the_shipped_file_and_kept_under_the_ceiling(engine, tmp_path):
    """Lossy coding moves peaks: a loud OGG normalised to -1 dBTP before encoding decoded above it, and the
    manifest reported the pre-encoding figure. Measured on the decoded file now, and re-encoded quieter."""
    profiles = tmp_path / "p.toml"
    profiles.write_text(SMALL)
    r = bake(profiles, tmp_path / "out", EngineSource(engine), **quiet(fmt="ogg", loudness=-5.0, variants=1))
    for c in r.manifest["contexts"].values():
        v = c["variants"][0]
        decoded, sr = sf.read(str(tmp_path / "out" / v["file"]), dtype="float32", always_2d=True)
        peak = audio.true_peak_dbfs(decoded.T, sr)
        assert abs(peak - v["true_peak_dbfs"]) <= 0.01 and peak <= B.TRUE_PEAK_DBFS, (v, peak)
        assert v["loudness_lufs"] == round(audio.integrated_loudness(decoded.T, sr), 2)
