"""Requests checked against protocol/PROTOCOL.md section 5: `parse_request` turns a decoded request into
{"type", "id", fields with defaults filled}, or raises ProtocolError with the code, the offending field and
the request id. The framing and the msgpack subset are in protocol.py."""

from __future__ import annotations

from .errors import TroubadourError
from .params import MAX_DURATION, MAX_VARIANTS, GenParams, validate_prompt
from .profiles import NAME_RE
from .protocol import (CANCEL, EVENTS, FORMATS, DEFAULT_FORMAT, GET_TRACK, GET_TRACK_PRIORITY, INVALID_PARAM,
                       MAX_PREFETCH_CONTEXTS, PREFETCH, PREFETCH_PRIORITY, PRIORITY_RANGE, REQUEST_TYPES,
                       SAMPLE_RATES, SUBSCRIBE, UNKNOWN_TYPE, Message, ProtocolError, check_body, decode,
                       request_id)

_FLOAT_PARAMS = ("duration", "temperature", "top_p", "cfg_coef")


# Fields each request may carry besides `id`; requests not listed take none.
REQUEST_FIELDS = {
    GET_TRACK: ("context", "variant", "fallback", "prompt", "params", "format", "sample_rate", "stream",
                "regenerate", "cached_only", "priority"),
    PREFETCH: ("contexts", "variants", "priority", "stream", "format", "sample_rate"),
    CANCEL: ("target",),
    SUBSCRIBE: ("events",),
}


def parse_request(msg: Message, *, max_duration: float = MAX_DURATION,
                  sample_rates=SAMPLE_RATES) -> dict:
    """The request as {"type", "id", ...fields with defaults filled}; nil values count as absent.

    Raises ProtocolError carrying the code, the offending `field` and `req_id` (None if the id is bad).
    """
    req_id = request_id(msg.body)
    try:
        if msg.type not in REQUEST_TYPES:
            raise ProtocolError(f"unknown request type {msg.type!r}", code=UNKNOWN_TYPE)
        body = {k: v for k, v in msg.body.items() if v is not None}
        if req_id is None:
            raise ProtocolError("id must be an int in [0, 2**63-1] or a string of 1-64 characters", field="id")
        allowed = REQUEST_FIELDS.get(msg.type, ())
        for key in body:
            if key != "id" and key not in allowed:
                raise ProtocolError(f"unknown field {key!r} in {msg.type}", field=key)
        out = {"type": msg.type, "id": req_id}
        if msg.type == GET_TRACK:
            out.update(_get_track(body, max_duration, sample_rates))
        elif msg.type == PREFETCH:
            out.update(_prefetch(body, sample_rates))
        elif msg.type == CANCEL:
            if "target" not in body:
                raise ProtocolError("cancel needs a target", field="target")
            out["target"] = request_id({"id": body["target"]})
            if out["target"] is None:
                raise ProtocolError("target must be a request id", field="target")
        elif msg.type == SUBSCRIBE:
            events = _list(body, "events", list(EVENTS), str)
            # Unknown names are dropped, not refused, so newer clients work with older servers.
            out["events"] = [e for e in EVENTS if e in events]
        return out
    except ProtocolError as e:
        e.req_id = req_id
        raise
    except TroubadourError as e:
        raise ProtocolError(e.message, code=e.code, field=e.field, req_id=req_id) from e


class RequestParser:
    """decode + parse_request for the server's socket, remembering what each distinct get_track body gave.

    A game asks for the same few tracks again and again, and only the id changes; the subset walk and the
    field checks were half of a cache hit's request handling, which is time the client waits before its first
    chunk. A body is known by the repr of its decoded value without the id: equal reprs are equal values of
    equal types (1, 1.0 and True differ), so it would pass the same checks to the same result. Bounded: at
    most `size` bodies of at most MAX_KEY characters."""

    MAX_KEY = 4096

    def __init__(self, max_duration: float = MAX_DURATION, sample_rates=SAMPLE_RATES, size: int = 256):
        self.max_duration, self.sample_rates, self.size = max_duration, sample_rates, size
        self._known: dict = {}

    def __call__(self, frames) -> dict:
        """The request from its frames (envelope removed); raises ProtocolError like decode/parse_request."""
        msg = decode(frames, check=False)
        key = None
        if msg.type == GET_TRACK:
            body = msg.body
            rid = body.pop("id", _ABSENT)
            key = repr(body)
            known = self._known.get(key)
            if known is not None and rid is not _ABSENT:
                rid = request_id({"id": rid})
                if rid is not None:
                    return {**known, "id": rid}
            if rid is not _ABSENT:
                body["id"] = rid
        msg.body = check_body(msg.body)
        req = parse_request(msg, max_duration=self.max_duration, sample_rates=self.sample_rates)
        if key is not None and len(key) <= self.MAX_KEY:
            if len(self._known) >= self.size:
                self._known.clear()
            self._known[key] = {k: v for k, v in req.items() if k != "id"}
        return req


_ABSENT = object()


