"""`troubadour generate` and `make-test-model` end to end, as a user runs them."""

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf

from conftest import troubadour_cmd


def run(args, env, cwd, **kw):
    return subprocess.run(troubadour_cmd() + args, env=env, cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300, **kw)


def test_make_test_model_then_generate_variations_twice_identical(tmp_path, cli_env):
    r = run(["make-test-model", "m"], cli_env, tmp_path)
    assert r.returncode == 0 and r.stderr == "", r.stderr    # (a CI log gets no progress bar, no config notes)
    args = ["generate", "calm piano", "--model", "m", "--duration", "2", "--variations", "2", "--seed", "7",
            "--out", "o"]
    first = run(args, cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    paths = first.stdout.split()
    assert len(paths) == 2
    audio = []
    for p in paths:
        data, sr = sf.read(tmp_path / p, dtype="float32", always_2d=True)
        assert sr == 32000 and abs(len(data) - 64000) <= 1
        assert np.abs(data).max() > 0.01
        meta = json.loads((tmp_path / p).with_suffix(".json").read_text())
        for key in ("prompt", "model", "params", "seed", "duration", "generation_seconds", "device", "file"):
            assert key in meta
        assert meta["prompt"] == "calm piano" and meta["params"]["temperature"] == 1.0
        audio.append(data)
    assert not np.array_equal(audio[0], audio[1]), "variations must differ"
    again = run(args, cli_env, tmp_path)
    assert again.returncode == 0 and again.stdout.split() == paths
    for p, before in zip(paths, audio):
        assert np.array_equal(sf.read(tmp_path / p, dtype="float32", always_2d=True)[0], before)
    log = [json.loads(line) for line in (tmp_path / "o" / "metadata.jsonl").read_text().splitlines()]
    assert len(log) == 4 and {e["seed"] for e in log} == {7, 8}


def test_temperature_zero_is_a_one_line_error(tmp_path, cli_env, tiny_model):
    r = run(["generate", "calm piano", "--model", str(tiny_model), "--temperature", "0"], cli_env, tmp_path)
    assert r.returncode != 0
    assert r.stderr.strip().count("\n") == 0 and "temperature" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, field", [
    (["x", "--variations", "0"], "variations"),
    (["--context", "battle", "--variations", "0"], "variations"),
    (["x", "--loudness", "nan"], "loudness"),
    (["x", "--loudness", "5"], "loudness"),
    (["--context", "battle", "--fix", "nope"], "fix"),
    (["--context", "battle", "--mood", "sad"], "mood"),
    (["x", "--device", "tpu"], "device"),
    (["x", "--device", "cuda:7"], "device"),
    (["x", "--threads", "-1"], "threads"),
    (["x", "--threads", "0"], "threads"),
])
def test_bad_values_exit_2_with_one_line_naming_the_field(tmp_path, tiny_model, capsys, args, field):
    from troubadour.cli import main

    code = main(["generate", *args, "--duration", "0.5", "--model", str(tiny_model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0 and field in err, err
    assert not (tmp_path / "o").exists()


def test_unwritable_out_is_a_one_line_error(tmp_path, cli_env, tiny_model):
    (tmp_path / "afile").write_text("")
    r = run(["generate", "x", "--duration", "0.5", "--model", str(tiny_model), "--out", "afile"], cli_env, tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "afile" in r.stderr.splitlines()[-1], r.stderr


def test_missing_model_is_a_clear_error_without_traceback(tmp_path, cli_env):
    r = run(["generate", "calm piano", "--model", str(tmp_path / "missing")], cli_env, tmp_path)
    assert r.returncode == 3
    assert "missing" in r.stderr and "make-test-model" in r.stderr and "Traceback" not in r.stderr


def test_no_prompt_without_terminal_is_an_error(tmp_path, cli_env, tiny_model):
    r = run(["generate", "--model", str(tiny_model)], cli_env, tmp_path)
    assert r.returncode == 2 and "no prompt" in r.stderr


def test_context_from_bundled_profiles_to_ogg(tmp_path, cli_env, tiny_model):
    r = run(["generate", "--context", "battle", "--duration", "1", "--format", "ogg", "--model", str(tiny_model),
             "--out", "o"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    (path,) = r.stdout.split()
    assert path.endswith(".ogg") and "battle" in path
    info = sf.info(tmp_path / path)
    assert info.samplerate == 32000 and abs(info.duration - 1.0) < 0.05
    meta = json.loads((tmp_path / path).with_suffix(".json").read_text())
    assert meta["context"] == "battle" and "tense" in meta["prompt"].lower()
    assert "'battle' loops in games; these files are raw takes without loop points" in r.stderr   # see bake


def test_mood_and_genre_build_the_prompt_and_adjust_parameters(tmp_path, cli_env, tiny_model):
    r = run(["generate", "--mood", "sad", "--genre", "piano", "--duration", "0.5", "--seed", "1",
             "--model", str(tiny_model), "--out", "o"], cli_env, tmp_path)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / r.stdout.split()[0]).with_suffix(".json").read_text())
    assert "piano" in meta["prompt"].lower()
    assert meta["params"]["temperature"] < 1.0, "the sad mood preset lowers temperature"


def test_cache_ls_stats_clear(tmp_path, cli_env):
    from troubadour.cache import TrackCache, track_key

    long_prompt = "calm piano " * 10   # a server started with --cache-size 5 MB (the limit it records)
    with TrackCache(tmp_path / "c", 5_000_000) as cache:
        for seed in (1, 2):
            key = track_key("model", long_prompt, {"seed": seed})
            cache.put(key, np.zeros((1, 32000), np.float32), 32000, {"prompt": long_prompt, "context": "menu",
                                                                      "variant": seed - 1})
        # a prompt from the network with terminal control codes: printed inert
        cache.put(track_key("model", "x", {}), np.zeros((1, 320), np.float32), 32000,
                  {"prompt": "calm\x1b]0;owned\x07\x1b[2J\nfake row"})
    human = run(["cache", "ls", "--cache", "c"], cli_env, tmp_path).stdout
    assert "\x1b" not in human and "\x07" not in human and len(human.splitlines()) == 3, human
    with TrackCache(tmp_path / "c") as cache:
        cache.delete(track_key("model", "x", {}))
    ls = run(["cache", "ls", "--cache", "c", "--json"], cli_env, tmp_path)
    rows = json.loads(ls.stdout)
    assert ls.returncode == 0 and len(rows) == 2 and rows[0]["context"] == "menu"
    assert rows[0]["prompt"] == long_prompt   # whole for scripts; cut to 60 characters for people
    assert "\u2026" in human and long_prompt not in human
    stats = json.loads(run(["cache", "stats", "--cache", "c", "--json"], cli_env, tmp_path).stdout)
    assert stats["entries"] == 2 and stats["bytes"] > 2 * 128000
    assert stats["size_limit"] == 5_000_000 and "session_hits" not in stats and "pinned" not in stats
    assert json.loads(run(["cache", "clear", "--cache", "c", "--json"], cli_env, tmp_path).stdout) == {"removed": 2}
    assert json.loads(run(["cache", "ls", "--cache", "c", "--json"], cli_env, tmp_path).stdout) == []
    missing = run(["cache", "ls", "--cache", "nope"], cli_env, tmp_path)
    assert missing.returncode == 2 and "no track cache" in missing.stderr
    # a folder that is not a cache (a bake folder instead of its .cache) is not made into one
    (tmp_path / "soundtrack").mkdir()
    other = run(["cache", "ls", "--cache", "soundtrack"], cli_env, tmp_path)
    assert other.returncode == 2 and "no track cache" in other.stderr and not list((tmp_path / "soundtrack").iterdir())


def test_a_model_that_fails_is_one_line_and_exit_5(tmp_path, cli_env, tiny_model):
    """A checkpoint whose output heads are NaN (broken weights): the model's fault, said in one line, exit 5 (not
    a traceback): for generate, and for bake, which names the contexts and writes no manifest."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan_model"
    shutil.copytree(tiny_model, broken)
    for f in broken.glob("*.safetensors"):
        weights = load_file(f)
        for name, t in weights.items():
            if "lm_heads" in name:
                t.fill_(float("nan"))
        save_file(weights, f, metadata={"format": "pt"})
    r = run(["generate", "calm piano", "--model", str(broken), "--duration", "0.5", "--out", "o"], cli_env, tmp_path)
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("troubadour: error:") and "non-finite" in r.stderr
    profiles = tmp_path / "p.toml"
    profiles.write_text('[contexts.a]\nprompt = "calm piano"\n[contexts.b]\nprompt = "epic drums"\n')
    r = run(["bake", str(profiles), "--out", "s", "--model", str(broken), "--variants", "1", "--max-duration", "0.5"],
            cli_env, tmp_path)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr
    assert last.startswith("troubadour: error: 2 context(s)") and "a: " in last and "b: " in last, last
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_a_full_disk_is_one_line(tmp_path, cli_env, tiny_model):
    """Writing past a file-size limit (as a full disk: the write fails) is one error line naming the problem, not
    libsndfile's failed assertion, sqlite's or cffi's tracebacks."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # the write then fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

    for args in (["generate", "calm piano", "--duration", "4", "--out", "o"],
                 ["bake", "--out", "s", "--variants", "1", "--max-duration", "4"]):
        r = run([*args, "--model", str(tiny_model)], cli_env, tmp_path, preexec_fn=limit)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("troubadour: error:"), r.stderr


def test_asks_for_a_prompt_on_a_terminal(tmp_path, cli_env, tiny_model):
    import os
    import pty
    import select
    import time

    master, slave = pty.openpty()
    proc = subprocess.Popen(troubadour_cmd() + ["generate", "--model", str(tiny_model), "--duration", "0.5",
                                                "--seed", "3", "--out", "o"],
                            stdin=slave, stdout=slave, stderr=slave, env=cli_env, cwd=tmp_path)
    os.close(slave)   # (on a terminal Python's input() writes its prompt to stderr)
    seen, deadline = b"", time.time() + 240
    try:
        while b"Describe the music" not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.time()))
            assert ready, f"no prompt on the terminal; got {seen!r}"
            seen += os.read(master, 1024)
        os.write(master, b"lonely flute in the rain\n")
        while True:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.time()))
            assert ready, "generate did not finish"
            try:
                data = os.read(master, 1024)
            except OSError:   # EIO: the child closed the terminal
                break
            if not data:
                break
            seen += data
        assert proc.wait(60) == 0, seen.decode(errors="replace")
    finally:
        proc.kill()
        os.close(master)
    paths = [ln.strip() for ln in seen.decode().splitlines() if ln.strip().endswith(".wav")]
    meta = json.loads((tmp_path / paths[-1]).with_suffix(".json").read_text())
    assert meta["prompt"] == "lonely flute in the rain"


