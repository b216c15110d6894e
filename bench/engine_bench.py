"""Engine figures: our decode loop vs transformers' generate() on the same weights, the memory-bandwidth
floor, time to first audio, batching, scaling with duration, CPU options, and a profile of one step."""

from __future__ import annotations

import gc
import math

import numpy as np
import torch
import torch.nn.functional as F

from common import dist, med, now, r

PROMPTS = ["a calm piano piece with soft strings", "an epic orchestral battle theme with drums",
           "a mysterious ambient soundscape with dark synths", "an upbeat chiptune melody for a retro game"]


# ---------------------------------------------------------------- loading and running
def load(path, threads: int):
    from troubadour.backends import load_backend
    from troubadour.engine import Engine

    torch.set_num_threads(threads)
    backend = load_backend(str(path), "cpu")
    return backend, Engine(backend)


def ours(engine, prompts, duration, *, top_k=250, seed=1, progress=None) -> dict:
    """engine.generate; step times from the progress callback (called at the start of every step)."""
    from troubadour.engine import Job
    from troubadour.params import GenParams

    jobs = [Job(p, GenParams(duration=duration, top_k=top_k, seed=seed + i)) for i, p in enumerate(prompts)]
    ticks: list[float] = []
    t0 = now()
    out = engine.generate(jobs, progress=progress or (lambda d, t: ticks.append(now())))
    t1 = now()
    return {"seconds": t1 - t0, "steps": len(ticks), "step_s": list(np.diff(ticks + [t1])[:-1]),
            "results": out}


class _StepTimer:
    """A logits processor: transformers calls it once per generated step."""

    def __init__(self):
        self.ticks: list[float] = []

    def __call__(self, input_ids, scores):
        self.ticks.append(now())
        return scores


def hf(backend, prompts, steps, *, top_k=250, seed=1) -> dict:
    """transformers' MusicgenForConditionalGeneration.generate (returns decoded audio), CFG 3, sampling."""
    from transformers import LogitsProcessorList

    timer = _StepTimer()
    inputs = backend.tokenizer(prompts, padding=True, return_tensors="pt")
    torch.manual_seed(seed)
    t0 = now()
    with torch.inference_mode():
        audio = backend.model.generate(**inputs, do_sample=top_k != 1, guidance_scale=3.0, top_k=top_k,
                                       max_new_tokens=steps, logits_processor=LogitsProcessorList([timer]))
    t1 = now()
    return {"seconds": t1 - t0, "steps": len(timer.ticks), "step_s": list(np.diff(timer.ticks)),
            "audio": audio}


# ---------------------------------------------------------------- 2. step time vs transformers
def step_ratio(name, backend, engine, duration, reps, table, goal, between=None) -> dict:
    steps = engine.steps_for(duration)
    frames = engine.frames_for(duration)
    ours(engine, PROMPTS[:1], 0.1)                       # warm up both
    hf(backend, PROMPTS[:1], engine.steps_for(0.1))
    o_runs, h_runs = [], []
    for _ in range(reps):                                # interleaved
        o_runs.append(ours(engine, PROMPTS[:1], duration))
        h_runs.append(hf(backend, PROMPTS[:1], steps))
        if between is not None:
            between()
    o_steps = [s for x in o_runs for s in x["step_s"]]
    h_steps = [s for x in h_runs for s in x["step_s"]]
    o_e2e, h_e2e = [x["seconds"] for x in o_runs], [x["seconds"] for x in h_runs]
    ratio = med(o_steps) / med(h_steps)
    out = {"duration_s": duration, "frames": frames, "steps": steps, "reps": reps,
           "hf_steps_seen": h_runs[0]["steps"],
           "ours_step_ms": dist(o_steps, 1e3), "hf_step_ms": dist(h_steps, 1e3),
           "ours_e2e_s": dist(o_e2e), "hf_e2e_s": dist(h_e2e),
           "ours_per_frame_ms": r(med(o_e2e) / frames * 1e3), "hf_per_frame_ms": r(med(h_e2e) / frames * 1e3),
           "step_ratio": r(ratio), "step_ratio_min": r(min(o_steps) / min(h_steps)),
           "e2e_ratio": r(med(o_e2e) / med(h_e2e))}
    table.row(f"{name}: ours per step p50", out["ours_step_ms"]["p50"], "ms", note=f"{steps} steps x {reps}")
    table.row(f"{name}: transformers per step p50", out["hf_step_ms"]["p50"], "ms")
    table.row(f"step_ratio_{name}", out["step_ratio"], "", f"<= {goal}", ratio <= goal,
              f"min/min {out['step_ratio_min']}")
    table.row(f"{name}: end-to-end ratio (incl. text enc + codec)", out["e2e_ratio"], "",
              note=f"{out['ours_per_frame_ms']} vs {out['hf_per_frame_ms']} ms/frame")
    return out


