"""Game music profiles: a TOML file mapping game contexts (battle, menu, ...) to prompts.

A context is described either by a raw `prompt` or by prompt-anatomy fields (genre, mood,
instruments, ...) that `prompts.compose_prompt` turns into a MusicGen text prompt, expanding
the mood/genre presets of data/presets.toml. See data/profiles.toml for the schema.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .errors import UNKNOWN_CONTEXT, ProfileError, TroubadourError, ValidationError, did_you_mean
from .params import MAX_DURATION, MAX_SEED, MAX_VARIANTS, GenParams, validate_prompt
from .prompts import apply_presets, article, compose_prompt, find_preset, presets

NAME_RE = re.compile(r"[A-Za-z0-9_\-]{1,64}")   # fullmatch: "$" would let a trailing newline through
METER_RE = re.compile(r"[1-9][0-9]?/(1|2|4|8|16|32)")

PARAM_KEYS = tuple(GenParams.names())
COMPOSE_KEYS = ("genre", "mood", "instruments", "tempo", "key", "structure", "extra")
CONTEXT_KEYS = (*COMPOSE_KEYS, "prompt", "bpm", "fix", *PARAM_KEYS, "cfg",
                "variants", "loop", "meter", "theme", "loudness")
DEFAULTS_KEYS = (*PARAM_KEYS, "cfg", "variants", "loop", "meter", "loudness")
GAME_KEYS = ("title", "genre", "description")
TOP_KEYS = ("game", "defaults", "contexts")
COMMON_DEFAULTS = {"variants": 1, "loop": True, "meter": "4/4", "loudness": -16.0}


# ---------------------------------------------------------------- contexts
@dataclass(frozen=True)
class Context:
    name: str
    prompt: str
    params: GenParams
    variants: int = 1
    loop: bool = True
    bpm: float | None = None
    meter: str = "4/4"
    key: str | None = None
    theme: str | None = None
    loudness: float = -16.0
    source_fields: dict = field(default_factory=dict)
    fallback: bool = False

    def seed_for(self, variant: int) -> int:
        if isinstance(variant, bool) or not isinstance(variant, int) or not 0 <= variant < self.variants:
            raise ValidationError(f"variant must be an integer in [0, {self.variants}), got {variant!r}",
                                  field="variant")
        return self.params.seed + variant

    def params_for(self, variant: int) -> GenParams:
        return dataclasses.replace(self.params, seed=self.seed_for(variant))

    def audio_key(self) -> dict:
        """Everything that changes the audio of one variant; the variant count does not."""
        return {"prompt": self.prompt, "params": self.params.to_dict(), "loop": self.loop,
                "bpm": self.bpm, "meter": self.meter, "loudness": self.loudness}


class Profiles:
    def __init__(self, game: dict, contexts: dict, defaults: dict | None = None,
                 path: Path | None = None, notes: list | None = None):
        self.game = game
        self.contexts = contexts
        self.notes = notes or []   # things worth a warning that are not errors (a mood one letter off a preset)
        # Parsed [defaults]: the params it sets + variants/loop/meter/loudness.
        self.defaults = {**COMMON_DEFAULTS, **(defaults or {})}
        self.path = path
        self._fallbacks_noted: set = set()

    def names(self) -> list[str]:
        return list(self.contexts)

    def get(self, name: str, strict: bool = False) -> Context:
        """The named context; an unknown (valid) name gets a fallback context unless strict."""
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            raise ValidationError(f"invalid context name {name!r}: use 1-64 letters, digits, '_' or '-'",
                                  field="context")
        if name in self.contexts:
            return self.contexts[name]
        if strict:
            raise TroubadourError(f"unknown context {name!r}{did_you_mean(name, self.contexts)}",
                                  code=UNKNOWN_CONTEXT, field="context")
        return self._fallback(name)

    def fallback_notice(self, name: str) -> str | None:
        """What to tell the developer the first time unknown context `name` gets fallback music (at dev time
        usually a typo in the game's code); None after that, and after 100 names (a client making names up)."""
        if name in self._fallbacks_noted or len(self._fallbacks_noted) > 100:
            return None
        self._fallbacks_noted.add(name)
        if len(self._fallbacks_noted) > 100:
            return "more unknown contexts asked for; no longer listed"
        return (f"context {name!r} is not in the profiles{did_you_mean(name, self.contexts)}: "
                f"playing fallback music in the game's style")

    def _fallback(self, name: str) -> Context:
        # Unknown situations still get music in the game's style rather than an error.
        genre = self.game.get("genre")
        g = find_preset("genres", genre)
        genre_words = g["words"] if g else genre
        scene = name.replace("_", " ").replace("-", " ").strip() or name
        where = f"for {article(scene).lower()} {scene} scene in a video game."
        prompt = f"{article(genre_words)} {genre_words} piece {where}" if genre_words else f"Music {where}"
        d = self.defaults
        params = GenParams(**apply_presets({k: d[k] for k in PARAM_KEYS if k in d}, genre=genre))
        return Context(name=name, prompt=prompt, params=params.validate(), variants=1, loop=True,
                       meter=d["meter"], loudness=d["loudness"], fallback=True)


def check_model_support(profiles: "Profiles", model_info) -> None:
    """A `theme` (leitmotif) needs a melody-capable checkpoint; say so when the profiles load, not mid-game."""
    if getattr(model_info, "melody", False):
        return
    for ctx in profiles.contexts.values():
        if ctx.theme:
            where = profiles.path or "<profiles>"
            raise ProfileError(f"{where}: context {ctx.name!r}: field 'theme': following another context's "
                               f"melody needs a musicgen-melody checkpoint; {model_info.model_id} is text-only "
                               "(remove `theme` or use --model facebook/musicgen-melody)",
                               field=f"contexts.{ctx.name}.theme")


# ---------------------------------------------------------------- loading
def default_profiles_path() -> Path:
    return Path(str(resources.files("troubadour").joinpath("data/profiles.toml")))


def load_profiles(path=None) -> Profiles:
    """Load a profiles file; None loads the bundled default profile."""
    path = Path(path) if path is not None else default_profiles_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ProfileError(f"{path}: profiles file not found", field="path") from None
    except OSError as e:
        raise ProfileError(f"{path}: cannot read profiles file: {e.strerror or e}", field="path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ProfileError(f"{path}: not valid UTF-8 text (line {line}, byte {e.start})") from None
    # Windows editors (Notepad) may start UTF-8 files with a byte-order mark, which TOML does not allow
    profiles = parse_profiles(text.removeprefix("\ufeff"), str(path), path=path)
    if not profiles.contexts:   # at start-up, in a bake, and in a hot-swap (an editor half-way through a save)
        raise ProfileError(f'{path}: no contexts: add at least one, e.g. [contexts.battle] with mood = "tense"',
                           field="contexts")
    return profiles


def load_and_warn(path=None) -> Profiles:
    """load_profiles(), its notes printed as warnings (the command-line tools)."""
    profiles = load_profiles(path)
    for note in profiles.notes:
        print(f"troubadour: warning: {note}", file=sys.stderr)
    return profiles


class _Where:
    """Where in the file a value lives, for messages like "f.toml: context 'x': field 'y': ..."."""

    def __init__(self, source: str, label: str | None, path: str):
        self.source, self.label, self.path = source, label, path

    def text(self, key: str | None = None) -> str:
        """'file: context 'x': field 'y'' for messages."""
        return ": ".join([self.source] + ([self.label] if self.label else []) + ([f"field {key!r}"] if key else []))

    def fail(self, key: str | None, message: str):
        dotted = ".".join(p for p in (self.path, key) if p) or None
        raise ProfileError(f"{self.text(key)}: {message}", field=dotted)

    def check_keys(self, table: dict, allowed) -> None:
        for key in table:
            if key not in allowed:
                self.fail(key, f"unknown field{did_you_mean(key, allowed)}; allowed: {', '.join(allowed)}")


def _text(where: _Where, table: dict, key: str) -> str | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        where.fail(key, f"must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        where.fail(key, "must not be empty")
    return value.strip()


def _number(where: _Where, table: dict, key: str, lo: float, hi: float) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        where.fail(key, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        where.fail(key, f"must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _params(where: _Where, table: dict) -> dict:
    """The GenParams fields a table sets, `cfg` being an alias of `cfg_coef`."""
    if "cfg" in table and "cfg_coef" in table:
        where.fail("cfg", "set either 'cfg' or 'cfg_coef', not both")
    out = {k: table[k] for k in PARAM_KEYS if k in table}
    if "cfg" in table:
        out["cfg_coef"] = table["cfg"]
    return out


def _validated(where: _Where, table: dict, values: dict) -> GenParams:
    try:
        p = GenParams(**values).validate()
    except ValidationError as e:
        key = "cfg" if e.field == "cfg_coef" and "cfg" in table else e.field
        msg = e.message[len(e.field) + 1:] if e.field and e.message.startswith(e.field + " ") else e.message
        where.fail(key, msg)
    # TOML `duration = 8` is an int; widen so equal settings give equal cache keys.
    return dataclasses.replace(p, duration=float(p.duration), temperature=float(p.temperature),
                               top_p=float(p.top_p), cfg_coef=float(p.cfg_coef))


def _common(where: _Where, table: dict, inherited: dict) -> dict:
    """Checks the non-GenParams fields shared by [defaults] and contexts."""
    out = dict(inherited)
    v = table.get("variants", out["variants"])
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_VARIANTS:
        where.fail("variants", f"must be an integer in [1, {MAX_VARIANTS}], got {v!r}")
    if not isinstance(table.get("loop", True), bool):
        where.fail("loop", f"must be true or false, got {table['loop']!r}")
    meter = _text(where, table, "meter")
    if meter is not None and not METER_RE.fullmatch(meter):
        where.fail("meter", f"must look like '4/4', '3/4' or '6/8', got {meter!r}")
    loudness = _number(where, table, "loudness", -40, -5)
    out.update(variants=v, loop=table.get("loop", out["loop"]), meter=meter or out["meter"],
               loudness=out["loudness"] if loudness is None else loudness)
    return out


def parse_profiles(text: str, source: str = "<profiles>", *, path: Path | None = None) -> Profiles:
    """Parse profiles TOML text; `source` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: invalid TOML: {e}") from None
    except RecursionError:   # tomllib recurses per nesting level
        raise ProfileError(f"{source}: invalid TOML: nested too deeply") from None
    top = _Where(source, None, "")
    top.check_keys(data, TOP_KEYS)
    for key in TOP_KEYS:
        if key in data and not isinstance(data[key], dict):
            top.fail(key, f"must be a table, got {type(data[key]).__name__}")

    game_where = _Where(source, "[game]", "game")
    game_raw = data.get("game", {})
    game_where.check_keys(game_raw, GAME_KEYS)
    game = {k: v for k in GAME_KEYS if (v := _text(game_where, game_raw, k)) is not None}

    d_where = _Where(source, "[defaults]", "defaults")
    d_raw = data.get("defaults", {})
    d_where.check_keys(d_raw, DEFAULTS_KEYS)
    d_params = _params(d_where, d_raw)
    d_valid = _validated(d_where, d_raw, {**GenParams().to_dict(), **d_params})
    defaults = {**{k: getattr(d_valid, k) for k in d_params}, **_common(d_where, d_raw, COMMON_DEFAULTS)}

    contexts, notes = {}, []
    _note_near_preset(notes, game_where, "genre", game.get("genre"))
    for name, table in data.get("contexts", {}).items():
        where = _Where(source, f"context {name!r}", f"contexts.{name}")
        if not NAME_RE.fullmatch(name):
            where.fail(None, "invalid context name: use 1-64 letters, digits, '_' or '-'")
        twin = next((n for n in contexts if n.lower() == name.lower()), None)
        if twin is not None:   # one folder on Windows and macOS, where bakes and games also run
            where.fail(None, f"differs from context {twin!r} only in case: pick distinct names")
        if not isinstance(table, dict):
            where.fail(None, f"must be a table, got {type(table).__name__}")
        contexts[name] = _build_context(where, name, table, game, defaults)
        for kind in ("genre", "mood"):
            if "prompt" not in table:
                _note_near_preset(notes, where, kind, table.get(kind))

    for ctx in contexts.values():
        if ctx.theme is not None and (ctx.theme not in contexts or ctx.theme == ctx.name):
            why = ("cannot name the context itself (a theme is another context whose melody this one follows)"
                   if ctx.theme == ctx.name else f"names no context here{did_you_mean(ctx.theme, contexts)}")
            _Where(source, f"context {ctx.name!r}", f"contexts.{ctx.name}").fail("theme", f"{ctx.theme!r} {why}")
    return Profiles(game=game, contexts=contexts, defaults=defaults, path=path, notes=notes)


def _note_near_preset(notes: list, where: "_Where", kind: str, value) -> None:
    """A one-word genre or mood that is not a preset but close to one is most likely a typo: it still works
    (as words in the prompt) but loses the preset's settings, so it is worth a warning, not an error."""
    if not isinstance(value, str) or " " in value.strip() or find_preset(kind + "s", value) is not None:
        return
    hint = did_you_mean(value.strip().lower(), presets()[kind + "s"])
    if hint:
        notes.append(f"{where.text()}: {kind} {value!r} is not a preset, so it is only words in the prompt{hint}")


def _build_context(where: _Where, name: str, table: dict, game: dict, defaults: dict) -> Context:
    where.check_keys(table, CONTEXT_KEYS)
    words = {k: _text(where, table, k) for k in ("genre", "mood", "tempo", "key", "structure", "extra",
                                                "prompt", "fix", "theme")}
    instruments = table.get("instruments")
    if isinstance(instruments, list):
        if not all(isinstance(i, str) and i.strip() for i in instruments):
            where.fail("instruments", "must be a list of non-empty strings")
    elif instruments is not None:
        instruments = _text(where, table, "instruments")
    bpm = _number(where, table, "bpm", 20, 300)
    fix = words["fix"]
    if fix and find_preset("fixes", fix) is None:
        where.fail("fix", f"unknown fix preset {fix!r}{did_you_mean(fix, presets()['fixes'])}; "
                          f"known: {', '.join(presets()['fixes'])}")
    raw_prompt = words["prompt"]
    if raw_prompt is not None:
        mixed = [k for k in COMPOSE_KEYS if k in table]
        if mixed:
            where.fail("prompt", f"cannot be combined with {', '.join(mixed)}: write them into the prompt "
                                 f"or remove 'prompt'")
        # A raw prompt is the user's exact text, so genre/mood presets do not touch its params.
        genre = mood = None
        prompt = raw_prompt
    else:
        genre, mood = words["genre"] or game.get("genre"), words["mood"]
        g = find_preset("genres", genre)
        if bpm is None and g and "bpm" in g:
            bpm = float(g["bpm"])
        prompt = compose_prompt(genre=genre, mood=mood, instruments=instruments, tempo=words["tempo"],
                                bpm=bpm, key=words["key"], structure=words["structure"],
                                extra=words["extra"], fix=fix)
        if not prompt:
            where.fail("prompt", "describes no music: set 'prompt' or some of " + ", ".join(COMPOSE_KEYS))
    try:
        prompt = validate_prompt(prompt)
    except ValidationError as e:
        where.fail("prompt", e.message)

    base = {**GenParams().to_dict(), **{k: defaults[k] for k in PARAM_KEYS if k in defaults}}
    values = {**apply_presets(base, genre=genre, mood=mood, fix=fix), **_params(where, table)}
    params = _validated(where, table, values)
    common = _common(where, table, {k: defaults[k] for k in COMMON_DEFAULTS})
    if params.seed + common["variants"] - 1 > MAX_SEED:
        where.fail("seed", f"seed + variants - 1 must stay <= 2**63-1, got seed {params.seed}")
    if bpm is not None:
        # whole bars, so loops close on a bar line and engines can quantize transitions
        from .loops import bar_aligned_duration
        params = dataclasses.replace(params, duration=float(bar_aligned_duration(
            params.duration, bpm, common["meter"], MAX_DURATION)))
    theme = words["theme"]
    if theme is not None and not NAME_RE.fullmatch(theme):
        where.fail("theme", f"invalid context name {theme!r}")
    return Context(name=name, prompt=prompt, params=params, bpm=bpm, key=words["key"], theme=theme,
                   source_fields=copy.deepcopy(table), **common)
