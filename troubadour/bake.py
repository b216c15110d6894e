"""`troubadour bake`: render a profiles file into a soundtrack folder that a game ships without a server.

    DIR/<context>/<context>_v<N>.<fmt>  audio with loop points embedded (WAV smpl / OGG LOOPSTART+LOOPLENGTH)
    DIR/<context>/<context>_v<N>.json   sidecar: the manifest entry plus what made it (bake_key, sha256)
    DIR/manifest.json                   everything an engine needs to play the soundtrack
    DIR/soundtrack_info.txt, index.html for people (showcase.py)
    DIR/.cache                          raw model audio (a TrackCache); the game does not need it

A track is skipped when its sidecar has the same bake_key and its file still has the recorded sha256;
otherwise it is post-processed again from the raw cache, or generated when not cached. So a killed bake
resumes where it stopped, and changing only loudness/format/rate re-processes without the model.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import __version__
from .errors import EngineFault, ProfileError, TroubadourError
from .params import GenParams

FORMAT_VERSION = 1
PROCESSING_VERSION = 4     # bump when post-processing changes: every track is then re-processed (3: OGG
                           # peaks measured on the decoded file; 4: OGG peaks kept under the ceiling, not 0.05 dB
                           # over it; a stinger without a bpm cut to its duration)
# 2: a loop without a bpm takes its tempo from the model's audio, the same at every output rate
SAMPLE_RATES = (32000, 44100, 48000)
DEFAULT_SAMPLE_RATE = 48000
TRUE_PEAK_DBFS = -1.0
PEAK_MARGIN_DB = 0.1       # an OGG whose decoded peak is over the ceiling is encoded again this far under it
STINGER_FADE_S = 0.5
# Generated past the bar-aligned length, so frame rounding in the model never costs the last bar.
GUARD_S = 0.06
CACHE_DIR, LOCK = ".cache", ".bake.lock"
JOURNAL = ".bake-written"   # files written since the last manifest: an interrupted bake wrote no manifest
ENTRY_KEYS = ("variant", "file", "seed", "duration", "frames", "channels", "loop_start", "loop_end",
              "loop_start_s", "loop_end_s", "bpm", "loudness_lufs", "true_peak_dbfs", "seam", "track_id", "sha256")


@dataclass
class TrackPlan:
    context: object           # profiles.Context
    variant: int
    params: GenParams         # what the model is asked for (variant seed, guarded duration)
    length: float | None      # bar-aligned seconds a stinger is cut to (loops cut themselves)
    loudness: float
    file: str                 # relative to the bake folder
    raw_key: str              # the model track (its track_id)
    bake_key: str             # raw_key + every post-processing setting
    theme: "TrackPlan | None" = None   # leitmotif: this track follows the melody of that one
    status: str = "generate"  # "skip" | "cached" | "generate", then "generated" once made
    entry: dict | None = None


@dataclass
class BakeReport:
    out_dir: Path
    tracks: int
    manifest: dict | None = None
    generated: int = 0
    from_cache: int = 0
    skipped: int = 0
    batches: int = 0
    failed: dict = field(default_factory=dict)   # context -> why its tracks could not be made


    def summary(self) -> str:
        return (f"{self.tracks} tracks in {self.out_dir}: {self.generated} generated ({self.batches} batches), "
                f"{self.from_cache} from cache, {self.skipped} up to date")


class BakeFailed(TroubadourError):
    """Some contexts' tracks could not be generated (the model's fault, e.g. non-finite values); the others were
    made and cached, and no manifest was written: the folder is not a finished soundtrack."""
    code = "engine_error"

    def __init__(self, report: BakeReport):
        self.report = report
        why = "; ".join(f"{name}: {text}" for name, text in report.failed.items())
        super().__init__(f"{len(report.failed)} context(s) could not be generated ({why}); the other tracks are "
                         f"done, no manifest.json was written")


# ---------------------------------------------------------------- planning
def plan_tracks(profiles, source, *, fmt: str, sample_rate: int, variants: int | None = None,
                loudness: float | None = None, max_duration: float | None = None) -> list[TrackPlan]:
    """Every context x variant, in profile order; a themed context's plans point at its theme's variant 0."""
    from . import loops
    from .cache import track_key

    cap = source.max_duration - GUARD_S
    if max_duration is not None:
        cap = min(cap, max_duration)
    planned: dict[str, list[TrackPlan]] = {}

    def plan(ctx, chain=()) -> list[TrackPlan]:
        if ctx.name in planned:
            return planned[ctx.name]
        if ctx.name in chain:
            raise ProfileError(f"themes form a loop: {' -> '.join((*chain, ctx.name))}",
                               field=f"contexts.{ctx.name}.theme")
        theme = plan(profiles.contexts[ctx.theme], (*chain, ctx.name))[0] if ctx.theme else None
        want, length = min(ctx.params.duration, cap), None
        if ctx.bpm is not None:
            length = loops.bar_aligned_duration(want, ctx.bpm, ctx.meter, max_duration=cap)
        duration = round(length + GUARD_S, 6) if length is not None else want
        target = ctx.loudness if loudness is None else float(loudness)
        post = {"loop": ctx.loop, "bpm": ctx.bpm, "meter": ctx.meter, "loudness": target, "length": length,
                "format": fmt, "sample_rate": sample_rate, "processing": PROCESSING_VERSION}
        raw_extra = {"theme": theme.raw_key} if theme else None
        out = []
        for v in range(variants or ctx.variants):
            params = replace(ctx.params, seed=ctx.params.seed + v, duration=duration)
            raw = track_key(source.identity, ctx.prompt, params, extra=raw_extra)
            out.append(TrackPlan(ctx, v, params, length, target, f"{ctx.name}/{ctx.name}_v{v}.{fmt}", raw,
                                 track_key(source.identity, ctx.prompt, params, extra={**post, "raw": raw}),
                                 theme))
        planned[ctx.name] = out
        return out

    return [p for ctx in profiles.contexts.values() for p in plan(ctx)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _up_to_date(out: Path, plan: TrackPlan) -> dict | None:
    """The manifest entry recorded by an earlier bake of exactly this track, if its file is intact."""
    from .audio import sidecar_path

    path = out / plan.file
    try:
        meta = json.loads(sidecar_path(path).read_text("utf-8"))
        if meta.get("bake_key") == plan.bake_key and meta.get("sha256") == _sha256(path):
            return {k: meta.get(k) for k in ENTRY_KEYS}
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------- post-processing
CODEC_FRAME_S = 0.02   # MusicGen's EnCodec frame


def finish_track(out: Path, plan: TrackPlan, raw, native_rate: int, sample_rate: int, fmt: str,
                 model: dict) -> dict:
    """Raw model audio -> resampled, looped or faded, loudness-normalised file + sidecar; the entry."""
    import numpy as np
    import soundfile as sf

    from . import loops
    from .audio import integrated_loudness, normalize_loudness, resample, true_peak_dbfs, write_audio, write_sidecar

    ctx = plan.context
    loop, bpm, seam = None, ctx.bpm, None
    if ctx.loop and bpm is None:   # estimated once, from the model's own audio: the same loop at every rate
        bpm = loops.estimate_bpm(raw, native_rate)
    a = resample(raw, native_rate, sample_rate)   # loop points are then exact frames of the shipped rate
    if plan.length is not None and ctx.bpm and plan.length < loops.bar_seconds(ctx.bpm, ctx.meter):
        a = a[:, :round(plan.length * sample_rate)]   # not even a bar fits the cap: the cap, not the guard
    if ctx.loop:
        # loop on whole codec frames (20 ms at MusicGen's 50 Hz), as the server does
        lr = loops.make_loop(a, sample_rate, bpm=bpm, meter=ctx.meter, snap=round(sample_rate * CODEC_FRAME_S),
                             estimate=False)
        a, loop, bpm = lr.audio, lr.loop, lr.bpm
    else:
        # exactly whole bars, or the duration asked for (the model makes whole 20 ms codec frames)
        a = a[:, :round((plan.length if plan.length is not None else plan.params.duration) * sample_rate)]
        a = loops.fade_out(a, sample_rate, min(STINGER_FADE_S, a.shape[1] / sample_rate / 4))
    a = normalize_loudness(a, sample_rate, target_lufs=plan.loudness, peak_dbfs=TRUE_PEAK_DBFS)
    if loop is not None:
        m = loops.seam_metric(a, sample_rate, *loop)
        # Sorted like the (sorted) sidecar, so an entry read back serialises identically.
        seam = dict(sorted({**{k: round(float(v), 4) for k, v in m.items()}, "ok": loops.meets_limits(m)}.items()))
    (out / plan.file).parent.mkdir(parents=True, exist_ok=True)
    path = write_audio(out / plan.file, a, sample_rate, fmt, loop=loop)
    shipped = a
    if fmt == "ogg":   # lossy coding moves peaks (up to ~1 dB): what ships is measured, and kept under the ceiling
        shipped = sf.read(str(path), dtype="float32", always_2d=True)[0].T
        for _ in range(4):
            over = true_peak_dbfs(shipped, sample_rate) - TRUE_PEAK_DBFS
            if over <= 0:
                break
            a = (a * 10 ** (-(over + PEAK_MARGIN_DB) / 20)).astype(np.float32)
            path = write_audio(out / plan.file, a, sample_rate, fmt, loop=loop)
            shipped = sf.read(str(path), dtype="float32", always_2d=True)[0].T
    lufs = integrated_loudness(shipped, sample_rate)
    entry = {
        "variant": plan.variant, "file": plan.file, "seed": plan.params.seed,
        "duration": round(a.shape[1] / sample_rate, 6), "frames": int(a.shape[1]), "channels": int(a.shape[0]),
        "loop_start": loop[0] if loop else None, "loop_end": loop[1] if loop else None,
        "loop_start_s": round(loop[0] / sample_rate, 6) if loop else None,
        "loop_end_s": round(loop[1] / sample_rate, 6) if loop else None,
        "bpm": round(float(bpm), 3) if bpm else None,
        "loudness_lufs": round(lufs, 2) if lufs > float("-inf") else None,
        "true_peak_dbfs": round(true_peak_dbfs(shipped, sample_rate), 2),
        "seam": seam, "track_id": plan.raw_key, "sha256": _sha256(path),
    }
    write_sidecar(path, {**entry, "context": ctx.name, "prompt": ctx.prompt, "params": plan.params.to_dict(),
                         "theme": plan.theme.context.name if plan.theme else None, "loop": ctx.loop,
                         "meter": ctx.meter, "loudness_target": plan.loudness, "sample_rate": sample_rate,
                         "format": fmt, "model": model, "bake_key": plan.bake_key,
                         "troubadour_version": __version__, "created": _now()})
    return entry


def _now() -> str:
    """UTC now, or the time SOURCE_DATE_EPOCH gives (reproducible builds: the same bake, the same bytes)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    t = _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc) if epoch.isdigit() else \
        _dt.datetime.now(_dt.timezone.utc)
    return t.isoformat(timespec="seconds")