def test_file_names_fold_accents_instead_of_dropping_letters():
    from troubadour.generate import slug

    assert slug("Épopée du dragon — l'antre!") == "epopee_du_dragon_l_antre"
    assert slug("Straße nach Köln") == "strasse_nach_koln"
    assert slug("戦闘のテーマ") == "track"


def test_prompts_sharing_a_file_name_do_not_overwrite_each_other(engine, tmp_path):
    """Names keep 40 characters of the prompt: two prompts alike up to there, same seed, same folder, got one
    file (the second prompt's) and two log lines pointing at it. Made again, a track takes its own name back."""
    from troubadour.generate import Plan, render
    from troubadour.params import GenParams

    long = "an epic orchestral battle theme with war drums"
    plans = [Plan(long, GenParams(duration=0.5, seed=7)), Plan(long + " and horns", GenParams(duration=0.5, seed=7))]
    first, second = (render(engine, p, tmp_path)[0] for p in plans)
    assert first != second and first.name == "an_epic_orchestral_battle_theme_with_war_s7_v0.wav"
    for path, plan in zip((first, second), plans):
        assert json.loads(path.with_suffix(".json").read_text())["prompt"] == plan.prompt
    assert [render(engine, p, tmp_path)[0] for p in reversed(plans)] == [second, first]
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == sorted([first.name, second.name])
    # another loudness is another file; so is the same track as OGG (a.wav and a.ogg would share a.json)
    quieter = render(engine, Plan(long, GenParams(duration=0.5, seed=7), loudness=-23.0), tmp_path)[0]
    ogg = render(engine, plans[0], tmp_path, "ogg")[0]
    assert len({first, second, quieter, ogg.with_suffix(".wav")}) == 4 and ogg.suffix == ".ogg"
    for path in (first, quieter, ogg):
        assert json.loads(path.with_suffix(".json").read_text())["file"] == path.name


def test_unknown_context_is_an_error_with_a_suggestion(tmp_path, cli_env, tiny_model):
    """An offline render of a context that is not in the profiles was fallback music written under the typo's
    name (and `Battle` overwrote battle's files); the server and `fetch` warn, `generate` refuses."""
    r = run(["generate", "--context", "Battle", "--model", str(tiny_model), "--out", "o"], cli_env, tmp_path)
    assert r.returncode == 2 and "unknown context 'Battle'" in r.stderr and "'battle'" in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()


def test_openmp_spins_briefly_unless_the_user_chose(cli_env):
    """Threads spinning for work held the cores a game on the same machine needed (bench/contention.py): the CLI
    sets a short spin before torch loads OpenMP, and leaves a user's own OpenMP wait setting alone."""
    import sys

    code = "import troubadour.cli, os, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    env = {k: v for k, v in cli_env.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    theirs = subprocess.run([sys.executable, "-c", code], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, timeout=120)
    assert ours.stdout.split() == ["1000"] and theirs.stdout.split() == ["None"], (ours.stderr, theirs.stderr)
