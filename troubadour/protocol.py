"""Troubadour wire protocol, version 1: framing, the msgpack subset, message types and limits.

protocol/PROTOCOL.md is the specification; this module is its one implementation, shared by the
server, the Python client and the tests (request fields are checked in parse.py). Golden vectors:
protocol/vectors/vectors.json.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import msgpack

from .errors import (CANCELLED, EMPTY_PROMPT, ENGINE_DEAD, ENGINE_ERROR, INVALID_PARAM, MODEL_ERROR,
                     PROFILE_ERROR, UNKNOWN_CONTEXT, TroubadourError)

VERSION = 1          # major: in the header; a change means old peers cannot talk to new ones
MINOR = 0            # additions only (new optional fields, requests, events); sent in `info`
MAGIC = b"TRB"
HEADER = MAGIC + bytes([VERSION])

# Requests (client -> server).
REQUEST_TYPES = ("info", "health", "list_profiles", "get_track", "prefetch", "cancel", "subscribe",
                 "unsubscribe", "reload_profiles", "ping")
(INFO, HEALTH, LIST_PROFILES, GET_TRACK, PREFETCH, CANCEL, SUBSCRIBE, UNSUBSCRIBE, RELOAD_PROFILES,
 PING) = REQUEST_TYPES
# Server -> client messages (`info` and `health` answer the requests of the same name).
REPLY_TYPES = ("info", "health", "profiles", "track", "chunk", "end", "accepted", "progress", "done", "cancelled",
               "subscribed", "unsubscribed", "reloaded", "pong", "event", "error")
(_, _, PROFILES, TRACK, CHUNK, END, ACCEPTED, PROGRESS, DONE, CANCELLED_REPLY,
 SUBSCRIBED, UNSUBSCRIBED, RELOADED, PONG, EVENT, ERROR) = REPLY_TYPES
PAYLOAD_TYPES = (TRACK, CHUNK)

EVENTS = ("track_ready", "profiles_changed", "profiles_error", "progress")
TRACK_READY_REASONS = ("hot_swap", "prefetch", "generated")
HEALTH_STATUSES = ("ok", "loading", "degraded")
FORMATS = ("pcm_s16le", "pcm_f32le", "wav", "ogg")
DEFAULT_FORMAT = "pcm_s16le"
SAMPLE_RATES = (32000, 44100, 48000)

# Error codes (the ones shared with the library come from errors.py).
BAD_REQUEST, UNSUPPORTED_VERSION, UNKNOWN_TYPE = "bad_request", "unsupported_version", "unknown_type"
TOO_LARGE, BUSY, NOT_FOUND, INTERNAL = "too_large", "busy", "not_found", "internal"
ERROR_CODES = (BAD_REQUEST, UNSUPPORTED_VERSION, UNKNOWN_TYPE, TOO_LARGE, INVALID_PARAM, EMPTY_PROMPT,
               UNKNOWN_CONTEXT, PROFILE_ERROR, BUSY, CANCELLED, NOT_FOUND, ENGINE_ERROR, ENGINE_DEAD,
               MODEL_ERROR, INTERNAL)

# Limits. Request bytes are capped hard because any client can send them; replies come from a trusted server.
MAX_REQUEST_BYTES = 64 * 1024           # header + type + body of one request
MAX_REPLY_BODY_BYTES = 1024 * 1024      # body frame of one server message
MAX_CHUNK_BYTES = 1024 * 1024           # payload of one `chunk`
MAX_TRACK_BYTES = 32 * 1024 * 1024      # payload of a non-streamed `track` (30 s, 48 kHz, stereo f32 = 11.5 MB)
MAX_STR_BYTES = 16 * 1024               # any msgpack str (UTF-8 bytes) or bin
MAX_ARRAY_LEN = 4096
MAX_MAP_LEN = 256
MAX_DEPTH = 16                          # the body map is depth 1
MAX_TYPE_LEN = 32
MAX_ID_CHARS = 64
MAX_PREFETCH_CONTEXTS = 256
MAX_ERROR_MESSAGE = 1000
PRIORITY_RANGE = (-100, 100)
GET_TRACK_PRIORITY, PREFETCH_PRIORITY = 0, -50
HEARTBEAT_MS = 2000
HEARTBEAT_LIVENESS = 3                  # silent heartbeat periods before a peer counts as dead
INT_MIN, INT_MAX = -2**63, 2**63 - 1    # int64: what C# long and Godot int hold

_TYPE_RE = re.compile(r"[a-z][a-z0-9_]*")   # used with fullmatch: "$" would let a trailing "\n" through


class ProtocolError(TroubadourError):
    """A message or request the protocol rejects; `req_id` is the request's id when it could be read."""

    code = BAD_REQUEST

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None, req_id=None):
        super().__init__(message, code=code, field=field)
        self.req_id = req_id


