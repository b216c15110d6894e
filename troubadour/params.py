"""Generation parameters and their validation (shared by CLI, profiles and server)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import EMPTY_PROMPT, ValidationError

# Upper bound on one track. Past the model's 30 s window the engine continues window by window.
MAX_DURATION = 300.0
MAX_VARIANTS = 16
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
# Sampling settings past these only overflow float32 logits (1e-300 becomes 0, cfg 1e39 infinity), where
# ties decide instead of the model; 0.001 is already greedy in effect and 100 far past any useful guidance.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.001, 100.0
MAX_CFG = 100.0


@dataclass(frozen=True)
class GenParams:
    """Everything besides the prompt that changes the audio."""

    duration: float = 10.0
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg_coef: float = 3.0
    seed: int = 0

    def to_dict(self) -> dict:
        # not dataclasses.asdict: its deep copy was a tenth of a cache hit's request handling
        return {name: getattr(self, name) for name in _NAMES}

    @classmethod
    def names(cls) -> list[str]:
        return list(_NAMES)

    @classmethod
    def from_dict(cls, d: dict, max_duration: float = MAX_DURATION) -> "GenParams":
        unknown = set(d).difference(_NAMES)
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"unknown parameter {name!r}", field=name)
        p = cls(**d)
        p.validate(max_duration)
        return p

    def validate(self, max_duration: float = MAX_DURATION) -> "GenParams":
        _number(self.duration, "duration")
        if not 0 < self.duration <= max_duration:
            raise ValidationError(f"duration must be in (0, {max_duration:g}] seconds, got {self.duration!r}",
                                  field="duration")
        _number(self.temperature, "temperature")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            raise ValidationError(f"temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (for the "
                                  f"likeliest codes use top_k = 1), got {self.temperature!r}", field="temperature")
        _integer(self.top_k, "top_k")
        if self.top_k < 0:
            raise ValidationError(f"top_k must be >= 0, got {self.top_k!r}", field="top_k")
        _number(self.top_p, "top_p")
        if not 0 <= self.top_p <= 1:
            raise ValidationError(f"top_p must be in [0, 1], got {self.top_p!r}", field="top_p")
        _number(self.cfg_coef, "cfg_coef")
        if not 1 <= self.cfg_coef <= MAX_CFG:
            raise ValidationError(f"cfg_coef must be in [1, {MAX_CFG:g}], got {self.cfg_coef!r}", field="cfg_coef")
        _integer(self.seed, "seed")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValidationError(f"seed must be in [0, 2**63-1], got {self.seed!r}", field="seed")
        return self


_NAMES = tuple(f.name for f in fields(GenParams))


def validate_prompt(prompt, field_name: str = "prompt") -> str:
    if not isinstance(prompt, str):
        raise ValidationError(f"{field_name} must be a string, got {type(prompt).__name__}", field=field_name)
    text = prompt.strip()   # counted after trimming, as PROTOCOL.md says
    if not text:
        raise ValidationError(f"{field_name} must not be empty", code=EMPTY_PROMPT, field=field_name)
    if len(text) > MAX_PROMPT_CHARS:
        raise ValidationError(f"{field_name} is longer than {MAX_PROMPT_CHARS} characters", field=field_name)
    return text


def _number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value!r}", field=name)


def _integer(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {value!r}", field=name)
