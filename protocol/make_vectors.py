"""Generate protocol/vectors/vectors.json, the golden messages client implementations test against.

    python protocol/make_vectors.py          # rewrite the file
    python protocol/make_vectors.py --check  # exit 1 if the committed file is stale

Each vector holds the frames after the envelope (header, type, body[, payload]) as hex. See
PROTOCOL.md, "Test vectors", for the JSON conventions ($bin, $int, $float).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import msgpack
import xxhash

from troubadour import protocol as p

OUT = Path(__file__).resolve().parent / "vectors" / "vectors.json"
TRACK_ID = "3f9a0c1e5b7d2468ace013579bdf0246"
# 4 stereo frames of pcm_s16le: interleaved L R, little-endian.
PCM = bytes.fromhex("00000000ff7f0180" "00400040" "00c000c0")
PARAMS = {"cfg_coef": 3.0, "duration": 12.5, "seed": 2**63 - 1, "temperature": 0.95, "top_k": 250, "top_p": 0.0}


def req(msg_type, **body):
    return p.encode(msg_type, body)


def rep(req_id, seq, final, msg_type, payload=None, **fields):
    return p.reply(req_id, seq, final, msg_type, payload, **fields)


def valid():
    """(name, direction, description, frames) of messages every decoder must accept."""
    track = dict(track_id=TRACK_ID, cached=False, context="battle", variant=0, fallback=False, sample_rate=32000,
                 channels=2, frames=4, format="pcm_s16le", bpm=140.0, meter="4/4", loop=True, loop_start=0, loop_end=4,
                 prompt="An epic orchestral battle theme.", params=PARAMS)
    yield "info_request", "request", "info, integer id", req("info", id=1)
    yield "health_request", "request", "health", req("health", id=2)
    yield "list_profiles_request", "request", "string id", req("list_profiles", id="profiles-1")
    yield "get_track_context", "request", "streamed track of a profile context", req(
        "get_track", id=10, context="battle", variant=0, format="pcm_s16le", stream=True)
    yield "get_track_prompt", "request", "raw prompt, unicode, all params, int64 max seed, negative priority", req(
        "get_track", id="ui-ünïcödé-1", prompt="Épique orchestral battle — 戦闘 🎻", params=PARAMS, format="ogg",
        sample_rate=48000, stream=False, priority=-5)
    yield "get_track_nil_fields", "request", "nil values count as absent", req(
        "get_track", id=3, context="menu", variant=None, params=None, sample_rate=None)
    yield "prefetch_request", "request", "all variants, streamed progress", req(
        "prefetch", id=11, contexts=["battle", "menu"], variants="all", priority=-50, stream=True)
    yield "prefetch_count", "request", "first 2 variants, one final reply", req(
        "prefetch", id=12, contexts=["explore"], variants=2)
    yield "cancel_request", "request", "cancel request 10", req("cancel", id=13, target=10)
    yield "subscribe_request", "request", "two events", req("subscribe", id=14,
                                                            events=["track_ready", "profiles_changed"])
    yield "unsubscribe_request", "request", "", req("unsubscribe", id=15)
    yield "reload_profiles_request", "request", "", req("reload_profiles", id=16)
    yield "ping_request", "request", "heartbeat", req("ping", id=2**32)

    model = {"id": "facebook/musicgen-small", "identity": "musicgen-small-9f3c2a", "sample_rate": 32000,
             "channels": 1, "device": "cuda"}
    limits = {"max_message_bytes": p.MAX_REQUEST_BYTES, "max_duration": 30.0, "max_variants": 16,
              "max_chunk_bytes": p.MAX_CHUNK_BYTES, "max_track_bytes": p.MAX_TRACK_BYTES,
              "max_inflight_per_client": 8, "queue_length": 64}
    yield "info_reply", "reply", "", rep(1, 0, True, "info", server_version="0.1.0", protocol_version=1,
                                         protocol_minor=0, model=model, sample_rates=list(p.SAMPLE_RATES),
                                         formats=list(p.FORMATS), limits=limits,
                                         profiles=["battle", "explore", "menu"], heartbeat_ms=2000)
    yield "health_reply", "reply", "", rep(2, 0, True, "health", status="ok", queue=3, generating=1,
                                           generated=12, uptime_s=3600.25)
    yield "profiles_reply", "reply", "bpm left out when unset", rep(
        "profiles-1", 0, True, "profiles", game={"title": "Dungeon Bard", "genre": "fantasy rpg"},
        contexts=[{"name": "battle", "prompt": "An epic orchestral battle theme.", "variants": 2, "duration": 12.5,
                   "loop": True, "bpm": 140.0, "meter": "4/4"},
                  {"name": "menu", "prompt": "A calm lute melody.", "variants": 1, "duration": 10.0,
                   "loop": True, "meter": "3/4"}])
    yield "track_streamed", "reply", "first message of a streamed get_track", rep(10, 0, False, "track", **track)
    yield "chunk", "reply", "4 frames of stereo pcm_s16le in the payload frame", rep(
        10, 1, False, "chunk", PCM, offset=0, frames=4, bytes=len(PCM))
    yield "end", "reply", "sha256 and xxh3_64 of all chunk payloads", rep(
        10, 2, True, "end", frames=4, bytes=len(PCM), sha256=hashlib.sha256(PCM).hexdigest(),
        xxh3_64=xxhash.xxh3_64_hexdigest(PCM))
    yield "track_whole", "reply", "non-streamed: one final track with the whole audio", rep(
        3, 0, True, "track", PCM, **track, bytes=len(PCM), sha256=hashlib.sha256(PCM).hexdigest(),
        xxh3_64=xxhash.xxh3_64_hexdigest(PCM))
    yield "accepted", "reply", "", rep(11, 0, False, "accepted", jobs=[
        {"context": "battle", "variant": 0, "track_id": TRACK_ID, "cached": True},
        {"context": "menu", "variant": 0, "track_id": "0123456789abcdef0123456789abcdef", "cached": False}])
    yield "progress", "reply", "", rep(11, 1, False, "progress", context="menu", variant=0,
                                       track_id="0123456789abcdef0123456789abcdef", done_steps=250,
                                       total_steps=500)
    yield "done", "reply", "", rep(11, 2, True, "done", generated=1, cached=1, failed=[
        {"context": "explore", "variant": 1, "error": {"code": "engine_error", "message": "CUDA out of memory"}}])
    yield "cancelled", "reply", "", rep(13, 0, True, "cancelled", target=10, found=True)
    yield "error_cancelled", "reply", "how the cancelled request ends", rep(
        10, 3, True, "error", code="cancelled", message="cancelled by request 13")
    yield "subscribed", "reply", "", rep(14, 0, True, "subscribed", events=["track_ready", "profiles_changed"])
    yield "unsubscribed", "reply", "", rep(15, 0, True, "unsubscribed")
    yield "reloaded", "reply", "", rep(16, 0, True, "reloaded", contexts=["battle", "explore", "menu"],
                                       changed=["battle"])
    yield "pong", "reply", "", rep(2**32, 0, True, "pong", time=1732480000.125)
    yield "event_track_ready", "reply", "unsolicited: id nil", p.event_frames(
        0, "track_ready", context="battle", variant=1, track_id=TRACK_ID, reason="hot_swap")
    yield "event_profiles_changed", "reply", "", p.event_frames(1, "profiles_changed", contexts=["battle"])
    yield "event_progress", "reply", "any generation advanced", p.event_frames(
        3, "progress", context="battle", variant=1, track_id=TRACK_ID, done_steps=100, total_steps=500)
    yield "event_profiles_error", "reply", "", p.event_frames(
        2, "profiles_error", message="profiles.toml: line 3: expected '='", file="/game/profiles.toml")
    yield "error_invalid_param", "reply", "with field", rep(
        7, 0, True, "error", code="invalid_param", message="duration must be in (0, 30] seconds, got 60",
        field="params.duration")
    yield "error_unparseable", "reply", "id nil: the request had no readable id", rep(
        None, 0, True, "error", code="bad_request", message="body is not valid msgpack")
    yield "pong_extended", "reply", "unknown fields (decoders must ignore them) covering the msgpack subset", rep(
        17, 0, True, "pong", time=0.0, x_ints=[0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1,
                                                 -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1,
                                                 -2**63],
        x_floats=[1.0, -0.5, 1e-300, 1.7976931348623157e308, math.inf, -math.inf, math.nan],
        x_bin=bytes(range(8)), x_empty={"a": [], "b": {}, "c": "", "d": b""}, x_nil=None, x_bool=[True, False],
        x_str={"ascii": "x" * 40, "unicode": "Zoë ♪ 音楽 🎵"},
        x_nested={"l1": [{"l3": [[1, [2, {"l6": "deep"}]]]}]})


def invalid():
    """(name, direction, description, frames, code, field, id) of messages a receiver must reject."""
    h, ping = p.HEADER, msgpack.packb({"id": 5})
    yield "wrong_version", "request", "TRB + version 2", [b"TRB\x02", b"ping", ping], "unsupported_version"
    yield "not_troubadour", "request", "header is not TRB", [b"GET ", b"ping", ping], "bad_request"
    yield "long_header", "request", "header has extra bytes", [h + b"\x00", b"ping", ping], "bad_request"
    yield "unknown_type", "request", "the id is still echoed", [h, b"play_song", ping], "unknown_type", None, 5
    yield "reply_type_as_request", "request", "", [h, b"pong", ping], "unknown_type", None, 5
    yield "bad_type_frame", "request", "type must be a-z0-9_", [h, b"Ping!", ping], "bad_request"
    yield "empty_type_frame", "request", "", [h, b"", ping], "bad_request"
    yield "type_trailing_newline", "request", "a known type plus a newline is malformed, not unknown", [
        h, b"ping\n", ping], "bad_request"
    yield "too_few_frames", "request", "", [h, b"ping"], "bad_request"
    yield "too_many_frames", "request", "", [h, b"ping", ping, b"x", b"y"], "bad_request"
    yield "payload_in_request", "request", "", [h, b"ping", ping, b"x"], "bad_request", None, 5
    yield "truncated_body", "request", "", [h, b"ping", ping[:-1]], "bad_request"
    yield "empty_body", "request", "", [h, b"ping", b""], "bad_request"
    yield "trailing_bytes", "request", "two msgpack objects", [h, b"ping", ping + b"\xc0"], "bad_request"
    yield "body_not_map", "request", "", [h, b"ping", msgpack.packb([5])], "bad_request"
    yield "int_key", "request", "", [h, b"ping", b"\x81\x01\x05"], "bad_request"
    yield "bin_key", "request", "", [h, b"ping", b"\x81\xc4\x02id\x05"], "bad_request"
    yield "ext_type", "request", "", [h, b"ping", b"\x81\xa2id\xd4\x05\x00"], "bad_request"
    yield "timestamp", "request", "", [h, b"ping", b"\x81\xa2id" + msgpack.packb(msgpack.Timestamp(1))], \
        "bad_request"
    yield "invalid_utf8", "request", "", [h, b"ping", b"\x81\xa2id\xa2\xff\xfe"], "bad_request"
    yield "uint64_over_int64", "request", "", [h, b"ping", b"\x81\xa2id\xcf" + b"\xff" * 8], "bad_request"
    yield "too_deep", "request", "17 levels", [h, b"ping", b"\x81\xa1x" + b"\x91" * 16 + b"\xc0"], "too_large"
    yield "array_too_long", "request", "array32 header claims 65536 items", [
        h, b"ping", b"\x81\xa1x\xdd\x00\x01\x00\x00"], "too_large"
    yield "chunk_without_payload", "reply", "", p.reply(1, 1, False, "chunk", offset=0, frames=0, bytes=0), \
        "bad_request", None, None
    yield "reply_without_seq", "reply", "", [h, b"pong", msgpack.packb({"id": 1, "final": True})], \
        "bad_request", "seq"


def rejected_requests():
    """(name, description, body, type, code, field, id): well-formed messages parse_request refuses."""
    yield "no_id", "get_track", {"prompt": "x"}, "bad_request", "id", None
    yield "bool_id", "ping", {"id": True}, "bad_request", "id", None
    yield "long_id", "ping", {"id": "x" * 65}, "bad_request", "id", None
    yield "unknown_field", "get_track", {"id": 1, "prompt": "x", "volume": 3}, "bad_request", "volume", 1
    yield "context_and_prompt", "get_track", {"id": 1, "context": "a", "prompt": "x"}, "bad_request", "prompt", 1
    yield "no_context_nor_prompt", "get_track", {"id": 1}, "bad_request", "context", 1
    yield "empty_prompt", "get_track", {"id": 1, "prompt": "  "}, "empty_prompt", "prompt", 1
    yield "duration_too_long", "get_track", {"id": 1, "prompt": "x", "params": {"duration": 400}}, \
        "invalid_param", "params.duration", 1
    yield "param_wrong_type", "get_track", {"id": 1, "prompt": "x", "params": {"top_k": "many"}}, \
        "bad_request", "params.top_k", 1
    yield "bad_format", "get_track", {"id": 1, "prompt": "x", "format": "mp3"}, "invalid_param", "format", 1
    yield "stream_not_bool", "get_track", {"id": 1, "prompt": "x", "stream": "yes"}, "bad_request", "stream", 1
    yield "bad_context_name", "get_track", {"id": 1, "context": "boss fight"}, "invalid_param", "context", 1
    yield "cancel_without_target", "cancel", {"id": 2}, "bad_request", "target", 2
    yield "prefetch_bad_name", "prefetch", {"id": 3, "contexts": ["ok", ""]}, "invalid_param", "contexts[1]", 3


def to_json(obj):
    """JSON for a decoded value: bin, ints beyond 2**53 and non-finite floats get a tagged form."""
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, bytes):
        return {"$bin": obj.hex()}
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > 2**53 - 1:
        return {"$int": str(obj)}
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"$float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    return obj


def _hex(frames):
    return [bytes(f).hex() for f in frames]


def _decoded(msg):
    return {"type": msg.type, "body": to_json(msg.body),
            "payload_hex": None if msg.payload is None else bytes(msg.payload).hex()}


def build() -> str:
    vectors = []
    for name, direction, description, frames in valid():
        vectors.append({"name": name, "direction": direction, "valid": True, "description": description,
                        "frames": _hex(frames), "decoded": _decoded(p.decode(frames, reply=direction == "reply"))})
    for name, direction, description, frames, code, *rest in invalid():
        field, req_id = (rest + [None, None])[:2]
        vectors.append({"name": name, "direction": direction, "valid": False, "description": description,
                        "frames": _hex(frames), "decoded": None,
                        "error": {"stage": "decode", "code": code, "field": field, "id": req_id}})
    for name, msg_type, body, code, field, req_id in rejected_requests():
        frames = p.encode(msg_type, body)
        vectors.append({"name": name, "direction": "request", "valid": False, "description": "refused by the server",
                        "frames": _hex(frames), "decoded": _decoded(p.decode(frames)),
                        "error": {"stage": "request", "code": code, "field": field, "id": req_id}})
    doc = {"protocol_version": p.VERSION, "generator": "protocol/make_vectors.py",
           "notes": "frames: after the envelope (no empty delimiter). Map keys are sorted. See PROTOCOL.md.",
           "vectors": vectors}
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def main(argv) -> int:
    text = build()
    if "--check" in argv:
        current = OUT.read_text("utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale: run python protocol/make_vectors.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, "utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
