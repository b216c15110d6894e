"""What `troubadour bake` writes to describe a soundtrack: manifest.json, soundtrack_info.txt, index.html.

index.html is one self-contained HTML5 file (inline CSS and a small inline script, no external URLs): a
section per context with an <audio> player, a "play looped" button and an inline-SVG waveform per variant
(loop region marked), and the mood presets. It comes from the manifest plus the audio files (for the peaks).
"""

from __future__ import annotations

import html
import json
import urllib.parse
from pathlib import Path

import numpy as np

MANIFEST, INFO, PAGE = "manifest.json", "soundtrack_info.txt", "index.html"
# A bake about to change files moves the manifest here (it would describe files that are being replaced); the
# next complete bake reads it to know which files were ours, then deletes it.
PREVIOUS = ".manifest-previous.json"
COLUMNS = 400          # waveform resolution; plenty for an 800-px-wide picture
SVG_W, SVG_H = 800, 90

CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem 1.5rem;color:#1d2330;
background:#f6f7fb}
h1{margin-bottom:.2rem} h2{margin:0 0 .3rem} h3{margin:1.2rem 0 .3rem;font-size:1rem}
header p,.meta{color:#596173;margin:.2rem 0}
nav ul{display:flex;flex-wrap:wrap;gap:.4rem;padding:0;list-style:none}
nav a,.tag{display:inline-block;padding:.1rem .55rem;border-radius:1rem;background:#e3e7f3;color:#1d2330;
text-decoration:none;font-size:.85rem}
.tag.loop{background:#d8f1e0} .tag.stinger{background:#f7e3cf} a.tag:hover,nav a:hover{background:#c9d2ec}
section.context,section.moods{background:#fff;border-radius:.6rem;padding:1rem 1.2rem;margin:1rem 0;
box-shadow:0 1px 3px #0002}
blockquote{margin:.5rem 0;padding:.4rem .8rem;border-left:3px solid #8a9bd1;background:#f3f5fb;font-style:italic}
dl.params{display:grid;grid-template-columns:repeat(auto-fill,minmax(9rem,1fr));gap:.1rem 1rem;margin:.4rem 0}
dl.params div{display:flex;gap:.4rem} dt{color:#596173} dd{margin:0;font-family:ui-monospace,monospace}
figure{margin:.8rem 0 0;padding:.6rem;border:1px solid #e1e4ee;border-radius:.4rem}
figcaption{font-size:.85rem;color:#596173;margin-bottom:.3rem} figcaption a{color:inherit}
audio{width:100%;margin:.2rem 0}
svg.wave{display:block;width:100%;height:90px;background:#1d2330;border-radius:.3rem}
svg.wave .peaks{stroke:#9fb4ff;stroke-width:1.6} svg.wave .region{fill:#4cd38a;fill-opacity:.18}
svg.wave .edge{stroke:#4cd38a;stroke-width:2} svg.wave .fade{fill:#f3a25a;fill-opacity:.18}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e1e4ee;vertical-align:top}
code{font-family:ui-monospace,monospace;font-size:.85rem}
button.loopplay{margin:.2rem 0 .4rem;padding:.2rem .7rem;border:1px solid #8a9bd1;border-radius:1rem;background:#eef1fb;
cursor:pointer}
"""

# "play looped": Web Audio loops loop_start..loop_end sample-accurately, as a game engine would (an <audio>
# element can only repeat the whole file). Needs http(s): browsers refuse fetch() on file:// pages.
SCRIPT = """
let audioCtx = null, playing = null;
for (const b of document.querySelectorAll('button.loopplay')) {
  b.addEventListener('click', async () => {
    const again = playing && playing.button === b;
    if (playing) { playing.node.stop(); playing.button.textContent = '\u25b6 play looped'; playing = null; }
    if (again) { b.dataset.state = 'stopped'; return; }
    try {
      audioCtx = audioCtx || new AudioContext();
      const buffer = await audioCtx.decodeAudioData(await (await fetch(b.dataset.src)).arrayBuffer());
      const node = audioCtx.createBufferSource();
      node.buffer = buffer; node.loop = true;
      node.loopStart = +b.dataset.start; node.loopEnd = +b.dataset.end;
      node.connect(audioCtx.destination); node.start();
      playing = {node, button: b}; b.textContent = '\u25a0 stop'; b.dataset.state = 'playing';
    } catch (e) { b.dataset.state = 'failed'; b.title = 'needs the page served over http: ' + e; }
  });
}
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def peaks(audio: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    """Max |sample| over channels for each of `columns` equal slices of (channels, frames) audio."""
    a = np.abs(np.asarray(audio, dtype=np.float32))
    a = a.max(axis=0) if a.ndim == 2 else a
    if a.size == 0:
        return np.zeros(columns, dtype=np.float32)
    edges = np.linspace(0, a.size, columns + 1).astype(int)
    edges[1:] = np.maximum(edges[1:], edges[:-1] + 1)      # never an empty slice on short audio
    edges = np.minimum(edges, a.size)
    return np.array([a[lo:max(hi, lo + 1)].max() if lo < a.size else 0.0
                     for lo, hi in zip(edges[:-1], edges[1:])], dtype=np.float32)


def waveform_svg(p: np.ndarray, frames: int, loop_start=None, loop_end=None, label: str = "") -> str:
    """An inline SVG of peak bars; the loop region shaded, its edges drawn as lines."""
    mid = SVG_H / 2
    top = float(p.max()) if p.size and p.max() > 0 else 1.0
    step = SVG_W / max(len(p), 1)
    heights = [max(float(v) / top * (mid - 2), 0.5) for v in p]    # silence still shows as a line
    bars = " ".join(f"M{(i + .5) * step:.1f} {mid - h:.1f}V{mid + h:.1f}" for i, h in enumerate(heights))
    parts = [f'<svg class="wave" viewBox="0 0 {SVG_W} {SVG_H}" preserveAspectRatio="none" role="img" '
             f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg"><title>{esc(label)}</title>']
    if loop_start is not None and loop_end is not None and frames > 0:
        x0, x1 = SVG_W * loop_start / frames, SVG_W * loop_end / frames
        parts.append(f'<rect class="region" x="{x0:.1f}" y="0" width="{max(x1 - x0, 0):.1f}" height="{SVG_H}"/>')
        parts.append(f'<path class="edge" d="M{x0:.1f} 0V{SVG_H}M{x1:.1f} 0V{SVG_H}"/>')
    parts.append(f'<path class="peaks" d="{bars}"/></svg>')
    return "".join(parts)


def _file_peaks(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return peaks(data.T), data.shape[0]


def _params(params: dict) -> str:
    rows = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(_num(v))}</dd></div>" for k, v in params.items())
    return f'<dl class="params">{rows}</dl>'


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _secs(frames, rate) -> str:
    return "–" if frames is None else f"{frames / rate:.3f} s"


def _mood_id(name: str) -> str:
    return "mood:" + urllib.parse.quote(name.lower().replace(" ", "-"), safe="-_")


def _variant(out_dir: Path, name: str, v: dict, rate: int) -> str:
    src = urllib.parse.quote(v["file"])
    try:
        p, frames = _file_peaks(out_dir / v["file"])
    except (OSError, RuntimeError):        # a missing file still gets its section, just no picture
        p, frames = np.zeros(0, dtype=np.float32), v.get("frames", 0)
    looped = v.get("loop_start") is not None
    label = f"Waveform of {v['file']}" + (f", loop {_secs(v['loop_start'], rate)} to {_secs(v['loop_end'], rate)}"
                                          if looped else "")
    bits = [f"{v['duration']:.2f} s", f"seed {v['seed']}"]
    if looped:
        bits.append(f"loop {_secs(v['loop_start'], rate)} → {_secs(v['loop_end'], rate)}")
    if v.get("loudness_lufs") is not None:
        bits.append(f"{v['loudness_lufs']:.1f} LUFS, true peak {v['true_peak_dbfs']:.1f} dBTP")
    if v.get("bpm"):
        bits.append(f"{v['bpm']:g} BPM")
    seam = v.get("seam")
    if seam:
        bits.append(f"seam {'ok' if seam.get('ok') else 'over the limits'} (jump ×{seam['jump_ratio']:.2f}, "
                    f"spectral ×{seam['spectral_ratio']:.2f})")
    # ids: a context owns its bare name; figures, mood rows and the moods section use ':' (no name has one)
    return (f'<figure id="{esc(name)}:v{v["variant"]}"><figcaption><a href="{esc(src)}">{esc(v["file"])}</a>'
            f' · {esc(" · ".join(bits))}</figcaption>'
            f'<audio controls preload="metadata" src="{esc(src)}"></audio>'
            + (f'<button type="button" class="loopplay" data-src="{esc(src)}" data-start="{v["loop_start_s"]}" '
               f'data-end="{v["loop_end_s"]}">▶ play looped</button>' if looped else "") +
            f'{waveform_svg(p, frames, v.get("loop_start"), v.get("loop_end"), label)}</figure>')


def _context(out_dir: Path, name: str, c: dict, rate: int, moods: dict) -> str:
    tags = ['<span class="tag loop">loop</span>' if c.get("loop") else '<span class="tag stinger">stinger</span>']
    if c.get("bpm"):
        tags.append(f'<span class="tag">{esc(_num(c["bpm"]))} BPM</span>')
    tags.append(f'<span class="tag">{esc(c.get("meter"))}</span>')
    tags.append(f'<span class="tag">target {esc(_num(c.get("loudness_target")))} LUFS</span>')
    if c.get("theme"):
        tags.append(f'<a class="tag" href="#{esc(c["theme"])}">follows {esc(c["theme"])}</a>')
    mood = c.get("mood")
    if mood:
        key = _preset_name(mood, moods)
        tags.append(f'<a class="tag" href="#{_mood_id(key)}">mood: {esc(mood)}</a>' if key
                    else f'<span class="tag">mood: {esc(mood)}</span>')
    variants = "".join(_variant(out_dir, name, v, rate) for v in c.get("variants", []))
    return (f'<section class="context" id="{esc(name)}"><h2>{esc(name)}</h2><p>{" ".join(tags)}</p>'
            f'<blockquote>{esc(c.get("prompt"))}</blockquote>{_params(c.get("params", {}))}{variants}</section>')


def _preset_name(mood: str, moods: dict) -> str | None:
    from .prompts import norm_name

    return next((k for k in moods if norm_name(k) == norm_name(mood)), None)


def _moods(manifest: dict, moods: dict) -> str:
    users: dict[str, list[str]] = {}
    for name, c in manifest.get("contexts", {}).items():
        key = _preset_name(c.get("mood") or "", moods)
        if key:
            users.setdefault(key, []).append(name)
    rows = []
    for key, p in moods.items():
        params = ", ".join(f"{k} = {_num(v)}" for k, v in p.get("params", {}).items())
        delta = ", ".join(f"{k} {v:+g}" for k, v in p.get("delta", {}).items())
        used = ", ".join(f'<a href="#{esc(n)}">{esc(n)}</a>' for n in users.get(key, []))
        rows.append(f'<tr id="{_mood_id(key)}"><td><b>{esc(key)}</b></td><td>{esc(p.get("words"))}</td>'
                    f'<td><code>{esc("; ".join(x for x in (params, delta) if x)) or "–"}</code></td>'
                    f'<td>{used or "–"}</td></tr>')
    return ('<section class="moods" id="presets:moods"><h2>Mood presets</h2><p class="meta">Shipped with troubadour; '
            'use one with <code>mood = "name"</code> in a profiles context.</p><table><thead><tr><th>mood</th>'
            '<th>words added to the prompt</th><th>parameters</th><th>used by</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></section>")


def render_page(out_dir: str | Path, manifest: dict) -> str:
    from .prompts import presets

    out_dir = Path(out_dir)
    moods = presets()["moods"]
    game = manifest.get("game") or {}
    title = game.get("title") or "Soundtrack"
    rate = manifest["sample_rate"]
    contexts = manifest.get("contexts", {})
    nav = "".join(f'<li><a href="#{esc(n)}">{esc(n)}</a></li>' for n in contexts)
    model = manifest.get("model") or {}
    sections = "".join(_context(out_dir, n, c, rate, moods) for n, c in contexts.items())
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, '
            f'initial-scale=1"><title>{esc(title)} – soundtrack</title>'
            # An empty data: icon stops browsers asking the server for /favicon.ico.
            f'<link rel="icon" href="data:,"><style>{CSS}</style></head><body>'
            f'<header><h1>{esc(title)}</h1>'
            + (f"<p>{esc(game.get('description'))}</p>" if game.get("description") else "")
            + f'<p class="meta">{len(contexts)} contexts · {esc(manifest.get("format"))} · {rate} Hz · '
              f'model {esc(model.get("id"))} · baked {esc(manifest.get("generated_at"))}</p>'
              f'<nav><ul>{nav}<li><a href="#presets:moods">mood presets</a></li></ul></nav></header>'
              f'<main>{sections}{_moods(manifest, moods)}</main><script>{SCRIPT}</script></body></html>\n')


def info_text(manifest: dict) -> str:
    """soundtrack_info.txt: the manifest for people."""
    rate = manifest["sample_rate"]
    game = manifest.get("game") or {}
    lines = [f"{game.get('title') or 'Soundtrack'}: baked soundtrack", "",
             f"Baked {manifest['generated_at']} by troubadour {manifest['troubadour_version']} with model "
             f"{manifest['model']['id']} ({manifest['model']['identity']}).",
             f"{len(manifest['contexts'])} contexts, {manifest['format']} at {rate} Hz. Loop points are embedded "
             "in the files (WAV smpl chunk, OGG LOOPSTART/LOOPLENGTH) and listed in manifest.json as frames.",
             "Play a looped track from 0, then repeat loop start..end; a stinger plays once.", ""]
    for name, c in manifest["contexts"].items():
        kind = "loop" if c["loop"] else "stinger (plays once)"
        tempo = f"{c['bpm']:g} BPM, " if c.get("bpm") else ""
        lines += [f"== {name}: {kind}, {tempo}{c['meter']}, target {c['loudness_target']:g} LUFS"
                  + (f", follows {c['theme']}" if c.get("theme") else ""),
                  f"   prompt: {c['prompt']}",
                  "   params: " + ", ".join(f"{k} {_num(v)}" for k, v in c["params"].items())]
        for v in c["variants"]:
            loop = (f"loop {v['loop_start_s']:.3f}-{v['loop_end_s']:.3f} s (frames {v['loop_start']}-"
                    f"{v['loop_end']})" if v["loop_start"] is not None else "no loop")
            lufs = f"{v['loudness_lufs']:.1f} LUFS" if v["loudness_lufs"] is not None else "loudness n/a"
            lines.append(f"   {v['file']}: {v['duration']:.2f} s, {loop}, {lufs}, "
                         f"true peak {v['true_peak_dbfs']:.1f} dBTP, seed {v['seed']}")
        lines.append("")
    return "\n".join(lines)


def write_outputs(out_dir: str | Path, manifest: dict, written=()) -> None:
    """Write manifest.json, soundtrack_info.txt and index.html, each only when its content changed, and
    delete the audio + sidecars that the previous manifest listed, or a bake wrote (`written`, relative
    paths), and this manifest does not list (they were ours)."""
    out = Path(out_dir)
    old = {}
    for name in (MANIFEST, PREVIOUS):
        try:
            old = json.loads((out / name).read_text("utf-8"))
            break
        except (OSError, ValueError):
            pass
    if isinstance(old, dict) and {**old, "generated_at": None} == {**manifest, "generated_at": None}:
        manifest["generated_at"] = old["generated_at"]     # nothing changed: leave every file as it is
    _remove_stale(out, [*_files(old), *written], manifest)
    _write_if_changed(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    _write_if_changed(out / INFO, info_text(manifest))
    _write_if_changed(out / PAGE, render_page(out, manifest))
    (out / PREVIOUS).unlink(missing_ok=True)


def _files(manifest) -> list[str]:
    try:
        return [str(v["file"]) for c in manifest["contexts"].values() for v in c["variants"]]
    except (KeyError, TypeError, AttributeError):
        return []


def _remove_stale(out: Path, ours: list, manifest: dict) -> None:
    from .audio import sidecar_path

    keep = {(out / f).resolve() for f in _files(manifest)}
    keep |= {sidecar_path(f) for f in keep}     # x.wav -> x.ogg keeps the sidecar name x.json
    for f in (out / name for name in ours):
        for stale in (f.resolve(), sidecar_path(f.resolve())):
            if stale not in keep and out.resolve() in stale.parents:
                stale.unlink(missing_ok=True)
        folder = f.resolve().parent
        if folder != out.resolve() and out.resolve() in folder.parents:
            try:
                folder.rmdir()   # a context no longer baked: no empty folder left to ship
            except OSError:
                pass             # not empty (other variants, or files of the user's own)


def _write_if_changed(path: Path, text: str) -> None:
    from .audio import _atomic_write

    data = text.encode("utf-8")
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    _atomic_write(path, lambda f: f.write(data))