def _model_name(model_id: str) -> str:
    """A local checkpoint folder by its name: its path is this machine's (the identity names the weights)."""
    local = Path(model_id).expanduser()
    return local.name if local.is_dir() else model_id


# ---------------------------------------------------------------- the bake
@contextmanager
def _locked(out: Path):
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TroubadourError(f"another bake is writing {out}", code="busy", field="out") from None
        # Only a bake killed mid-write leaves these (temp files of atomic writes).
        for tmp in [*out.glob(".*.tmp"), *out.glob("*/.*.tmp")]:
            tmp.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _set_aside_manifest(out: Path) -> None:
    """Files are about to change: the manifest would describe the old ones until the new one is written (a
    stopped bake left a manifest with other frames and loop points than its files), so it moves aside."""
    from .audio import _fsync_dir
    from .showcase import MANIFEST, PREVIOUS

    if (out / MANIFEST).exists():
        os.replace(out / MANIFEST, out / PREVIOUS)
        _fsync_dir(out)


def _journal(out: Path, file: str) -> None:
    """Note a file about to be written, so a later bake with other settings removes it even when this one is
    killed before its manifest (which lists what is ours) is written."""
    with open(out / JOURNAL, "a", encoding="utf-8") as f:
        f.write(file + "\n")
        f.flush()
        os.fsync(f.fileno())


