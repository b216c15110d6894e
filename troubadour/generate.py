"""Render tracks to files: the library behind `troubadour generate` (and, later, bake)."""

from __future__ import annotations

import datetime as _dt
import re
import time
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import __version__
from .audio import normalize_loudness, write_audio, write_sidecar
from .metalog import MetadataLog
from .engine import Engine, Job
from .params import GenParams

METADATA_LOG = "metadata.jsonl"


@dataclass(frozen=True)
class Plan:
    """One prompt rendered as `len(seeds)` variations."""

    prompt: str
    params: GenParams
    variants: int = 1
    context: str | None = None
    loudness: float = -16.0
    melody: object = None     # theme audio (channels, samples) for melody models

    def jobs(self) -> list[Job]:
        return [Job(self.prompt, replace(self.params, seed=self.params.seed + i), self.melody)
                for i in range(self.variants)]


def slug(text: str, limit: int = 40) -> str:
    # accents folded rather than dropped ("Épopée" -> "epopee", "ß" -> "ss"): names stay ASCII everywhere
    text = "".join(c for c in unicodedata.normalize("NFKD", text.casefold()) if not unicodedata.combining(c))
    s = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    return (s[:limit].rstrip("_") or "track")


def _free_name(out: Path, stem: str, fmt: str, job: Job, engine: Engine, loudness: float) -> Path:
    """`stem.fmt`, or `stem_2.fmt`, `stem_3.fmt`... when that file holds another track: names keep 40 characters
    of the prompt, so two prompts (or contexts) could share one and the second overwrote the first. The same
    track made again (prompt, parameters, model, loudness) takes its own name back. `stem.json` describes one
    file: a `stem` in another format is another name."""
    import json

    from .audio import sidecar_path

    n = 1
    while True:
        path = out / (f"{stem}.{fmt}" if n == 1 else f"{stem}_{n}.{fmt}")
        try:
            meta = json.loads(sidecar_path(path).read_text("utf-8"))
        except (OSError, ValueError):
            if not path.exists():
                return path
            meta = None   # audio without a readable sidecar: somebody's file, kept
        if isinstance(meta, dict) and (meta.get("file"), meta.get("prompt"), meta.get("params"),
                                       meta.get("model_identity"), meta.get("loudness_target_lufs")) == (
                path.name, job.prompt, job.params.to_dict(), engine.info.identity, loudness):
            return path
        n += 1


def render(engine: Engine, plan: Plan, out_dir: str | Path, fmt: str = "wav",
           progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Generate all variations of `plan` in one batch; write audio, sidecars and the metadata log."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan.jobs()
    t0 = time.perf_counter()
    results = engine.generate(jobs, progress=progress)
    took = time.perf_counter() - t0
    log = MetadataLog(out / METADATA_LOG)
    base = slug(plan.context or plan.prompt)
    written = []
    for i, (job, res) in enumerate(zip(jobs, results)):
        audio = normalize_loudness(res.audio, engine.sample_rate, target_lufs=plan.loudness)
        path = write_audio(_free_name(out, f"{base}_s{job.params.seed}_v{i}", fmt, job, engine, plan.loudness),
                           audio, engine.sample_rate, fmt)
        meta = {
            "file": path.name,
            "prompt": job.prompt,
            "context": plan.context,
            "variant": i,
            "seed": job.params.seed,
            "params": job.params.to_dict(),
            "duration": audio.shape[1] / engine.sample_rate,
            "sample_rate": engine.sample_rate,
            "channels": int(audio.shape[0]),
            "format": fmt,
            "loudness_target_lufs": plan.loudness,
            "model": engine.info.model_id,
            "model_identity": engine.info.identity,
            "device": engine.info.device,
            "dtype": engine.info.dtype,
            "generation_seconds": round(took, 3),
            "batch_size": len(jobs),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "troubadour_version": __version__,
        }
        write_sidecar(path, meta)
        log.append(meta)
        written.append(path)
    return written
