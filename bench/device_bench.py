"""Figures on an accelerator: musicgen-small- and medium-shaped random checkpoints loaded on `--device` (fp16 on
CUDA, the backends' default there), our engine vs transformers' generate() on the same weights.

    python bench/run.py --device cuda                  # the suite, plus this section on the GPU
    python bench/run.py --device cuda --only device    # this section alone

Per model: real-time factor (seconds of generation per second of audio, whole calls: text encoder, decoder,
codec) for both and their ratio, per-step time for both and their ratio, 4 prompts batched vs one after
another, peak device memory, and the same engine with `--compile` (CUDA graphs on CUDA): its step time
against the eager step's, its first (compiling) call, and how many greedy codes differ from eager. Steps are timed from the same hooks as on CPU (our progress callback,
transformers' logits processor); on CUDA each hook first waits for the device, so a tick is when the step's
work finished, not when it was queued. `--device cpu --only device --device-models tiny` runs the same code
on the CPU as a check of the section itself.
"""

from __future__ import annotations

import gc

import torch

from common import dist, med, now, r

MODELS = ("small", "medium")


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _checkpoint(name: str):
    import models
    return {"tiny": models.tiny, "small": models.small_shaped, "medium": models.medium_shaped}[name]()


def one_model(name: str, device: str, duration: float, reps: int, table) -> dict:
    import engine_bench as eb
    from troubadour.backends import load_backend
    from troubadour.engine import Engine

    path = _checkpoint(name)
    t = now()
    backend = load_backend(str(path), device)
    engine = Engine(backend)
    dev = engine._device
    sync = _sync(dev)
    load_s = now() - t
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def ours(prompts, seconds, eng=engine):
        ticks: list[float] = []

        def progress(done, total):
            sync()
            ticks.append(now())
        t0 = now()
        eb.ours(eng, prompts, seconds, progress=progress)   # returns numpy audio: the device is done
        return now() - t0, ticks

    def theirs(prompts, seconds):
        from transformers import LogitsProcessorList

        timer = _SyncTimer(sync)
        inputs = backend.tokenizer(prompts, padding=True, return_tensors="pt").to(dev)
        torch.manual_seed(1)
        t0 = now()
        with torch.inference_mode():
            backend.model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250,
                                   max_new_tokens=engine.steps_for(seconds),
                                   logits_processor=LogitsProcessorList([timer]))
        sync()
        return now() - t0, timer.ticks

    prompts = eb.PROMPTS[:1]
    ours(prompts, 0.2)
    theirs(prompts, 0.2)
    compiled = Engine(backend, compile_step=True, same_thread=True)   # --compile: CUDA graphs on a GPU (main thread)
    t = now()
    ours(prompts, 0.2, compiled)
    compile_s = now() - t
    o_wall, h_wall, o_steps, h_steps, c_wall, c_steps = [], [], [], [], [], []
    for _ in range(reps):   # interleaved
        w, ticks = ours(prompts, duration)
        o_wall.append(w)
        o_steps += [b - a for a, b in zip(ticks[1:], ticks[2:])]   # the first interval is the prefill
        w, ticks = theirs(prompts, duration)
        h_wall.append(w)
        h_steps += [b - a for a, b in zip(ticks[1:], ticks[2:])]
        w, ticks = ours(prompts, duration, compiled)
        c_wall.append(w)
        c_steps += [b - a for a, b in zip(ticks[1:], ticks[2:])]
    greedy = [eb.ours(e, prompts, 1.0, top_k=1)["results"][0] for e in (engine, compiled)]
    batch, single = [], []
    for _ in range(max(1, reps - 1)):
        batch.append(ours(eb.PROMPTS, duration)[0])
        single.append(sum(ours([p], duration)[0] for p in eb.PROMPTS))
    out = {"checkpoint": str(path), "device": str(dev), "dtype": str(engine._dtype()).replace("torch.", ""),
           "load_s": r(load_s, 1), "duration_s": duration, "reps": reps,
           "rtf_ours": r(med(o_wall) / duration), "rtf_transformers": r(med(h_wall) / duration),
           "rtf_ratio": r(med(o_wall) / med(h_wall)),
           "ours_step_ms": dist(o_steps, 1e3), "hf_step_ms": dist(h_steps, 1e3),
           "step_ratio": r(med(o_steps) / med(h_steps)) if o_steps and h_steps else None,
           "batch_speedup": r(med(single) / med(batch)),
           "compiled": {"compile_s": r(compile_s, 1), "rtf": r(med(c_wall) / duration),
                        "step_ms": dist(c_steps, 1e3), "step_vs_eager": r(med(c_steps) / med(o_steps)),
                        "greedy_codes_differ": r(float((greedy[0].codes != greedy[1].codes).mean())),
                        "mode": compiled._compiled.mode, "failure": compiled._compiled.failure}}
    if dev.type == "cuda":
        out["peak_memory_gb"] = r(torch.cuda.max_memory_allocated(dev) / 1e9, 2)
        out["gpu"] = torch.cuda.get_device_name(dev)
    table.row(f"{name} on {dev}: real-time factor, ours / transformers", out["rtf_ours"], "",
              note=f"transformers {out['rtf_transformers']} (ratio {out['rtf_ratio']}); {duration:g} s x {reps}")
    table.row(f"{name} on {dev}: step p50, ours / transformers", out["ours_step_ms"].get("p50"), "ms",
              note=f"transformers {out['hf_step_ms'].get('p50')} ms (ratio {out['step_ratio']})")
    table.row(f"{name} on {dev}: 4 prompts batched vs sequential", out["batch_speedup"], "x")
    c = out["compiled"]
    table.row(f"{name} on {dev}: --compile step / eager step", c["step_vs_eager"], "",
              note=f"step p50 {c['step_ms'].get('p50')} ms, RTF {c['rtf']}, first call {c['compile_s']} s; "
                   f"greedy codes differ {c['greedy_codes_differ']}; {c['mode']}"
                   + (f"; FAILED, plain loop: {c['failure']}" if c["failure"] else ""))
    return out


class _SyncTimer:
    """A logits processor (transformers calls it once per step) that records when the step's work is done."""

    def __init__(self, sync):
        self.sync, self.ticks = sync, []

    def __call__(self, input_ids, scores):
        self.sync()
        self.ticks.append(now())
        return scores


def run(cfg, table, results: dict) -> None:
    table.section(f"device figures on {cfg.device}: ours vs transformers generate(), CFG 3, top_k 250")
    out = {}
    for name in cfg.device_models:
        out[name] = one_model(name, cfg.device, cfg.device_duration, cfg.device_reps, table)
        gc.collect()   # the model goes with one_model's frame; free it before loading the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    results["device"] = out
