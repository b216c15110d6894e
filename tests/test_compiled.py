"""The compiled decode step (`--compile`) against the real (tiny) model, through torch.compile on the CPU.

On a CUDA GPU the same compiled function replays as CUDA graphs (mode "reduce-overhead"); what can be
checked without one is that it runs compiled, not as Python, and gives the same tracks as the eager loop.
"""

import sys
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from test_cli import run
from troubadour.backends import load_backend
from troubadour.engine import Engine, Job
from troubadour.params import GenParams

JOBS = [
    Job("calm piano", GenParams(duration=2.0, top_k=1, cfg_coef=3.0)),
    Job("an epic orchestral battle theme with pounding drums and brass", GenParams(duration=1.0, seed=5,
                                                                                    temperature=1.2)),
    Job("soft ambient pads", GenParams(duration=1.5, seed=9, top_p=0.9)),
]


@pytest.fixture(scope="module")
def compiled(backend):
    return Engine(backend, compile_step=True)


def forward_calls(eng, jobs) -> int:
    """Python calls of the decoder's forward while `eng` generates `jobs`: the compiled step runs none."""
    code, n = Engine._forward.__code__, [0]

    def count(frame, event, arg):
        if event == "call" and frame.f_code is code:
            n[0] += 1

    sys.setprofile(count)
    try:
        eng.generate(jobs)
    finally:
        sys.setprofile(None)
    return n[0]


def assert_same_tracks(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.codes, y.codes)
        np.testing.assert_allclose(x.audio, y.audio, atol=1e-5)


def test_compiled_engine_gives_the_same_tracks_batched_and_alone(engine, compiled):
    assert compiled.matmuls.startswith("torch.compile")
    assert_same_tracks(engine.generate(JOBS), compiled.generate(JOBS))
    for one in (JOBS[1:2], JOBS[2:3]):   # same shapes, another prompt: the held conditioning is refreshed
        assert_same_tracks(engine.generate(one), compiled.generate(one))
    no_cfg = [Job("calm piano", GenParams(duration=1.0, seed=2, cfg_coef=1.0))]   # rows without CFG twins
    assert_same_tracks(engine.generate(no_cfg), compiled.generate(no_cfg))


def test_steps_run_compiled_not_as_python(engine, compiled):
    jobs = [Job("calm piano", GenParams(duration=1.0, seed=4))]
    compiled.generate(jobs)   # compiles this shape
    assert forward_calls(compiled, jobs) == 0
    assert forward_calls(engine, jobs) == engine.steps_for(1.0)   # the check can see Python steps


def test_long_track_continues_across_windows_compiled(backend):
    """A continuation window starts with a prefill of the kept codes (eager), then compiled steps."""
    kw = dict(window_s=2.0, continuation_s=1.0)
    eager, comp = Engine(backend, **kw), Engine(backend, compile_step=True, **kw)
    jobs = [Job("calm piano", GenParams(duration=3.5, seed=1))]
    assert_same_tracks(eager.generate(jobs), comp.generate(jobs))
    assert forward_calls(comp, jobs) == 2   # one prefill per continuation window, nothing else


def test_a_poisoned_cache_does_not_leak_into_the_next_track(engine, compiled):
    jobs = [Job("calm piano", GenParams(duration=1.0, seed=6))]
    compiled.generate(jobs)
    with torch.inference_mode():   # what a batch that blew up could leave behind
        for cache in compiled._compiled._caches.values():
            for kv in cache:
                for t in kv:
                    t.fill_(float("nan"))
    assert_same_tracks(engine.generate(jobs), compiled.generate(jobs))


def test_melody_model_compiles_too(tmp_path):
    from test_melody import tone
    from troubadour.testmodel import build_test_model

    be = load_backend(str(build_test_model(tmp_path / "mel", melody=True)), "cpu")
    jobs = [Job("calm piano", GenParams(duration=1.0, seed=3), melody=tone([261.63])),
            Job("a much longer prompt about a tense night in the haunted forest", GenParams(duration=1.0, seed=4))]
    comp = Engine(be, compile_step=True)
    assert_same_tracks(Engine(be).generate(jobs), comp.generate(jobs))
    # prompts of two lengths run apart on a melody model (engine.batch_groups): a prefill of melody and text
    # each, every step after it compiled
    assert forward_calls(comp, jobs) == len(comp.batch_groups([j.prompt for j in jobs])) == 2


