"""Where a small-shaped step's time goes and what the CPU options cost: the decoder's matmuls in each layout
against reading the weights once, a profile of a short generation, and the engine's precision / thread / kernel
options with their quality cost (split from engine_bench.py, whose loading and timing helpers they use)."""

from __future__ import annotations

import gc
import math

import numpy as np
import torch
import torch.nn.functional as F

from common import dist, med, now, r
from engine_bench import PROMPTS, load, ours


# ---------------------------------------------------------------- where a step's time goes
def matmul_layouts(backend, threads: int, reps: int, table) -> dict:
    """One step's worth of the decoder's matmuls (every weight once) for 2 rows (one prompt + its CFG row)
    and 8 rows (4 prompts batched), in F.linear's layout (the engine before it picked layouts by row count)
    and the alternatives: what the engine now uses is marked. Reading the weights once (a sum each) is the
    floor; the native kernel also runs on copies 8 bytes off a cache line, where safetensors leaves weights."""
    from troubadour import native
    from troubadour.matmul import onednn_linear_works
    from troubadour.panels import pack_weight

    torch.set_num_threads(threads)
    dec = backend.decoder
    mods = []
    for layer in dec.model.decoder.layers:
        a, c = layer.self_attn, layer.encoder_attn
        mods += [("qkv", torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()),
                 ("o", a.out_proj.weight.detach()), ("xq", c.q_proj.weight.detach()),
                 ("xo", c.out_proj.weight.detach()), ("fc1", layer.fc1.weight.detach()),
                 ("fc2", layer.fc2.weight.detach())]
    mods += [("head", torch.cat([h.weight for h in dec.lm_heads]).detach())]
    ws = [w for _, w in mods]
    variants = {"F.linear fp32 (x @ W^T; engine before)": lambda x, w: F.linear(x, w),
                "read the weights once (a sum each): the floor": lambda x, w: w.sum()}
    kernel = native.kernel()
    if kernel is not None:
        panels = {id(w): kernel.panels_call(pack_weight(w)) for w in ws}   # bound once, as the engine does
        variants["native kernel, panels (engine: 1-8 rows)"] = lambda x, w: panels[id(w)](x)
        variants["native kernel, row-major (before panels)"] = lambda x, w: kernel(x, w, None)
        off = {}
        for w in ws:
            off[id(w)] = torch.empty(w.numel() + 2)[2:].view(w.shape).copy_(w)   # 8 bytes off a line
        variants["native kernel, weights 8 bytes off a cache line"] = lambda x, w: kernel(x, off[id(w)], None)
    variants["W @ x^T fp32 (no native kernel: 1-2 rows)"] = lambda x, w: torch.mm(w, x.t())
    if onednn_linear_works():
        variants["oneDNN linear, same dense fp32 weights (no native kernel: 3-32 rows; else 9-32)"] = (
            lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [None], ""))
    wb = {id(w): w.to(torch.bfloat16) for w in ws}
    variants["F.linear bf16 weights (--precision bf16)"] = lambda x, w: F.linear(x.to(torch.bfloat16), wb[id(w)])
    q = {}
    for w in ws:
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.data = w
        q[id(w)] = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                          dtype=torch.qint8)[0]
    variants["dynamic int8 (--precision int8)"] = lambda x, w: q[id(w)](x)
    out = {}
    with torch.inference_mode():
        for rows in (2, 8):
            xs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in ws}}
            times = {k: [] for k in variants}
            for fn in variants.values():
                for w in ws:
                    fn(xs[w.shape[1]], w)
            for _ in range(reps):
                for name, fn in variants.items():
                    t = now()
                    for w in ws:
                        fn(xs[w.shape[1]], w)
                    times[name].append(now() - t)
            base = med(times["F.linear fp32 (x @ W^T; engine before)"])
            res = out[f"{rows}_rows"] = {}
            for name, ts in times.items():
                res[name] = {"ms": r(med(ts) * 1e3, 1), "min_ms": r(min(ts) * 1e3, 1), "vs_f_linear": r(med(ts) / base)}
                table.row(f"matmuls of 1 step, {rows} rows: {name}"[:72], res[name]["ms"], "ms",
                          note=f"x{res[name]['vs_f_linear']}")
    return out