class _Run:
    """Raw audio for one bake: generated per context batch, else from the cache."""

    def __init__(self, source, cache, bar, log, report):
        self.source, self.cache, self.bar, self.log, self.report = source, cache, bar, log, report
        self.raws: dict[str, tuple] = {}

    def raw(self, plan: TrackPlan) -> tuple:
        """(audio, sample_rate) of a plan's model track."""
        if plan.raw_key not in self.raws:
            hit = self.cache.get(plan.raw_key)
            if hit is None:     # evicted, or went bad since it was listed
                self.generate([plan])
            else:
                self.raws[plan.raw_key] = hit.audio, hit.sample_rate
                if plan.status == "cached":      # not when it is only a theme's melody
                    self.report.from_cache += 1
                    self.bar.update(1)
        return self.raws[plan.raw_key]

    def generate(self, todo: list[TrackPlan]) -> None:
        melody = self.raw(todo[0].theme)[0] if todo[0].theme else None
        self.log(f"{todo[0].context.name}: generating {len(todo)} track(s)")
        base = self.bar.n
        audios = self.source.render(todo, lambda f: self.bar.update(base + f * len(todo) - self.bar.n), melody)
        self.bar.update(base + len(todo) - self.bar.n)
        self.report.batches += 1
        self.report.generated += len(todo)
        rate = self.source.sample_rate
        for p, a in zip(todo, audios):
            p.status = "generated"   # (a theme's variant 0 made for a context earlier in the file counts once)
            self.cache.put(p.raw_key, a, rate, {"context": p.context.name, "variant": p.variant,
                                                "prompt": p.context.prompt})
            self.raws[p.raw_key] = a, rate