def test_generate_with_compile_flag_writes_the_same_track(tiny_model, cli_env, tmp_path):
    args = ["generate", "calm piano", "--model", str(tiny_model), "--duration", "1", "--seed", "3"]
    plain = run(args + ["--out", "a"], cli_env, tmp_path)
    comp = run(args + ["--out", "b", "--compile"], cli_env, tmp_path)
    assert plain.returncode == 0 and comp.returncode == 0, plain.stderr + comp.stderr
    a, b = (sf.read(tmp_path / r.stdout.split()[0], dtype="float32")[0] for r in (plain, comp))
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_bake_source_passes_compile_on(tiny_model):
    from troubadour.bake_sources import EngineSource

    assert EngineSource(model=str(tiny_model), device="cpu", compile_step=True).engine._compiled is not None
    assert EngineSource(model=str(tiny_model), device="cpu").engine._compiled is None


def test_cuda_graphs_only_where_torch_records_them_from_any_thread(monkeypatch):
    import torch._inductor.cudagraph_trees as trees

    from troubadour.compiled import mode_for

    assert mode_for(torch.device("cpu")) == "default"
    assert mode_for(torch.device("cpu"), same_thread=True) == "default"
    monkeypatch.setattr(trees, "graph_capture_lock", object(), raising=False)   # torch 2.13 has it
    assert mode_for(torch.device("cuda")) == "reduce-overhead"
    monkeypatch.delattr(trees, "graph_capture_lock")   # an older torch: compiled, without CUDA graphs
    assert mode_for(torch.device("cuda")) == "default"
    # ... unless every call stays on the main thread, where older torch keeps its graph managers
    assert mode_for(torch.device("cuda"), same_thread=True) == "reduce-overhead"
    seen = []
    t = threading.Thread(target=lambda: seen.append(mode_for(torch.device("cuda"), same_thread=True)))
    t.start()
    t.join()
    assert seen == ["default"]


def test_only_the_server_builds_its_engine_for_another_thread(tiny_model, monkeypatch, tmp_path):
    """generate and bake run the model on the thread that loads it; the server warms up on its main thread and
    generates on its engine thread, so only it must not ask for main-thread-only CUDA graphs."""
    import troubadour.cli as cli
    import troubadour.compiled as compiled
    from troubadour.bake_sources import EngineSource

    asked = []
    real = compiled.mode_for
    monkeypatch.setattr(compiled, "mode_for", lambda device, same_thread=False: asked.append(same_thread) or
                        real(device, same_thread))
    args = cli.build_parser().parse_args(["generate", "x", "--model", str(tiny_model), "--device", "cpu", "--compile"])
    assert cli.make_engine(args).compiled and asked[-1] is True
    assert EngineSource(model=str(tiny_model), device="cpu", compile_step=True).engine.compiled and asked[-1] is True

    class Built(Exception):
        pass

    def fake_make_engine(args, same_thread=True):
        asked.append(same_thread)
        raise Built

    monkeypatch.setattr(cli, "make_engine", fake_make_engine)
    args = cli.build_parser().parse_args(["serve", "--model", str(tiny_model), "--compile", "--device", "cpu",
                                          "--bind", "tcp://127.0.0.1:*", "--cache", str(tmp_path / "cache")])
    with pytest.raises(Built):
        args.func(args)
    assert asked[-1] is False