@dataclass
class Message:
    type: str
    body: dict
    payload: bytes | memoryview | None = None

    # The fields every server message carries (absent in requests except id).
    id = property(lambda self: self.body.get("id"))
    seq = property(lambda self: self.body.get("seq"))
    final = property(lambda self: self.body.get("final"))


# ---------------------------------------------------------------- msgpack subset
def _canon(obj, depth: int = 1):
    """A copy of `obj` with map keys sorted, checked against the msgpack subset and limits."""
    t = type(obj)   # exact-type fast paths first: the abstract-class checks below are slow per message
    if t is int:
        if not INT_MIN <= obj <= INT_MAX:
            raise ProtocolError(f"integer {obj} outside the int64 range")
        return obj
    if t is bool or t is float or obj is None:
        return obj
    if obj is None or isinstance(obj, (bool, str, float)):
        if isinstance(obj, str) and len(obj) * 4 > MAX_STR_BYTES and len(obj.encode("utf-8")) > MAX_STR_BYTES:
            raise ProtocolError(f"string longer than {MAX_STR_BYTES} bytes", code=TOO_LARGE)
        return obj
    if isinstance(obj, numbers.Integral):  # numpy integers too
        if not INT_MIN <= obj <= INT_MAX:
            raise ProtocolError(f"integer {obj} outside the int64 range")
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        obj = bytes(obj)
        if len(obj) > MAX_STR_BYTES:
            raise ProtocolError(f"bin longer than {MAX_STR_BYTES} bytes", code=TOO_LARGE)
        return obj
    if isinstance(obj, (list, tuple, dict)):
        if depth > MAX_DEPTH:
            raise ProtocolError(f"nesting deeper than {MAX_DEPTH} levels", code=TOO_LARGE)
        if isinstance(obj, dict):
            if len(obj) > MAX_MAP_LEN:
                raise ProtocolError(f"map with more than {MAX_MAP_LEN} entries", code=TOO_LARGE)
            if not all(isinstance(k, str) for k in obj):
                raise ProtocolError("map keys must be strings")
            out = {}
            for k in sorted(obj):
                v = obj[k]
                tv = type(v)   # the common flat values inline: a call per field was most of a message's cost
                if (tv is int and INT_MIN <= v <= INT_MAX) or tv is bool or tv is float or v is None or (
                        tv is str and len(v) * 4 <= MAX_STR_BYTES):
                    out[k] = v
                else:
                    out[k] = _canon(v, depth + 1)
            return out
        if len(obj) > MAX_ARRAY_LEN:
            raise ProtocolError(f"array with more than {MAX_ARRAY_LEN} items", code=TOO_LARGE)
        return [_canon(v, depth + 1) for v in obj]
    raise ProtocolError(f"{type(obj).__name__} is not in the msgpack subset")


class _ExtType(Exception):
    """Raised from msgpack's ext_hook: ext types (timestamps included) are outside the subset."""


def _no_ext(code, data):
    raise _ExtType(code)