# ---------------------------------------------------------------- memory-bandwidth floor
def bandwidth(threads: int, mb: int = 256, reps: int = 5) -> dict:
    torch.set_num_threads(threads)
    x = torch.ones(mb * 1024 * 1024 // 4)
    y = torch.empty_like(x)
    y.copy_(x)
    copy, read = [], []
    for _ in range(reps):
        t = now()
        y.copy_(x)
        copy.append(2 * x.numel() * 4 / (now() - t) / 1e9)   # bytes read + bytes written
        t = now()
        x.sum()
        read.append(x.numel() * 4 / (now() - t) / 1e9)
    del x, y
    return {"copy_gb_s": max(copy), "copy_gb_s_p50": med(copy), "read_gb_s": max(read), "read_gb_s_p50": med(read)}


def step_weights(backend) -> list[torch.Tensor]:
    """The decoder weights a decode step reads: all decoder parameters except the token embedding tables
    (4 rows read per step) and the cross-attention k/v projections (applied once per request)."""
    return [p.detach() for n, p in backend.decoder.named_parameters()
            if not ("embed_tokens" in n or "encoder_attn.k_proj" in n or "encoder_attn.v_proj" in n)]


class WeightRead:
    """Times reading every step weight once (a sum per tensor: memory-bound). Called between the timed
    generations, so it sees the same contention from other tenants as the steps do."""

    def __init__(self, backend, reps: int = 3):
        self.weights = step_weights(backend)
        self.reps = reps
        self.times: list[float] = []

    def __call__(self):
        with torch.inference_mode():
            for _ in range(self.reps):
                t = now()
                for w in self.weights:
                    w.sum()
                self.times.append(now() - t)


def paired_steps(engine, reader: WeightRead, duration: float, reps: int) -> dict:
    """Steps and weight reads alternating inside one generation: the progress callback (at the start of every
    step) reads every weight once after each clean step, outside the timed steps. Each clean step is divided
    by the read right after it, so both see the same moment's memory bandwidth (which moved 44 <-> 68 GB/s
    between minutes on the shared test machines)."""
    ratios, steps, reads = [], [], []
    for _ in range(reps):
        marks: list[tuple[float, float]] = []   # (entry, exit) of each callback

        def progress(done, total):
            t = now()
            if len(marks) % 2 == 1:   # the step that just ended was clean: read once now
                with torch.inference_mode():
                    for w in reader.weights:
                        w.sum()
            marks.append((t, now()))

        ours(engine, PROMPTS[:1], duration, progress=progress)
        for i in range(1, len(marks) - 1, 2):
            step = marks[i][0] - marks[i - 1][1]          # a clean step (no read inside)
            read = marks[i][1] - marks[i][0]               # the read right after it
            if i > 1:                                      # the first pass is a prefill: not a decode step
                ratios.append(step / read)
                steps.append(step)
                reads.append(read)
    return {"pairs": len(ratios), "ratio": dist(ratios), "step_ms": dist(steps, 1e3), "read_ms": dist(reads, 1e3)}


def floor(step_out: dict, backend, threads: int, reader: WeightRead, table, paired: dict | None = None) -> dict:
    bw = bandwidth(threads)
    dec_bytes = sum(p.numel() * p.element_size() for p in backend.decoder.parameters())
    step_bytes = sum(w.numel() * w.element_size() for w in reader.weights)
    floor_read = med(reader.times)
    floor_copy = step_bytes / (bw["copy_gb_s"] * 1e9)
    ours_s = step_out["ours_step_ms"]["p50"] / 1e3
    hf_s = step_out["hf_step_ms"]["p50"] / 1e3
    out = {**{k: r(v, 2) for k, v in bw.items()}, "decoder_bytes": dec_bytes, "step_read_bytes": step_bytes,
           "weight_read_ms": dist(reader.times, 1e3, 1),
           "weight_read_gb_s": r(step_bytes / floor_read / 1e9, 2),
           "floor_step_ms": r(floor_read * 1e3, 1), "floor_step_ms_copy_bw": r(floor_copy * 1e3, 1),
           "floor_ratio_interleaved": r(ours_s / floor_read, 2),
           "floor_ratio": r(paired["ratio"]["p50"] if paired else ours_s / floor_read, 2), "paired": paired,
           "floor_ratio_best": r(step_out["ours_step_ms"]["min"] / 1e3 / min(reader.times), 2),
           "floor_ratio_copy_bw": r(ours_s / floor_copy, 2), "hf_floor_ratio": r(hf_s / floor_read, 2)}
    table.row("small: weight bytes read per step", f"{step_bytes / 1e9:.3f} GB",
              note=f"decoder total {dec_bytes / 1e9:.3f} GB")
    table.row("reading those weights once (p50, interleaved)", out["floor_step_ms"], "ms",
              note=f"= {out['weight_read_gb_s']} GB/s")
    table.row("copy bandwidth (r+w, best of 5 x 256 MB)", r(bw["copy_gb_s"], 1), "GB/s",
              note=f"-> floor {out['floor_step_ms_copy_bw']} ms/step; ours/that {out['floor_ratio_copy_bw']}")
    table.row("step / weight read, p50s of separate runs", out["floor_ratio_interleaved"], "",
              note=f"best/best {out['floor_ratio_best']}; transformers {out['hf_floor_ratio']}")
    if paired:
        table.row("paired: clean step p50 / read right after it", paired["step_ms"]["p50"], "ms",
                  note=f"read p50 {paired['read_ms']['p50']} ms; {paired['pairs']} pairs, ratios "
                       f"{paired['ratio']['min']}-{paired['ratio']['max']}")
    table.row("floor_ratio_small", out["floor_ratio"], "", "<= 1.3", out["floor_ratio"] <= 1.3,
              "p50 of the paired ratios" if paired else "p50s of separate runs")
    return out


def codec_share(name, engine, duration, step_s: float, table, reps: int = 3) -> dict:
    """EnCodec's part of streaming: every chunk of chunk_frames re-decodes its left context and lookahead
    (context + chunk + lookahead frames). Times that decode directly against decoding only the kept frames,
    and, with duration, the share of one whole generation spent in backend.decode_audio."""
    be = engine.backend
    k = engine.info.num_codebooks
    full_n = engine.chunk_frames + engine.context_frames + engine.lookahead_frames
    vocab = be.decoder.config.vocab_size
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, vocab, (1, k, full_n), generator=g)
    t_full, t_kept = [], []
    be.decode_audio(codes)
    for _ in range(reps):
        t = now()
        be.decode_audio(codes)
        t_full.append(now() - t)
        t = now()
        be.decode_audio(codes[:, :, :engine.chunk_frames])
        t_kept.append(now() - t)
    d_full, d_kept = med(t_full), med(t_kept)
    per_chunk = engine.chunk_frames * step_s
    out = {"chunk_decode_ms": r(d_full * 1e3, 1), "frames_per_chunk_decode": full_n,
           "kept_only_decode_ms": r(d_kept * 1e3, 1), "step_ms_p50": r(step_s * 1e3, 2),
           "steady_decode_share": r(d_full / (d_full + per_chunk)),
           "steady_share_if_kept_only": r(d_kept / (d_kept + per_chunk))}
    if duration:
        calls: list[float] = []
        orig = be.decode_audio

        def timed(c):
            t = now()
            o = orig(c)
            calls.append(now() - t)
            return o

        be.decode_audio = timed
        try:
            run = ours(engine, PROMPTS[:1], duration)
        finally:
            del be.decode_audio   # back to the class's method
        out.update(run_duration_s=duration, run_decode_calls=len(calls),
                   run_decode_share_of_wall=r(sum(calls) / run["seconds"]))
    table.row(f"{name}: codec share of streaming (steady state)", out["steady_decode_share"], "",
              note=f"{full_n}-frame decode {out['chunk_decode_ms']} ms per {engine.chunk_frames} frames; "
                   f"kept-only {out['kept_only_decode_ms']} ms; whole run {out.get('run_decode_share_of_wall')}")
    return out


