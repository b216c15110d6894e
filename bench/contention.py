"""The engine sharing the CPU with a game: OpenMP spin settings measured side by side, on an idle machine and
with one core kept busy (as a running game or editor does). `python bench/contention.py [--reps N]`.

Each run is a fresh process (OpenMP reads its settings when it loads) generating 2 s with the small-shaped
checkpoint; it prints the median wall time per setting and its ratio to PyTorch's default (libgomp spins
~300 000 times before sleeping). troubadour's CLI sets GOMP_SPINCOUNT=1000 unless the user set one (cli.py).
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import med, r

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {   # name -> (environment, torch threads or 0 for the default)
    "default": ({}, 0),
    "spin_1000": ({"GOMP_SPINCOUNT": "1000"}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "threads_1": ({}, 1),
}
CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
from troubadour.backends import load_backend
from troubadour.engine import Engine, Job
from troubadour.params import GenParams
if {threads}:
    torch.set_num_threads({threads})
eng = Engine(load_backend({model!r}, "cpu"))
eng.generate([Job("warm up", GenParams(duration=0.2))])
t = time.perf_counter()
eng.generate([Job("calm piano by the sea", GenParams(duration=2.0, seed=1))])
print(time.perf_counter() - t)
"""


def one(model: Path, name: str) -> float:
    env, threads = SETTINGS[name]
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    code = CHILD.format(root=str(ROOT), model=str(model), threads=threads)
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import models

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    model = models.small_shaped()
    results = {}
    for load in ("idle", "one_core_busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "one_core_busy" else None
        try:
            times = {n: [] for n in SETTINGS}
            for _ in range(args.reps):          # interleaved, so drifting load hits every setting alike
                for n in SETTINGS:
                    times[n].append(one(model, n))
        finally:
            if busy:
                busy.kill()
        base = med(times["default"])
        print(f"\n== {load} (2 s of audio, small-shaped, {os.cpu_count()} cores, {args.reps} runs each)")
        for n, ts in times.items():
            print(f"  {n:<12} median {med(ts):6.2f} s   ÷ default {med(ts) / base:5.2f}   runs {[round(t, 2) for t in ts]}")
            results[f"{load}_{n}_s"] = r(med(ts))
            results[f"{load}_{n}_vs_default"] = r(med(ts) / base)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
