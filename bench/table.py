"""Render bench/results/latest.json (and latest-full.json) as the Markdown table in bench/README.md:
`python bench/table.py [results.json ...]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

ROWS = [  # (headline key, what it is)
    ("cache_hit_throughput_ratio", "cache hit MB/s, server+client ÷ raw pyzmq (30 s 48 kHz stereo s16)"),
    ("cache_hit_first_chunk_p99_ms", "cache hit: time to first chunk, p99 (ms)"),
    ("cache_hit_server_only_ratio", "same fetch by a bare client (no decode, hash or bookkeeping) ÷ raw pyzmq"),
    ("step_ratio_tiny", "per-step time, ours ÷ transformers generate(), tiny"),
    ("step_ratio_small", "per-step time, ours ÷ transformers generate(), small-shaped"),
    ("floor_ratio_small", "small-shaped step ÷ time to read its weights once"),
    ("ttfa_ratio", "time to first audio ÷ whole generation, 10 s, tiny"),
    ("batch_speedup", "4 prompts batched vs sequential, small-shaped"),
    ("batch_speedup_tiny", "4 prompts batched vs sequential, tiny"),
    ("e2e_ratio_tiny", "whole generation incl. text encoder + codec, ours ÷ transformers, tiny"),
    ("e2e_ratio_small", "same, small-shaped"),
    ("ttfa_ratio_small", "time to first audio ÷ whole generation, 10 s, small-shaped"),
    ("per_frame_60s_vs_10s_tiny", "per-frame cost of a 60 s track ÷ a 10 s track (tiny)"),
    ("cache_get_10000_vs_100", "TrackCache.get p50, 10 000 entries ÷ 100 entries"),
    ("cache_hit_max_gap_ms_64_clients", "64 concurrent clients: longest gap between chunks (ms)"),
    ("cache_hit_fairness_64_clients", "64 concurrent clients: min ÷ max per-client MB/s while all are fetching"),
    ("cache_hit_raw_fairness_64_clients", "same, raw pyzmq pair"),
    ("cache_hit_aggregate_ratio_64_clients", "64 concurrent clients: aggregate MB/s ÷ raw pyzmq"),
    ("device_rtf_ratio_small", "`--device cuda`: real-time factor, ours ÷ transformers, small-shaped (not yet measured)"),
    ("device_rtf_ratio_medium", "`--device cuda`: same, medium-shaped (not yet measured)"),
    ("device_compiled_step_vs_eager_small", "`--device cuda`: `--compile` step ÷ eager step, small-shaped (not yet measured)"),
    ("device_compiled_step_vs_eager_medium", "`--device cuda`: same, medium-shaped (not yet measured)"),
    ("compile_speed_vs_fp32_small_cpu", "CPU, full run: `--compile` speed ÷ default fp32 engine, small-shaped"),
]


def main(paths) -> None:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    head = "| figure | goal | " + " | ".join(f"{d['meta']['mode']} ({d['meta']['threads']} thr)" for d in runs) + " |"
    print(head)
    print("|" + "---|" * (2 + len(runs)))
    for key, text in ROWS:
        goal = runs[0]["goals"].get(key, "")
        cells = []
        for d in runs:
            v = d.get(key)
            met = d.get("met", {}).get(key)
            mark = "" if met is None else (" ✅" if met else " ❌")
            cells.append("–" if v is None else f"{v}{mark}")
        print(f"| `{key}` — {text} | {goal} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:] or [str(p) for p in (HERE / "results" / "latest.json", HERE / "results" / "latest-full.json")
                            if p.exists()]
    main(args)