def profile_step(engine, duration, table, top: int = 14) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from troubadour.engine import Job
    from troubadour.params import GenParams

    job = Job(PROMPTS[0], GenParams(duration=duration, seed=3))
    engine.generate([job])
    t0 = now()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.generate([job])
    wall = now() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"op": e.key, "self_ms": r(e.self_cpu_time_total / 1e3, 1), "calls": e.count,
             "share_of_wall": r(e.self_cpu_time_total / 1e6 / wall)} for e in events[:top]]
    out = {"duration_s": duration, "steps": engine.steps_for(duration), "wall_s": r(wall),
           "ops_self_s": r(total_self), "outside_ops_share": r(1 - total_self / wall), "top_ops": rows}
    table.row("profile: wall of a short generation", out["wall_s"], "s",
              note=f"{out['steps']} steps; {r(100 * (1 - total_self / wall), 1)}% outside aten ops (Python)")
    for row in rows[:8]:
        table.row(f"  {row['op'][:40]}", r(100 * row["share_of_wall"], 1), "%", note=f"{row['calls']} calls")
    return out


# ---------------------------------------------------------------- CPU options (full run)
def options(path, threads: int, duration: float, reps: int, table) -> dict:
    """The engine's CPU options (`--precision`, `--compile`, thread count, the native kernel off, and the matmul layout it
    replaced) on the small-shaped decoder: speed vs fp32 and the quality cost vs fp32 greedy (top_k=1) codes
    and audio."""
    from troubadour.engine import Engine

    engines = {}
    be, eng = load(path, threads)   # be: the checkpoint as loaded (eng packed its own copy as panels)
    engines["fp32"] = (eng, threads)
    engines[f"fp32, {1 if threads != 1 else 2} thread(s)"] = (eng, 1 if threads != 1 else 2)
    engines["fp32, no native kernel (TROUBADOUR_NATIVE=0)"] = (Engine(be, native_kernel=False), threads)
    engines["--compile (torch.compile, no native kernel)"] = (Engine(be, compile_step=True), threads)
    before = Engine(be, native_kernel=False)
    before._skinny = False   # every matmul through F.linear, as before the layouts were picked by rows
    before._make_plans()     # (the plans hold the layout)
    engines["fp32, F.linear layout (before)"] = (before, threads)
    for precision in ("bf16", "int8"):
        engines[f"--precision {precision}"] = (load(path, threads, hf=False, precision=precision)[1],
                                                    threads)
    gc.collect()
    runs = {k: [] for k in engines}
    for name, (eng, th) in engines.items():   # warm up
        torch.set_num_threads(th)
        ours(eng, PROMPTS[:1], 0.1, top_k=1)
    for _ in range(reps):
        for name, (eng, th) in engines.items():
            torch.set_num_threads(th)
            runs[name].append(ours(eng, PROMPTS[:1], duration, top_k=1))
    torch.set_num_threads(threads)
    ref = runs["fp32"][0]["results"][0]
    base = med([s for x in runs["fp32"] for s in x["step_s"]])
    out = {}
    for name, rs in runs.items():
        res = rs[0]["results"][0]
        step = med([s for x in rs for s in x["step_s"]])
        diff = float((res.codes != ref.codes).mean())
        first = np.argwhere((res.codes != ref.codes).any(axis=0))
        noise = float(((res.audio - ref.audio) ** 2).sum())
        snr = math.inf if noise == 0 else 10 * math.log10(float((ref.audio ** 2).sum()) / noise)
        out[name] = {"step_ms": r(step * 1e3, 1), "speed_vs_fp32": r(base / step), "codes_differ": r(diff),
                     "first_differing_frame": int(first[0, 0]) if len(first) else None,
                     "snr_db": r(snr, 1) if math.isfinite(snr) else "inf",
                     "e2e_s": dist([x["seconds"] for x in rs])}
        table.row(f"option {name}: speed vs fp32", out[name]["speed_vs_fp32"], "x",
                  note=f"codes differ {out[name]['codes_differ']}, first at frame "
                       f"{out[name]['first_differing_frame']}, SNR {out[name]['snr_db']} dB")
    return {"duration_s": duration, "reps": reps, "greedy": True, "options": out}