def bake(profiles_path, out_dir, source, *, variants: int | None = None, fmt: str = "wav",
         sample_rate: int = DEFAULT_SAMPLE_RATE, loudness: float | None = None,
         max_duration: float | None = None, log=None, progress: bool = True) -> BakeReport:
    """Render every context x variant of a profiles file into `out_dir` (see the module docstring)."""
    from tqdm import tqdm

    from .cache import TrackCache
    from .profiles import load_profiles
    from .showcase import write_outputs

    profiles = load_profiles(profiles_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: tqdm.write(f"bake: {msg}", file=sys.stderr))
    model = {"id": _model_name(source.model_id), "identity": source.identity}
    with _locked(out), TrackCache(out / CACHE_DIR) as cache:
        plans = plan_tracks(profiles, source, fmt=fmt, sample_rate=sample_rate, variants=variants,
                            loudness=loudness, max_duration=max_duration)
        for p in plans:
            p.entry = _up_to_date(out, p)
            p.status = "skip" if p.entry else "cached" if cache.contains(p.raw_key) else "generate"
        themed = sorted({p.context.name for p in plans if p.theme and p.status == "generate"})
        if themed:
            source.check_themes(profiles, themed)     # fail before generating anything
        report = BakeReport(out, len(plans), skipped=sum(p.status == "skip" for p in plans))
        if report.skipped < len(plans):
            _set_aside_manifest(out)
        bar = tqdm(total=len(plans), initial=report.skipped, unit="track", desc="baking", file=sys.stderr,
                   disable=None if progress else True)
        run = _Run(source, cache, bar, log, report)
        try:
            for name in profiles.contexts:
                group = [p for p in plans if p.context.name == name and p.status != "skip"]
                # (a theme's variant 0, or a track of the same prompt and settings, may already be here)
                fresh = [p for p in group if p.status == "generate"]
                todo = [p for p in fresh if p.raw_key not in run.raws]
                report.from_cache += len(fresh) - len(todo)      # the same raw track, made earlier in this run
                bar.update(len(fresh) - len(todo))
                try:
                    if todo:
                        run.generate(todo)
                except (EngineFault, TroubadourError) as e:   # the model failed this context; the others go on
                    if isinstance(e, TroubadourError) and e.code != "engine_error":
                        raise
                    report.failed[name] = getattr(e, "message", str(e))
                    log(f"{name}: {report.failed[name]}")
                    continue
                for p in group:
                    bar.set_postfix_str(p.file, refresh=False)
                    _journal(out, p.file)
                    p.entry = finish_track(out, p, *run.raw(p), sample_rate, fmt, model)
                    if p.entry["seam"] and not p.entry["seam"]["ok"]:
                        log(f"{p.file}: loop seam over the limits {p.entry['seam']} (listen to it)")
                    got = p.entry["loudness_lufs"]
                    if got is not None and abs(got - p.loudness) > 1.0:
                        log(f"{p.file}: {got} LUFS where {p.loudness} was asked (the true-peak ceiling of "
                            f"{TRUE_PEAK_DBFS} dBTP stops a louder one)")
        finally:
            bar.close()
        if report.failed:
            raise BakeFailed(report)
        report.manifest = build_manifest(profiles, plans, model, sample_rate, fmt)
        journal = out / JOURNAL
        written = journal.read_text("utf-8").splitlines() if journal.exists() else []
        write_outputs(out, report.manifest, written)   # removes what is ours and no longer planned
        journal.unlink(missing_ok=True)
    log(report.summary())
    return report


def _genre(ctx, profiles) -> str | None:
    """The genre the context's prompt was built with: its own, else the game's (None for a raw prompt)."""
    if "prompt" in ctx.source_fields:
        return None
    return ctx.source_fields.get("genre") or profiles.game.get("genre")


def build_manifest(profiles, plans: list[TrackPlan], model: dict, sample_rate: int, fmt: str) -> dict:
    contexts = {}
    for p in plans:
        ctx = p.context
        c = contexts.setdefault(ctx.name, {
            "prompt": ctx.prompt, "params": replace(p.params, seed=ctx.params.seed).to_dict(),
            "mood": ctx.source_fields.get("mood"), "genre": _genre(ctx, profiles), "theme": ctx.theme,
            "loop": ctx.loop, "bpm": ctx.bpm, "meter": ctx.meter, "loudness_target": p.loudness, "variants": []})
        c["variants"].append(p.entry)
    return {"format_version": FORMAT_VERSION, "generated_at": _now(), "troubadour_version": __version__,
            "model": model, "sample_rate": sample_rate, "format": fmt, "game": dict(profiles.game),
            "loop_points": "frames at sample_rate; loop_end exclusive (play loop_start..loop_end-1, repeat)",
            "contexts": contexts}
