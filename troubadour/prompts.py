"""Prompt presets and composition: the mood/genre/fix presets of data/presets.toml and the
MusicGen text prompt built from prompt-anatomy fields (genre, mood, instruments, ...).
"""

from __future__ import annotations

import functools
import math
import re
from importlib import resources

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import ProfileError, ValidationError, did_you_mean
from .params import MAX_CFG, MAX_TEMPERATURE, GenParams

PRESET_KINDS = ("moods", "genres", "fixes")
PRESET_PARAMS = ("temperature", "top_k", "top_p", "cfg_coef")
# Bounds that keep preset results valid GenParams (and temperature clearly above greedy).
_CLAMP = {"temperature": (0.05, MAX_TEMPERATURE), "top_k": (0, math.inf), "top_p": (0.0, 1.0),
          "cfg_coef": (1.0, MAX_CFG)}
TEMPO_NOUNS = {"tempo", "pace", "beat", "rhythm", "groove", "bpm"}


# ---------------------------------------------------------------- presets
@functools.lru_cache(maxsize=1)
def presets() -> dict:
    """The bundled presets: {"moods": {...}, "genres": {...}, "fixes": {...}}. Do not mutate."""
    text = resources.files("troubadour").joinpath("data/presets.toml").read_text("utf-8")
    data = tomllib.loads(text)
    # Checked here so a bad edit of the shipped file fails loudly, not as odd audio.
    for kind in PRESET_KINDS:
        for name, p in data.get(kind, {}).items():
            allowed = {"words", "params", "delta"} | ({"instruments", "bpm"} if kind == "genres" else set())
            bad = (set(p) - allowed) | ({k for t in ("params", "delta") for k in p.get(t, {})}
                                        - set(PRESET_PARAMS))
            if bad:
                raise ProfileError(f"presets.toml: {kind}.{name}: unknown keys {sorted(bad)}")
    return {kind: data.get(kind, {}) for kind in PRESET_KINDS}


def norm_name(name: str) -> str:
    """`name` lowercased with everything but letters and digits dropped: how preset names match."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def find_preset(kind: str, name: str | None) -> dict | None:
    """The preset of `kind` called `name` (case, spaces, '-' and '_' ignored), or None."""
    found = [v for k, v in presets()[kind].items() if name and norm_name(k) == norm_name(name)]
    return found[0] if found else None


def apply_presets(params: dict, *, genre=None, mood=None, fix=None) -> dict:
    """A copy of `params` with genre, then mood, then fix presets applied and clamped.

    Free-text genre/mood change nothing; an unknown fix is a ValidationError (field "fix").
    """
    out = dict(params)
    base = GenParams().to_dict()
    fix_preset = find_preset("fixes", fix)
    if fix and fix_preset is None:
        raise ValidationError(f"unknown fix preset {fix!r}{did_you_mean(fix, presets()['fixes'])}", field="fix")
    for preset in (find_preset("genres", genre), find_preset("moods", mood), fix_preset):
        if not preset:
            continue
        for key, value in preset.get("params", {}).items():
            out[key] = value
        for key, value in preset.get("delta", {}).items():
            out[key] = out.get(key, base[key]) + value
        for key in set(preset.get("params", {})) | set(preset.get("delta", {})):
            lo, hi = _CLAMP[key]
            v = min(hi, max(lo, out[key]))
            # Rounding keeps 0.8 + 0.2 == 1.0 so cache keys stay stable.
            out[key] = int(round(v)) if key == "top_k" else round(float(v), 4)
    return out


# ---------------------------------------------------------------- prompt composition
def article(words: str) -> str:
    # Good enough for genre/scene words; "8-bit" reads "an eight-bit".
    return "An" if words and words[0].lower() in "aeiou8" else "A"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def compose_prompt(*, genre=None, mood=None, instruments=None, tempo=None, bpm=None,
                   key=None, structure=None, extra=None, fix=None) -> str:
    """"A [genre] piece in [key] with [instruments] featuring [mood] and [tempo]. The music has
    [structure]. [fix words]. [extra]." without the parts not given. Preset genre/mood names
    expand to their words (a genre also gives default instruments); other text is kept as is."""
    g = find_preset("genres", genre)
    m = find_preset("moods", mood)
    genre_words = g["words"] if g else (genre or "").strip()
    mood_words = m["words"] if m else (mood or "").strip()
    if instruments is None and g:
        instruments = g.get("instruments")
    if isinstance(instruments, (list, tuple)):
        instruments = _join([i.strip() for i in instruments]) if instruments else None
    tempo_words = (tempo or "").strip()
    # "fast" reads better as "fast tempo"; "driving beat" is already complete.
    if tempo_words and not TEMPO_NOUNS & set(tempo_words.lower().split()):
        tempo_words += " tempo"
    if bpm is not None:
        tempo_words = f"{tempo_words} at {bpm:g} BPM" if tempo_words else f"a tempo of {bpm:g} BPM"

    sentences = []
    if genre_words or key or instruments or mood_words or tempo_words:
        head = f"{article(genre_words)} {genre_words} piece" if genre_words else "A piece"
        if key:
            key = key.strip()
            head += f" {key}" if key.lower().startswith("in ") else f" in {key}"
        if instruments:
            head += f" with {instruments.strip()}"
        featuring = [w for w in (mood_words, tempo_words) if w]
        if featuring:
            head += " featuring " + " and ".join(featuring)
        sentences.append(_sentence(head))
    if structure:
        sentences.append(_sentence(f"The music has {structure.strip().rstrip('.')}"))
    f = find_preset("fixes", fix)
    if f and f.get("words"):
        sentences.append(_sentence(f["words"]))
    if extra and extra.strip():
        sentences.append(_sentence(extra))
    return " ".join(sentences)