# ---------------------------------------------------------------- 3. streaming
def ttfa(name, engine, duration, reps, table, goal=0.1, report_key=None) -> dict:
    from troubadour.engine import Job
    from troubadour.params import GenParams

    ratios, firsts, totals = [], [], []
    for i in range(reps):
        t0 = now()
        first = None
        for _ in engine.stream([Job(PROMPTS[0], GenParams(duration=duration, seed=i + 1))]):
            if first is None:
                first = now() - t0
        total = now() - t0
        ratios.append(first / total)
        firsts.append(first)
        totals.append(total)
    out = {"duration_s": duration, "reps": reps, "first_chunk_s": dist(firsts), "total_s": dist(totals),
           "ratio": r(med(ratios)), "ratios": [r(x) for x in ratios]}
    table.row(report_key or f"ttfa_ratio ({name}, {duration:g} s)", out["ratio"], "", f"<= {goal}",
              out["ratio"] <= goal, f"first chunk {out['first_chunk_s']['p50']} s of {out['total_s']['p50']} s")
    return out


# ---------------------------------------------------------------- 4. batching
def batching(name, engine, duration, reps, table, goal=None) -> dict:
    seq, bat = [], []
    for _ in range(reps):
        seq.append(sum(ours(engine, [p], duration, seed=1 + i)["seconds"] for i, p in enumerate(PROMPTS)))
        bat.append(ours(engine, PROMPTS, duration)["seconds"])
    speed = med(seq) / med(bat)
    out = {"duration_s": duration, "reps": reps, "prompts": len(PROMPTS), "sequential_s": dist(seq),
           "batch_s": dist(bat), "speedup": r(speed)}
    table.row(f"batch_speedup_{name} (4 prompts, {duration:g} s)", out["speedup"], "x",
              f">= {goal}" if goal else None, (speed >= goal) if goal else None,
              f"sequential {r(med(seq), 2)} s, batch {r(med(bat), 2)} s")
    return out