def test_server_with_compile_serves_the_same_tracks(tiny_model, tmp_path):
    """Warm-up on the main thread, generation on the engine thread: both through the compiled step."""
    from serverutil import ServerProcess
    from troubadour.client import Client

    tracks = []
    for name, extra in (("plain", ()), ("compiled", ("--compile", "--max-batch", "2"))):
        with ServerProcess(tiny_model, tmp_path / name, extra_args=extra) as srv:
            with Client(srv.address, timeout=60) as c:
                c.prefetch(["menu", "battle"])   # three tracks in batches of two (the warm-up compiled both sizes)
                tracks.append([c.get_track(ctx, variant=v).audio for ctx, v in (("menu", 0), ("battle", 0),
                                                                                ("battle", 1))])
            warm = [line for line in srv.lines if "model warm" in line]
        assert warm and ("torch.compile" in warm[0]) == (name == "compiled"), srv.lines
    for a, b in zip(*tracks):
        x, y = (np.frombuffer(t, dtype=np.int16).astype(np.int32) for t in (a, b))
        assert x.shape == y.shape and np.abs(x - y).max() <= 1   # s16 of audio equal to 1e-5


def test_batches_of_every_size_share_one_cache(backend):
    """On a GPU the cache of a window is hundreds of MB per row: one buffer, sized by the largest batch."""
    eng = Engine(backend, compile_step=True)
    held = lambda: {t.untyped_storage().data_ptr() for cache in eng._compiled._caches.values()   # noqa: E731
                    for kv in cache for t in kv}
    eng.generate(JOBS)                    # 6 rows
    eng.generate(JOBS[:1])                # 2 rows: a view of the same buffer
    eng.generate([Job("calm piano", GenParams(duration=8.0))])   # a longer cache: still the same buffer
    assert len(held()) == 2 * len(eng._layers)   # one key and one value buffer per layer
    bigger = JOBS + [Job("drums", GenParams(duration=1.0))]     # 8 rows: a larger buffer replaces it
    assert_same_tracks(Engine(backend).generate(bigger), eng.generate(bigger))
    assert len(held()) == 2 * len(eng._layers)


def test_compile_with_int8_is_refused_up_front(tiny_model):
    from troubadour.errors import ValidationError

    with pytest.raises(ValidationError) as e:
        Engine(load_backend(str(tiny_model), "cpu"), compile_step=True, precision="int8")
    assert e.value.field == "precision" and "--compile" in str(e.value)


def test_a_compiler_failure_falls_back_to_the_plain_loop(engine, backend, caplog):
    eng = Engine(backend, compile_step=True)
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("triton: no kernel for this GPU\\nlong details")

    eng._compiled._fn = broken
    with caplog.at_level("WARNING", logger="troubadour.compiled"):
        assert_same_tracks(engine.generate(JOBS), eng.generate(JOBS))
    assert len(calls) == 1   # tried once, not at every step
    assert "--compile failed" in caplog.text and "no kernel for this GPU" in caplog.text
    assert eng.matmuls.startswith("PyTorch (--compile failed: RuntimeError: triton: no kernel")


def test_a_torch_that_cannot_compile_here_gives_the_plain_loop(engine, backend, monkeypatch, caplog):
    def refuse(*a, **kw):
        raise RuntimeError("Dynamo is not supported on this Python")

    monkeypatch.setattr(torch, "compile", refuse)
    with caplog.at_level("WARNING", logger="troubadour.compiled"):
        eng = Engine(backend, compile_step=True)
    assert "Dynamo is not supported" in caplog.text and "--compile failed" in eng.matmuls
    assert_same_tracks(engine.generate(JOBS[:1]), eng.generate(JOBS[:1]))


def test_the_cuda_graph_mode_compiles_and_matches_on_the_cpu(engine, backend, monkeypatch):
    """The GPU's configuration (reduce-overhead: static cache addresses, a dynamic length, a step mark before
    every call) through the same compiler on the CPU, where torch skips only the graph recording itself."""
    import troubadour.compiled as compiled

    monkeypatch.setattr(compiled, "mode_for", lambda device, same_thread=False: "reduce-overhead")
    eng = Engine(backend, compile_step=True)
    assert eng._compiled.mode == "reduce-overhead"
    long = [Job("epic battle drums", GenParams(duration=6.0, seed=3))]   # a second cache length
    for jobs in (JOBS, JOBS[:1], long):
        assert_same_tracks(engine.generate(jobs), eng.generate(jobs))
    assert eng._compiled.failure is None and forward_calls(eng, JOBS[:1]) == 0
