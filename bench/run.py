"""Troubadour benchmarks: `python bench/run.py --quick` (<= 5 min on 2 cores) or `python bench/run.py` (full).

Every figure is a ratio or a distribution measured side by side in the same run (this machine is shared and
noisy; absolute times are context only). Prints a table as it goes and, as its last line, one JSON object;
writes the same object to bench/results/<timestamp>.json and bench/results/latest.json.
See bench/README.md for what each figure means and its goal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import Table, load, med, now, r  # noqa: E402

SECTIONS = ("cache", "tiny", "small", "scaling", "options", "device")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short suite (<= 5 min on 2 cores)")
    p.add_argument("--threads", default="auto",
                   help="torch threads for every timed run: a number, or auto (default): 2 unless a matmul "
                        "microbenchmark at the start shows 2 threads >10%% slower than 1 (an oversubscribed machine)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    p.add_argument("--device", default="cpu",
                   help="cuda (or cuda:N, mps) adds the device section: small- and medium-shaped checkpoints "
                        "on that device vs transformers (bench/device_bench.py); the other sections stay on CPU")
    p.add_argument("--device-models", default="small,medium",
                   help="checkpoints for the device section: tiny, small, medium (tiny checks the section on CPU)")
    return p.parse_args(argv)


def config(args):
    q = args.quick
    c = argparse.Namespace(
        quick=q,
        cache_requests=840 if q else 1400,   # ~1 ms a fetch: samples are cheap, the machine's swings are not
        cache_rounds=7 if q else 9,          # fresh server processes per round; the headline is their median
        concurrency=[1, 8, 64],
        concurrent_seconds=1.5 if q else 3.0,   # each client fetches back to back; shares over the last 3/4
        tiny_duration=10.0, tiny_reps=3 if q else 5,
        ttfa_duration=10.0, ttfa_reps=3 if q else 5, small_ttfa_reps=2,
        tiny_batch_duration=5.0, tiny_batch_reps=2 if q else 3,
        scaling_durations=[10.0, 30.0, 60.0], scaling_reps=2 if q else 3,
        cache_entries=(100, 10_000), cache_lookups=500 if q else 2000,
        small_duration=0.5 if q else 1.0, small_reps=2 if q else 3,
        small_batch_duration=0.5 if q else 1.0, small_batch_reps=2,   # medians of interleaved reps
        matmul_reps=5 if q else 15,
        profile_duration=0.1 if q else 0.3,
        small_ttfa=not q, small_positions=None if q else [50, 500, 1000, 1500],
        options=not q, options_duration=1.0, options_reps=2,
    )
    c.device, c.device_models = args.device, [m for m in args.device_models.split(",") if m]
    c.device_duration, c.device_reps = (5.0, 2) if q else (10.0, 3)
    c.sections = set(args.only.split(",")) - {""} or set(SECTIONS)
    if q:
        c.sections.discard("options")
    if not args.only and args.device == "cpu":
        c.sections.discard("device")   # the CPU sections already measure the CPU
    return c


def pick_threads(spec: str) -> tuple[int, dict]:
    """2 threads unless they are measurably slower than 1 here (other tenants holding the cores make
    OpenMP's barrier spin: measured 10x slower steps on this machine under load)."""
    import torch
    import torch.nn.functional as F

    ws, x = [torch.randn(4096, 1024) for _ in range(8)], torch.randn(2, 1024)   # 128 MB: past the caches
    times = {1: [], 2: []}
    for _ in range(12):
        for th in (1, 2):
            torch.set_num_threads(th)
            t = now()
            for w in ws:
                F.linear(x, w)
            times[th].append(now() - t)
    del ws
    t1, t2 = med(times[1]), med(times[2])
    check = {"linears_2_rows_128mb_ms_1_thread": r(t1 * 1e3, 2), "ms_2_threads": r(t2 * 1e3, 2),
             "two_over_one": r(t2 / t1)}
    if spec != "auto":
        n = int(spec)
        check["chosen"] = "given"
    else:
        n = 2 if t2 <= 1.1 * t1 else 1
        check["chosen"] = "auto: " + ("2 threads not >10% slower than 1" if n == 2 else "2 threads >10% slower than 1")
    torch.set_num_threads(n)
    torch.set_num_interop_threads(1)
    return n, check


def meta(cfg, check) -> dict:
    import torch
    import transformers
    import zmq

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except Exception:
            return ""

    return {"mode": "quick" if cfg.quick else "full", "started": dt.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "threads": cfg.threads, "thread_check": check,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(),
            "git_head": git("rev-parse", "--short", "HEAD").strip(),
            "troubadour_dirty_files": [ln[3:] for ln in git("status", "--porcelain", "troubadour").splitlines()],
            "load_avg_start": load(), "device": cfg.device, "gpu": _gpu(cfg.device)}


def _gpu(device: str):
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return None


def run_sections(cfg, table, results, errors):
    import engine_bench as eb
    import models
    import step_detail as sd

    def guarded(name, fn):
        t = now()
        try:
            fn()
        except Exception as e:
            errors[name] = f"{type(e).__name__}: {e}"
            print(f"  !! {name} failed: {errors[name]}", flush=True)
            traceback.print_exc()
        results.setdefault("section_seconds", {})[name] = r(now() - t, 1)

    if "cache" in cfg.sections:
        import serving
        guarded("cache", lambda: serving.run(cfg, table, results))

    if "tiny" in cfg.sections or "scaling" in cfg.sections:
        def tiny():
            be, eng = eb.load(models.tiny(), cfg.threads)
            if "tiny" in cfg.sections:
                table.section(f"2-4. tiny checkpoint (2 layers, hidden 32): ours vs transformers, "
                              f"{cfg.tiny_duration:g} s, CFG 3, top_k 250")
                results["step_tiny"] = eb.step_ratio("tiny", be, eng, cfg.tiny_duration, cfg.tiny_reps, table, 0.5)
                results["ttfa_tiny"] = eb.ttfa("tiny", eng, cfg.ttfa_duration, cfg.ttfa_reps, table,
                                               report_key=f"ttfa_ratio (tiny, {cfg.ttfa_duration:g} s)")
                results["codec_tiny"] = eb.codec_share("tiny", eng, cfg.tiny_duration,
                                                      results["step_tiny"]["ours_step_ms"]["p50"] / 1e3, table)
                results["batch_tiny"] = eb.batching("tiny", eng, cfg.tiny_batch_duration, cfg.tiny_batch_reps,
                                                    table)
            if "scaling" in cfg.sections:
                table.section("5. scaling: per-frame cost by duration (tiny; windows continue past 30 s)")
                results["scaling_tiny"] = eb.scaling("tiny", eng, cfg.scaling_durations, cfg.scaling_reps, table)
                table.section("5. scaling: TrackCache lookups by number of entries")
                n1, n2 = cfg.cache_entries
                results["track_cache"] = eb.track_cache(n1, n2, cfg.cache_lookups, table)
        guarded("tiny", tiny)

    if "small" in cfg.sections:
        def small():
            path = models.small_shaped()
            t = now()
            be, eng = eb.load(path, cfg.threads)
            table.section(f"2. musicgen-small-shaped random checkpoint (24 x 1024, 4 x 2048; loaded in "
                          f"{now() - t:.1f} s): ours vs transformers, {cfg.small_duration:g} s, CFG 3, top_k 250")
            reader = eb.WeightRead(be)
            s = results["step_small"] = eb.step_ratio("small", be, eng, cfg.small_duration, cfg.small_reps,
                                                      table, 1.0, between=reader)
            paired = eb.paired_steps(eng, reader, cfg.small_duration, cfg.small_reps)
            results["floor_small"] = eb.floor(s, be, cfg.threads, reader, table, paired)
            results["codec_small"] = eb.codec_share("small", eng, None, s["ours_step_ms"]["p50"] / 1e3, table)
            table.section("4. batching: 4 prompts in one batch vs one after another")
            results["batch_small"] = eb.batching("small", eng, cfg.small_batch_duration, cfg.small_batch_reps,
                                                 table, goal=2.0)
            if cfg.small_ttfa:
                table.section("3. streaming, small-shaped")
                results["ttfa_small"] = eb.ttfa("small", eng, cfg.ttfa_duration, cfg.small_ttfa_reps, table)
            if cfg.small_positions:
                table.section("5. scaling: step cost by KV-cache position (small-shaped)")
                results["positions_small"] = eb.positional_cost(eng, cfg.small_positions, 5, table)
            table.section("where a small-shaped step goes")
            results["profile_small"] = sd.profile_step(eng, cfg.profile_duration, table)
            results["matmul_small"] = sd.matmul_layouts(be, cfg.threads, cfg.matmul_reps, table)
        guarded("small", small)

    if "device" in cfg.sections:
        import device_bench
        guarded("device", lambda: device_bench.run(cfg, table, results))

    if "options" in cfg.sections:
        def options():
            table.section(f"CPU options on the small-shaped decoder (greedy, {cfg.options_duration:g} s)")
            results["options_small"] = sd.options(models.small_shaped(), cfg.threads, cfg.options_duration,
                                                  cfg.options_reps, table)
        guarded("options", options)


def headline(results) -> dict:
    g = lambda *keys: _get(results, keys)
    return {
        "cache_hit_throughput_ratio": g("cache_hits", "throughput_ratio"),
        "cache_hit_first_chunk_p99_ms": g("cache_hits", "first_chunk_ms", "p99"),
        "cache_hit_server_only_ratio": g("cache_hits", "server_only_ratio"),
        "step_ratio_tiny": g("step_tiny", "step_ratio"),
        "step_ratio_small": g("step_small", "step_ratio"),
        "floor_ratio_small": g("floor_small", "floor_ratio"),
        "ttfa_ratio": g("ttfa_tiny", "ratio"),
        "batch_speedup": g("batch_small", "speedup"),
        "batch_speedup_tiny": g("batch_tiny", "speedup"),
        "e2e_ratio_tiny": g("step_tiny", "e2e_ratio"),
        "e2e_ratio_small": g("step_small", "e2e_ratio"),
        "ttfa_ratio_small": g("ttfa_small", "ratio"),
        "per_frame_60s_vs_10s_tiny": g("scaling_tiny", "60s", "vs_first"),
        "cache_get_10000_vs_100": g("track_cache", "get_ratio"),
        "cache_hit_max_gap_ms_64_clients": g("cache_hits", "concurrency", "64", "max_inter_chunk_gap_ms"),
        "cache_hit_fairness_64_clients": g("cache_hits", "concurrency", "64", "fairness_min_over_max"),
        "cache_hit_raw_fairness_64_clients": g("cache_hits", "concurrency", "64", "raw_fairness_min_over_max"),
        "cache_hit_aggregate_ratio_64_clients": g("cache_hits", "concurrency", "64", "aggregate_ratio"),
        "device_rtf_ratio_small": g("device", "small", "rtf_ratio"),
        "device_rtf_ratio_medium": g("device", "medium", "rtf_ratio"),
        "device_compiled_step_vs_eager_small": g("device", "small", "compiled", "step_vs_eager"),
        "device_compiled_step_vs_eager_medium": g("device", "medium", "compiled", "step_vs_eager"),
        "compile_speed_vs_fp32_small_cpu": g("options_small", "options", "--compile (torch.compile, no native kernel)",
                                              "speed_vs_fp32"),
    }


GOALS = {"cache_hit_throughput_ratio": (">=", 0.8), "cache_hit_first_chunk_p99_ms": ("<=", 5.0),
         "step_ratio_tiny": ("<=", 0.5), "step_ratio_small": ("<=", 1.0), "floor_ratio_small": ("<=", 1.3),
         "ttfa_ratio": ("<=", 0.1), "batch_speedup": (">=", 2.0)}


def _get(d, keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = config(args)
    t0 = now()
    cfg.threads, check = pick_threads(args.threads)
    m = meta(cfg, check)
    print(f"troubadour bench ({m['mode']}): {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
          f"transformers {m['transformers']}, threads {cfg.threads} ({check['chosen']}; 2 vs 1 thread on a "
          f"small matmul: x{check['two_over_one']}), load avg {m['load_avg_start']}", flush=True)
    table = Table()
    results: dict = {}
    errors: dict = {}
    run_sections(cfg, table, results, errors)
    head = headline(results)
    met = {}
    for k, (op, goal) in GOALS.items():
        v = head.get(k)
        met[k] = None if v is None else (v >= goal if op == ">=" else v <= goal)
    m.update(load_avg_end=load(), seconds=r(now() - t0, 1))
    out = {**head, "goals": {k: f"{op} {g}" for k, (op, g) in GOALS.items()}, "met": met, "meta": m,
           "errors": errors, "details": results, "table": table.rows}
    table.section(f"summary ({m['seconds']} s)")
    for k, v in head.items():
        verdict = "" if met.get(k) is None else ("MET" if met[k] else "MISSED")
        goal = f"{GOALS[k][0]} {GOALS[k][1]}" if k in GOALS else ""
        print(f"  {k:<36} {str(v):>10}  {goal:<8} {verdict}")
    if not args.no_save:
        res_dir = HERE / "results"
        res_dir.mkdir(exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        text = json.dumps(out, indent=1, default=str)
        (res_dir / f"{stamp}-{m['mode']}.json").write_text(text + "\n")
        (res_dir / "latest.json").write_text(text + "\n")
        if m["mode"] == "full" and not args.only:
            (res_dir / "latest-full.json").write_text(text + "\n")
    print(json.dumps({**head, "met": met, "mode": m["mode"], "threads": cfg.threads, "seconds": m["seconds"],
                      "errors": list(errors)}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