def _typed(body: dict, key: str, kind, default, what: str):
    value = body.get(key, default)
    if value is not default and (isinstance(value, bool) is not (kind is bool) or not isinstance(value, kind)):
        raise ProtocolError(f"{key} must be {what}, got {type(value).__name__}", field=key)
    return value


def _int(body: dict, key: str, default, lo: int, hi: int) -> int | None:
    value = _typed(body, key, int, default, "an integer")
    if value is not default and not lo <= value <= hi:
        raise ProtocolError(f"{key} must be in [{lo}, {hi}], got {value}", code=INVALID_PARAM, field=key)
    return value


def _choice(body: dict, key: str, options, default, kind=str):
    value = _typed(body, key, kind, default, "an integer" if kind is int else "a string")
    if value is not default and value not in options:
        raise ProtocolError(f"{key} must be one of {list(options)}, got {value!r}", code=INVALID_PARAM, field=key)
    return value


def _list(body: dict, key: str, default, kind) -> list:
    value = _typed(body, key, list, default, "an array")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, kind):
            raise ProtocolError(f"{key}[{i}] must be a {kind.__name__}", field=f"{key}[{i}]")
    return value


def _context_name(name: str, field: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ProtocolError(f"invalid context name {name!r}: use 1-64 letters, digits, '_' or '-'",
                            code=INVALID_PARAM, field=field)
    return name


def _output(body: dict, sample_rates) -> dict:
    return {"format": _choice(body, "format", FORMATS, DEFAULT_FORMAT),
            "sample_rate": _choice(body, "sample_rate", sample_rates, None, kind=int)}


def _get_track(body: dict, max_duration: float, sample_rates) -> dict:
    has_context, has_prompt = "context" in body, "prompt" in body
    if has_context and has_prompt:
        raise ProtocolError("give context or prompt, not both", field="prompt")
    if not has_context and not has_prompt:
        raise ProtocolError("get_track needs a context or a prompt", field="context")
    out = {"context": None, "variant": None, "fallback": True, "prompt": None}
    if has_context:
        out["context"] = _context_name(_typed(body, "context", str, None, "a string"), "context")
        out["variant"] = _int(body, "variant", None, 0, MAX_VARIANTS - 1)
        out["fallback"] = _typed(body, "fallback", bool, True, "a bool")
    else:
        for key in ("variant", "fallback"):
            if key in body:
                raise ProtocolError(f"{key} applies only to context requests", field=key)
        out["prompt"] = validate_prompt(_typed(body, "prompt", str, None, "a string"))
    out["params"] = _params(_typed(body, "params", dict, {}, "a map"), max_duration)
    out.update(_output(body, sample_rates))
    for key in ("stream", "regenerate", "cached_only"):
        out[key] = _typed(body, key, bool, False, "a bool")
    if out["regenerate"] and out["cached_only"]:
        raise ProtocolError("regenerate and cached_only exclude each other", field="cached_only")
    out["priority"] = _int(body, "priority", GET_TRACK_PRIORITY, *PRIORITY_RANGE)
    return out


def _params(params: dict, max_duration: float) -> dict:
    """The overrides given, type-checked here (bad_request) and range-checked by GenParams."""
    params = {k: v for k, v in params.items() if v is not None}
    for key, value in params.items():
        field = f"params.{key}"
        if key not in GenParams.names():
            raise ProtocolError(f"unknown parameter {key!r}", field=field)
        number = key in _FLOAT_PARAMS
        if isinstance(value, bool) or not isinstance(value, (int, float) if number else int):
            raise ProtocolError(f"{field} must be {'a number' if number else 'an integer'}", field=field)
    try:
        GenParams.from_dict(params, max_duration)
    except TroubadourError as e:
        raise ProtocolError(e.message, code=e.code, field=f"params.{e.field}") from None
    # Floats stay floats so equal requests give equal cache keys.
    return {k: float(v) if k in _FLOAT_PARAMS else v for k, v in params.items()}


def _prefetch(body: dict, sample_rates) -> dict:
    if "contexts" not in body:
        raise ProtocolError("prefetch needs contexts", field="contexts")
    contexts = _list(body, "contexts", None, str)
    if not 1 <= len(contexts) <= MAX_PREFETCH_CONTEXTS:
        raise ProtocolError(f"contexts must list 1-{MAX_PREFETCH_CONTEXTS} names", code=INVALID_PARAM,
                            field="contexts")
    names = [_context_name(c, f"contexts[{i}]") for i, c in enumerate(contexts)]
    variants = body.get("variants", "all")
    if variants != "all":
        if isinstance(variants, str):
            raise ProtocolError("variants must be \"all\" or an integer", code=INVALID_PARAM, field="variants")
        variants = _int(body, "variants", None, 1, MAX_VARIANTS)
    _output(body, sample_rates)  # accepted so clients can reuse their get_track options; unused
    # duplicates are dropped by the handler, so an error's `contexts[i]` is the index in the request
    return {"contexts": names, "variants": variants,
            "priority": _int(body, "priority", PREFETCH_PRIORITY, *PRIORITY_RANGE),
            "stream": _typed(body, "stream", bool, False, "a bool")}