def _unpack(data: bytes, check: bool = True) -> dict:
    """A msgpack map body. check=False (replies, read by the client) skips the subset walk: the unpacker
    already refuses ext types and applies the size limits, and the walk was a third of a chunk's decoding."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, max_str_len=MAX_STR_BYTES,
                               max_bin_len=MAX_STR_BYTES, max_array_len=MAX_ARRAY_LEN,
                               max_map_len=MAX_MAP_LEN, max_ext_len=64, ext_hook=_no_ext)
    except _ExtType as e:
        raise ProtocolError(f"msgpack ext types are not allowed (ext {e.args[0]})") from None
    except msgpack.StackError:
        raise ProtocolError(f"nesting deeper than {MAX_DEPTH} levels", code=TOO_LARGE) from None
    except UnicodeDecodeError:
        raise ProtocolError("string is not valid UTF-8") from None
    except ValueError as e:
        # msgpack reports its length limits as "N exceeds max_<kind>_len(M)".
        if "exceeds max_" in str(e):
            raise ProtocolError(f"body exceeds a size limit: {e}", code=TOO_LARGE) from None
        raise ProtocolError(f"body is not valid msgpack: {e or type(e).__name__}") from None
    except Exception as e:  # the C unpacker may raise others on garbage input
        raise ProtocolError(f"body is not valid msgpack: {type(e).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError("body must be a msgpack map")
    return _canon(body) if check else body


# ---------------------------------------------------------------- framing
def encode(msg_type: str, body: dict, payload=None) -> list:
    """Frames header, type, body[, payload]; the caller adds the empty delimiter / ROUTER envelope.

    `payload` (any buffer: bytes, memoryview, numpy array) becomes its own frame, not copied.
    Map keys are written sorted so equal bodies give equal bytes (the test vectors rely on it)."""
    if msg_type not in REQUEST_TYPES and msg_type not in REPLY_TYPES:
        raise ProtocolError(f"unknown message type {msg_type!r}", code=INTERNAL)
    if not isinstance(body, dict):
        raise ProtocolError("body must be a dict", code=INTERNAL)
    try:
        data = msgpack.packb(_canon(body), use_bin_type=True)
    except ProtocolError as e:
        raise ProtocolError(f"cannot encode {msg_type}: {e.message}", code=INTERNAL) from None
    if len(data) > MAX_REPLY_BODY_BYTES:
        raise ProtocolError(f"{msg_type} body is {len(data)} bytes", code=INTERNAL)
    frames = [HEADER, msg_type.encode("ascii"), data]
    if payload is not None:
        if msg_type not in PAYLOAD_TYPES:
            raise ProtocolError(f"{msg_type} carries no payload", code=INTERNAL)
        limit = MAX_CHUNK_BYTES if msg_type == CHUNK else MAX_TRACK_BYTES
        if memoryview(payload).nbytes > limit:
            raise ProtocolError(f"{msg_type} payload over {limit} bytes", code=INTERNAL)
        frames.append(payload)
    return frames


def decode(frames, *, reply: bool = False, check: bool = True) -> Message:
    """Parse frames header, type, body[, payload] (envelope removed): a request, or with reply=True a
    server message. Raises ProtocolError: bad_request, unsupported_version, unknown_type or too_large.
    check=False leaves a request body's msgpack-subset walk to the caller (`check_body`); the unpacker's own
    limits still apply."""
    msg = _decode_common(frames, reply, check)
    if msg is not None:
        return msg
    if not isinstance(frames, (list, tuple)) or not frames:
        raise ProtocolError("a message is a non-empty list of frames")
    try:
        parts = [memoryview(f) for f in frames]
    except TypeError:
        raise ProtocolError("frames must be byte strings") from None
    header = bytes(parts[0][:8])
    if header[:3] == MAGIC and len(header) >= 4 and header[3] != VERSION:
        raise ProtocolError(f"protocol version {header[3]} is not supported; this server speaks {VERSION}",
                            code=UNSUPPORTED_VERSION)
    if parts[0].nbytes != 4 or header != HEADER:
        raise ProtocolError("first frame must be the header b'TRB\\x01'")
    if not 3 <= len(parts) <= 4:
        raise ProtocolError(f"a message has 3 or 4 frames after the envelope, got {len(parts)}")
    raw_type = bytes(parts[1][:MAX_TYPE_LEN + 1])
    try:
        msg_type = raw_type.decode("ascii")
    except UnicodeDecodeError:
        msg_type = ""
    if len(raw_type) > MAX_TYPE_LEN or not _TYPE_RE.fullmatch(msg_type):
        raise ProtocolError("message type must be 1-32 characters a-z, 0-9, '_'")
    known = REPLY_TYPES if reply else REQUEST_TYPES
    if not reply and sum(p.nbytes for p in parts) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes", code=TOO_LARGE)
    if reply and parts[2].nbytes > MAX_REPLY_BODY_BYTES:
        raise ProtocolError(f"body larger than {MAX_REPLY_BODY_BYTES} bytes", code=TOO_LARGE)
    if msg_type not in known:
        try:  # still find the id so the client can match the error to its request
            req_id = request_id(_unpack(bytes(parts[2])))
        except ProtocolError:
            req_id = None
        raise ProtocolError(f"unknown message type {msg_type!r}", code=UNKNOWN_TYPE, req_id=req_id)
    body = _unpack(bytes(parts[2]), check=not reply)
    payload = None
    if len(parts) == 4:
        payload = frames[3] if isinstance(frames[3], bytes) else parts[3]
    if reply:
        _check_reply(msg_type, body, payload)
    elif payload is not None:
        raise ProtocolError("requests carry no payload frame", req_id=request_id(body))
    return Message(msg_type, body, payload)


_TYPE_NAMES = {False: {t.encode("ascii"): t for t in REQUEST_TYPES}, True: {t.encode("ascii"): t for t in REPLY_TYPES}}


def check_body(body: dict) -> dict:
    """The subset walk that decode(check=False) skipped: the body with map keys sorted, or ProtocolError."""
    return _canon(body)


def _decode_common(frames, reply: bool, check: bool = True) -> Message | None:
    """A well-formed message of a known type whose frames are bytes (as both Python ends receive them) is
    decoded with the same checks but without the general path's conversions; None sends anything else there,
    which finds the error."""
    if type(frames) is not list or not 3 <= len(frames) <= 4:
        return None
    head, kind, data = frames[0], frames[1], frames[2]
    if type(head) is not bytes or type(kind) is not bytes or type(data) is not bytes or head != HEADER:
        return None
    msg_type = _TYPE_NAMES[reply].get(kind)
    if msg_type is None or len(data) > (MAX_REPLY_BODY_BYTES if reply else MAX_REQUEST_BYTES - 4 - len(kind)):
        return None
    if not reply:
        return Message(msg_type, _unpack(data, check)) if len(frames) == 3 else None
    body = _unpack(data, check=False)
    payload = frames[3] if len(frames) == 4 else None
    _check_reply(msg_type, body, payload)
    return Message(msg_type, body, payload)


def _check_reply(msg_type: str, body: dict, payload) -> None:
    if "id" not in body or not (body["id"] is None or request_id(body) is not None):
        raise ProtocolError("id must be nil, an int >= 0 or a string of 1-64 characters", field="id")
    seq, final = body.get("seq"), body.get("final")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ProtocolError("seq must be an int >= 0", field="seq")
    if not isinstance(final, bool):
        raise ProtocolError("final must be a bool", field="final")
    size = None if payload is None else memoryview(payload).nbytes
    if msg_type == CHUNK and (size is None or size > MAX_CHUNK_BYTES):
        raise ProtocolError(f"chunk needs a payload of at most {MAX_CHUNK_BYTES} bytes",
                            code=BAD_REQUEST if size is None else TOO_LARGE)
    if msg_type == TRACK and (size is not None) != final:
        raise ProtocolError("track carries a payload exactly when final is true")
    if msg_type == TRACK and size is not None and size > MAX_TRACK_BYTES:
        raise ProtocolError(f"track payload over {MAX_TRACK_BYTES} bytes", code=TOO_LARGE)
    if msg_type not in PAYLOAD_TYPES and size is not None:
        raise ProtocolError(f"{msg_type} carries no payload frame")


def split_envelope(frames) -> tuple[list, list]:
    """(envelope, rest): the frames up to and including the first empty frame, and the message."""
    for i, frame in enumerate(frames):
        if memoryview(frame).nbytes == 0:
            return list(frames[:i + 1]), list(frames[i + 1:])
    raise ProtocolError("no empty delimiter frame before the message")


# ---------------------------------------------------------------- server messages
def reply(req_id, seq: int, final: bool, msg_type: str, payload=None, **fields) -> list:
    """Frames of one server message answering request `req_id`."""
    return encode(msg_type, {"id": req_id, "seq": seq, "final": final, **fields}, payload)


def event_frames(seq: int, event: str, **fields) -> list:
    """An unsolicited event; `seq` counts the events sent to this subscriber."""
    return reply(None, seq, False, EVENT, event=event, **fields)


def error_frames(req_id, seq: int, exc: BaseException) -> list:
    """The final `error` message for `exc`; exceptions without a wire code become `internal`."""
    if isinstance(exc, TroubadourError):
        fields = exc.to_dict()
        if fields["code"] not in ERROR_CODES:
            fields["code"] = INTERNAL
    else:
        fields = {"code": INTERNAL, "message": f"{type(exc).__name__}: {exc}"}
    fields["message"] = str(fields["message"])[:MAX_ERROR_MESSAGE]
    return reply(req_id, seq, True, ERROR, **fields)


# ---------------------------------------------------------------- requests
def request_id(body: dict):
    """The body's id if it is a valid request id (int 0..2**63-1 or str of 1-64 chars), else None."""
    rid = body.get("id") if isinstance(body, dict) else None
    if isinstance(rid, int) and not isinstance(rid, bool) and 0 <= rid <= INT_MAX:
        return rid
    if isinstance(rid, str) and 1 <= len(rid) <= MAX_ID_CHARS:
        return rid
    return None