# ---------------------------------------------------------------- 5. scaling with duration
def scaling(name, engine, durations, reps, table) -> dict:
    """Per-frame cost (end to end, incl. codec) by duration, durations interleaved rep by rep. The best of
    the reps is the headline (other tenants only ever add time); medians are kept too."""
    runs = {d: [] for d in durations}
    for _ in range(reps):
        for d in durations:
            runs[d].append(ours(engine, PROMPTS[:1], d))
    out = {}
    base = None
    for d in durations:
        frames = engine.frames_for(d)
        best = min(x["seconds"] for x in runs[d]) / frames
        steps = [s for x in runs[d] for s in x["step_s"]]
        tail = [s for x in runs[d] for s in x["step_s"][-200:]]
        base = base or best
        out[f"{d:g}s"] = {"frames": frames, "steps": runs[d][0]["steps"], "reps": reps,
                          "per_frame_ms": r(best * 1e3),
                          "per_frame_ms_p50": r(med([x["seconds"] for x in runs[d]]) / frames * 1e3),
                          "step_ms": dist(steps, 1e3), "last_200_steps_ms_p50": r(med(tail) * 1e3),
                          "vs_first": r(best / base)}
        o = out[f"{d:g}s"]
        table.row(f"{name}: per-frame cost, {d:g} s track (best of {reps})", o["per_frame_ms"], "ms",
                  note=f"x{o['vs_first']} of {durations[0]:g} s; step p50 {o['step_ms']['p50']} ms "
                       f"(last 200: {o['last_200_steps_ms_p50']}), {o['steps']} steps")
    return out


def positional_cost(engine, positions, reps, table) -> dict:
    """Cost of one decode step with the KV cache filled up to `position` (CFG rows = 2), via the engine's
    own _forward: shows whether self-attention over a long window makes late steps dearer."""
    hidden, mask = engine.backend.encode_text([PROMPTS[0]])
    h = torch.cat([hidden, torch.zeros_like(hidden)])
    m = torch.cat([mask, torch.zeros_like(mask)])
    out = {}
    with torch.inference_mode():
        cross = engine._cross_kv(h, m)
        cache = engine._alloc_cache(2, max(positions) + 1)
        for c in cache:
            c[0].normal_()
            c[1].normal_()
        pos = engine._positions(max(positions) + 1).to(h.dtype)
        tokens = torch.zeros((2, engine.info.num_codebooks, 1), dtype=torch.long)
        times = {p: [] for p in positions}
        for _ in range(reps):
            for p in positions:
                x = engine._embed(tokens) + pos[p:p + 1]
                t = now()
                engine._forward(x, p, cache, cross)
                times[p].append(now() - t)
    base = med(times[positions[0]])
    for p in positions:
        out[str(p)] = {"step_ms": r(med(times[p]) * 1e3, 2), "vs_first": r(med(times[p]) / base)}
        table.row(f"small: step at KV position {p}", out[str(p)]["step_ms"], "ms", note=f"x{out[str(p)]['vs_first']}")
    return out


