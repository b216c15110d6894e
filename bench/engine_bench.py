"""Engine figures: our decode loop vs transformers' generate() on the same weights, the memory-bandwidth
floor, time to first audio, batching, scaling with duration and cache size (step_detail.py: where a step's
time goes, and the CPU options)."""

from __future__ import annotations

import numpy as np
import torch

from common import dist, med, now, r

PROMPTS = ["a calm piano piece with soft strings", "an epic orchestral battle theme with drums",
           "a mysterious ambient soundscape with dark synths", "an upbeat chiptune melody for a retro game"]


# ---------------------------------------------------------------- loading and running
def load(path, threads: int, hf: bool = True, **engine_options):
    """(a backend for transformers' generate or None, our Engine on its own copy). The Engine repacks the
    decoder's weights for the native kernel (panels.py); transformers must run on the checkpoint as it loads,
    or it would be timed on our layout."""
    from troubadour.backends import load_backend
    from troubadour.engine import Engine

    torch.set_num_threads(threads)
    backend = load_backend(str(path), "cpu") if hf else None
    return backend, Engine(load_backend(str(path), "cpu"), **engine_options)


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


def codec_share(name, engine, duration, step_s: float, table, reps: int = 3, frames: int = 150) -> dict:
    """EnCodec's part of streaming, per chunk of chunk_frames, same run: the engine's stream decoder (the
    LSTM's state carried, codec_stream.py) against decoding each chunk's window from its codes again (context +
    chunk + lookahead frames: the path before session 9 and the fallback) and against decoding only the kept
    frames; with duration, the share of one whole generation spent in the codec."""
    from troubadour import codec_stream
    from troubadour.chunking import RowCodes

    be = engine.backend
    k = engine.info.num_codebooks
    full_n = engine.chunk_frames + engine.context_frames + engine.lookahead_frames
    vocab = be.decoder.config.vocab_size
    codes = torch.randint(0, vocab, (k, frames), generator=torch.Generator().manual_seed(0))

    def stream(carried: bool) -> tuple[float, int]:
        row = RowCodes(frames, k, "cpu", engine._hop, engine.chunk_frames, engine.context_frames,
                       engine.lookahead_frames)
        row.codec = be.stream_decoder(engine.lookahead_frames, engine._gemv) if carried else None
        spent, n = 0.0, 0
        with torch.inference_mode():
            for f in range(frames):
                w = row.push(codes[:, f:f + 1])
                if w is None:
                    continue
                t = now()
                row.decode(w, be.decode_audio)
                spent += now() - t
                n += 1
        return spent / n, n

    t_stream, t_window, t_kept = [], [], []
    with torch.inference_mode():
        be.decode_audio(codes[None, :, :full_n])
        carried = be.stream_decoder(engine.lookahead_frames, engine._gemv) is not None
        for _ in range(reps):
            if carried:
                t_stream.append(stream(True)[0])
            t_window.append(stream(False)[0])
            t = now()
            be.decode_audio(codes[None, :, :engine.chunk_frames])
            t_kept.append(now() - t)
    d_stream = med(t_stream) if t_stream else None
    d_window, d_kept = med(t_window), med(t_kept)
    per_chunk = engine.chunk_frames * step_s
    d_engine = d_stream if d_stream is not None else d_window
    out = {"stream_chunk_ms": r(d_stream * 1e3, 1) if d_stream is not None else None,
           "window_chunk_ms": r(d_window * 1e3, 1), "frames_per_window": full_n,
           "kept_only_decode_ms": r(d_kept * 1e3, 1), "step_ms_p50": r(step_s * 1e3, 2),
           "stream_vs_window": r(d_stream / d_window) if d_stream is not None else None,
           "steady_decode_share": r(d_engine / (d_engine + per_chunk)),
           "steady_share_windows": r(d_window / (d_window + per_chunk))}
    if duration:
        calls: list[float] = []

        def timed(orig):
            def call(*a, **kw):
                t = now()
                o = orig(*a, **kw)
                calls.append(now() - t)
                return o
            return call

        saved = codec_stream.StreamDecoder.chunk, be.decode_audio
        codec_stream.StreamDecoder.chunk = timed(saved[0])
        be.decode_audio = timed(saved[1])
        try:
            run = ours(engine, PROMPTS[:1], duration)
        finally:
            codec_stream.StreamDecoder.chunk = saved[0]
            del be.decode_audio   # back to the class's method
        out.update(run_duration_s=duration, run_decode_calls=len(calls),
                   run_decode_share_of_wall=r(sum(calls) / run["seconds"]))
    table.row(f"{name}: codec share of streaming (steady state)", out["steady_decode_share"], "",
              note=f"per {engine.chunk_frames}-frame chunk: carried state {out['stream_chunk_ms']} ms, "
                   f"{full_n}-frame window {out['window_chunk_ms']} ms (x{out['stream_vs_window']}); "
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