def track_cache(n_small: int, n_large: int, lookups: int, table) -> dict:
    """TrackCache lookups in a cache of n_small entries vs one of n_large (small entries), both open, the
    lookups interleaved one by one so other tenants' load hits both sides alike."""
    import random
    import shutil
    import tempfile

    from troubadour.cache import TrackCache

    dirs = [tempfile.mkdtemp(prefix="troubadour-bench-cache-") for _ in range(2)]
    audio = np.zeros((2, 256), np.float32)
    rng = random.Random(0)
    key = lambda i: f"{i:032x}"
    try:
        with TrackCache(dirs[0]) as small, TrackCache(dirs[1]) as large:
            put_t: list[float] = []
            for c, n in ((small, n_small), (large, n_large)):
                for i in range(n):
                    t = now()
                    c.put(key(i), audio, 32000, {"prompt": f"entry {i}"})
                    if c is large:
                        put_t.append(now() - t)
            t = {(s, op): [] for s in ("small", "large") for op in ("get", "contains", "miss")}
            for _ in range(lookups):
                for name, c, n in (("small", small, n_small), ("large", large, n_large)):
                    k = key(rng.randrange(n))
                    t0 = now()
                    c.get(k)
                    t1 = now()
                    c.contains(k)
                    t2 = now()
                    c.get(f"{rng.getrandbits(120):032x}")
                    t3 = now()
                    t[(name, "get")].append(t1 - t0)
                    t[(name, "contains")].append(t2 - t1)
                    t[(name, "miss")].append(t3 - t2)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    out = {"entries": [n_small, n_large], "lookups": lookups}
    for op in ("get", "contains", "miss"):
        out[f"{op}_us"] = {str(n_small): dist(t[("small", op)], 1e6, 1), str(n_large): dist(t[("large", op)], 1e6, 1)}
        out[f"{op}_ratio"] = r(med(t[("large", op)]) / med(t[("small", op)]))
    out["put_us"] = {"first_100": dist(put_t[:100], 1e6, 1), "last_100": dist(put_t[-100:], 1e6, 1)}
    table.row(f"TrackCache get p50 at {n_large} / at {n_small} entries", out["get_ratio"], "x",
              note=f"{out['get_us'][str(n_small)]['p50']} -> {out['get_us'][str(n_large)]['p50']} us")
    table.row(f"TrackCache contains p50 at {n_large} / {n_small}", out["contains_ratio"], "x",
              note=f"miss x{out['miss_ratio']}; put p50 first/last 100: {out['put_us']['first_100']['p50']}/"
                   f"{out['put_us']['last_100']['p50']} us")
    return out


# ---------------------------------------------------------------- where a step's time goes
def matmul_layouts(backend, threads: int, reps: int, table) -> dict:
    """One step's worth of the decoder's matmuls (every weight once) for 2 rows (one prompt + its CFG row)
    and 8 rows (4 prompts batched), in F.linear's layout (the engine before it picked layouts by row count)
    and the alternatives: what the engine now uses is marked. Reading the weights once (a sum each) is the
    floor; the native kernel also runs on copies 8 bytes off a cache line, where safetensors leaves weights."""
    from troubadour import native
    from troubadour.matmul import onednn_linear_works

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
        variants["native kernel (engine: 1-8 rows)"] = lambda x, w: kernel(x, w, None)
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
    """The engine's CPU options (`--precision`, thread count, the native kernel off, and the matmul layout it
    replaced) on the small-shaped decoder: speed vs fp32 and the quality cost vs fp32 greedy (top_k=1) codes
    and audio."""
    from troubadour.engine import Engine

    engines = {}
    be, eng = load(path, threads)
    engines["fp32"] = (eng, threads)
    engines[f"fp32, {1 if threads != 1 else 2} thread(s)"] = (eng, 1 if threads != 1 else 2)
    engines["fp32, no native kernel (TROUBADOUR_NATIVE=0)"] = (Engine(be, native_kernel=False), threads)
    before = Engine(be)
    before._skinny = False   # every matmul through F.linear, as before the layouts were picked by rows
    engines["fp32, F.linear layout (before)"] = (before, threads)
    for precision in ("bf16", "int8"):
        be, _ = load(path, threads)
        engines[f"--precision {precision}"] = (Engine(be, precision=precision), threads)
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
