"""Tests for troubadour.protocol, the golden vectors and PROTOCOL.md."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from troubadour import protocol as p
from troubadour.parse import REQUEST_FIELDS, RequestParser, parse_request
from troubadour.errors import TroubadourError, ValidationError

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "protocol" / "vectors" / "vectors.json"
SPEC = REPO / "protocol" / "PROTOCOL.md"
FUZZ = settings(max_examples=int(os.environ.get("TROUBADOUR_FUZZ_EXAMPLES", "300")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_generator():
    spec = importlib.util.spec_from_file_location("make_vectors", REPO / "protocol" / "make_vectors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vectors():
    return json.loads(VECTORS.read_text("utf-8"))["vectors"]


def frames_of(v):
    return [bytes.fromhex(h) for h in v["frames"]]


def from_json(obj):
    """Undo the vectors' JSON tagging ($bin, $int, $float)."""
    if isinstance(obj, dict):
        if set(obj) == {"$bin"}:
            return bytes.fromhex(obj["$bin"])
        if set(obj) == {"$int"}:
            return int(obj["$int"])
        if set(obj) == {"$float"}:
            return float(obj["$float"])
        return {k: from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_json(v) for v in obj]
    return obj


def same(a, b) -> bool:
    """Equality that also checks int vs float and treats NaN as equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def request(msg_type="get_track", **body):
    return parse_request(p.decode(p.encode(msg_type, body)))


def refused(msg_type="get_track", **body) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        request(msg_type, **body)
    return info.value


# ---------------------------------------------------------------- vectors
def test_vectors_file_is_current():
    assert VECTORS.read_text("utf-8") == load_generator().build(), "run python protocol/make_vectors.py"


def test_vectors_cover_every_type_and_some_invalid():
    vs = vectors()
    names = [v["name"] for v in vs]
    assert len(names) == len(set(names))
    valid = [v for v in vs if v["valid"]]
    assert {v["decoded"]["type"] for v in valid if v["direction"] == "request"} == set(p.REQUEST_TYPES)
    assert {v["decoded"]["type"] for v in valid if v["direction"] == "reply"} == set(p.REPLY_TYPES)
    codes = {v["error"]["code"] for v in vs if not v["valid"]}
    assert {"bad_request", "unsupported_version", "unknown_type", "too_large", "invalid_param",
            "empty_prompt"} <= codes


@pytest.mark.parametrize("v", [v for v in vectors() if v["valid"]], ids=lambda v: v["name"])
def test_valid_vector_round_trip(v):
    frames = frames_of(v)
    msg = p.decode(frames, reply=v["direction"] == "reply")
    assert msg.type == v["decoded"]["type"]
    assert same(msg.body, from_json(v["decoded"]["body"]))
    payload_hex = None if msg.payload is None else bytes(msg.payload).hex()
    assert payload_hex == v["decoded"]["payload_hex"]
    # Re-encoding what the JSON says gives the same bytes: the encoding is canonical.
    payload = None if payload_hex is None else bytes.fromhex(payload_hex)
    again = p.encode(v["decoded"]["type"], from_json(v["decoded"]["body"]), payload)
    assert [bytes(f) for f in again] == frames
    if v["direction"] == "request":
        assert parse_request(msg)["id"] == msg.id


@pytest.mark.parametrize("v", [v for v in vectors() if not v["valid"]], ids=lambda v: v["name"])
def test_invalid_vector_is_refused(v):
    err = v["error"]
    with pytest.raises(p.ProtocolError) as info:
        msg = p.decode(frames_of(v), reply=v["direction"] == "reply")
        assert err["stage"] == "request"
        parse_request(msg)
    e = info.value
    assert (e.code, e.field, e.req_id) == (err["code"], err["field"], err["id"])


def test_stream_vectors_are_consistent():
    by_name = {v["name"]: p.decode(frames_of(v), reply=True) for v in vectors() if v["direction"] == "reply"
               and v["valid"]}
    track, chunk, end = by_name["track_streamed"], by_name["chunk"], by_name["end"]
    assert [m.seq for m in (track, chunk, end)] == [0, 1, 2] and [m.final for m in (track, chunk, end)] == [
        False, False, True]
    pcm = bytes(chunk.payload)
    assert len(pcm) == chunk.body["frames"] * track.body["channels"] * 2 == chunk.body["bytes"]
    assert end.body["sha256"] == hashlib.sha256(pcm).hexdigest()
    assert np.frombuffer(pcm, "<i2").reshape(-1, 2).tolist() == [[0, 0], [32767, -32767], [16384, 16384],
                                                                 [-16384, -16384]]


# ---------------------------------------------------------------- framing
def test_header_and_frames():
    frames = p.encode("ping", {"id": 7})
    assert frames == [b"TRB\x01", b"ping", bytes.fromhex("81a2696407")]
    assert p.HEADER == b"TRB\x01"


def test_decode_errors():
    body = msgpack.packb({"id": 1})
    cases = [
        ([b"TRB\x07", b"ping", body], p.UNSUPPORTED_VERSION),
        ([b"TRB\x02\x00\x00", b"ping"], p.UNSUPPORTED_VERSION),  # checked before anything else
        ([b"TRB", b"ping", body], p.BAD_REQUEST),
        ([b"ZMQ\x01", b"ping", body], p.BAD_REQUEST),
        ([], p.BAD_REQUEST),
        (b"TRB\x01", p.BAD_REQUEST),
        ([p.HEADER, "ping", body], p.BAD_REQUEST),
        ([p.HEADER, b"ping", None], p.BAD_REQUEST),
        ([p.HEADER, b"x" * 33, body], p.BAD_REQUEST),
        ([p.HEADER, b"p\xffing", body], p.BAD_REQUEST),
        ([p.HEADER, b"chunk", body], p.UNKNOWN_TYPE),
    ]
    for frames, code in cases:
        with pytest.raises(p.ProtocolError) as info:
            p.decode(frames)
        assert info.value.code == code, frames


def test_decode_reply_rules():
    ok = p.reply(1, 0, True, "pong", time=1.0)
    assert p.decode(ok, reply=True).final is True
    with pytest.raises(p.ProtocolError) as info:
        p.decode(ok)  # pong is not a request
    assert info.value.code == p.UNKNOWN_TYPE and info.value.req_id == 1
    bad_bodies = [({"seq": 0, "final": True}, "id"), ({"id": 1, "seq": -1, "final": True}, "seq"),
                  ({"id": 1, "seq": 0, "final": 1}, "final"), ({"id": -3, "seq": 0, "final": True}, "id"),
                  ({"id": 1, "seq": True, "final": True}, "seq")]
    for body, field in bad_bodies:
        with pytest.raises(p.ProtocolError) as info:
            p.decode([p.HEADER, b"pong", msgpack.packb(body)], reply=True)
        assert info.value.field == field
    track = msgpack.packb({"id": 1, "seq": 0, "final": False})
    with pytest.raises(p.ProtocolError):  # a streamed track header carries no audio
        p.decode([p.HEADER, b"track", track, b"\x00"], reply=True)
    with pytest.raises(p.ProtocolError):
        p.decode([p.HEADER, b"pong", msgpack.packb({"id": 1, "seq": 0, "final": True}), b"x"], reply=True)
    assert p.decode([p.HEADER, b"track", track], reply=True).payload is None


def test_payload_is_not_copied():
    audio = np.arange(8, dtype="<i2")
    frames = p.reply(3, 1, False, "chunk", memoryview(audio), offset=0, frames=8, bytes=16)
    assert frames[3].obj is audio
    zframes = [zmq.Frame(bytes(f)) for f in frames]
    msg = p.decode(zframes, reply=True)
    assert isinstance(msg.payload, memoryview) and bytes(msg.payload) == audio.tobytes()
    assert p.decode([bytes(f) for f in frames], reply=True).payload == audio.tobytes()


def test_encode_refuses_what_decoders_would_refuse():
    deep = [1]
    for _ in range(p.MAX_DEPTH):
        deep = [deep]
    bad = [("nope", {}, None), ("ping", [], None), ("ping", {"id": {1, 2}}, None), ("ping", {1: 2}, None),
           ("ping", {"id": 2**63}, None), ("ping", {"id": 1}, b"x"), ("pong", {"x": "y" * 20000}, None),
           ("pong", {"x": [0] * (p.MAX_ARRAY_LEN + 1)}, None), ("pong", {"x": b"x" * (p.MAX_STR_BYTES + 1)}, None),
           ("pong", {"x": {str(i): 0 for i in range(p.MAX_MAP_LEN + 1)}}, None),
           ("pong", {"x": [b"x" * 16000] * 70}, None),  # body over 1 MiB
           ("chunk", {"id": 1}, bytes(p.MAX_CHUNK_BYTES + 1)), ("ping", {"a": deep}, None)]
    for msg_type, body, payload in bad:
        with pytest.raises(p.ProtocolError) as info:
            p.encode(msg_type, body, payload)
        assert info.value.code == p.INTERNAL


def test_encode_normalizes_python_values():
    frames = p.encode("pong", {"b": (1, 2), "a": np.int64(3), "c": np.float32(0.5), "d": bytearray(b"x")})
    assert frames[2] == msgpack.packb({"a": 3, "b": [1, 2], "c": 0.5, "d": b"x"}, use_bin_type=True)


def test_split_envelope():
    assert p.split_envelope([b"id", b"", b"TRB\x01", b"ping"]) == ([b"id", b""], [b"TRB\x01", b"ping"])
    assert p.split_envelope([b"a", b"b", b"", b"x"]) == ([b"a", b"b", b""], [b"x"])
    assert p.split_envelope([b"", b"x"]) == ([b""], [b"x"])
    with pytest.raises(p.ProtocolError) as info:
        p.split_envelope([b"id", b"TRB\x01"])
    assert info.value.code == p.BAD_REQUEST


def test_over_zeromq():
    """Real sockets: a DEALER and a REQ client against a ROUTER, envelopes handled by split_envelope."""
    ctx = zmq.Context.instance()
    router, dealer, req = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER), ctx.socket(zmq.REQ)
    try:
        router.bind("inproc://troubadour-protocol-test")
        for s in (dealer, req):
            s.connect("inproc://troubadour-protocol-test")
        dealer.send_multipart([b""] + p.encode("ping", {"id": 1}))
        req.send_multipart(p.encode("get_track", {"id": "r", "prompt": "lute"}))
        for _ in range(2):
            assert router.poll(2000)
            envelope, rest = p.split_envelope(router.recv_multipart(copy=False))
            r = parse_request(p.decode(rest))
            if r["type"] == "ping":
                router.send_multipart(envelope + p.reply(r["id"], 0, True, "pong", time=0.0))
            else:
                router.send_multipart(envelope + p.reply(r["id"], 0, True, "track", b"\x01\x02", frames=1))
        assert dealer.poll(2000)
        env, rest = p.split_envelope(dealer.recv_multipart())
        assert env == [b""] and p.decode(rest, reply=True).type == "pong"
        assert req.poll(2000)
        msg = p.decode(req.recv_multipart(), reply=True)
        assert (msg.type, msg.id, msg.payload) == ("track", "r", b"\x01\x02")
    finally:
        for s in (router, dealer, req):
            s.close(linger=0)


# ---------------------------------------------------------------- limits
def test_request_size_limit():
    def frames(total):
        strings = ["y" * 10500] * 6
        size = lambda: len(p.HEADER) + len(b"ping") + len(msgpack.packb({"id": 1, "x": strings}))
        strings[-1] = "y" * (10500 + total - size())
        assert size() == total
        return [p.HEADER, b"ping", msgpack.packb({"id": 1, "x": strings})]

    assert p.decode(frames(p.MAX_REQUEST_BYTES)).id == 1
    with pytest.raises(p.ProtocolError) as info:
        p.decode(frames(p.MAX_REQUEST_BYTES + 1))
    assert info.value.code == p.TOO_LARGE


@pytest.mark.parametrize("value, ok", [
    ("x" * p.MAX_STR_BYTES, True), ("x" * (p.MAX_STR_BYTES + 1), False), ("é" * (p.MAX_STR_BYTES // 2 + 1), False),
    (b"x" * (p.MAX_STR_BYTES + 1), False), ([0] * p.MAX_ARRAY_LEN, True), ([0] * (p.MAX_ARRAY_LEN + 1), False),
    ({str(i): 0 for i in range(p.MAX_MAP_LEN)}, True), ({str(i): 0 for i in range(p.MAX_MAP_LEN + 1)}, False),
])
def test_container_limits(value, ok):
    body = {"id": 1, "x": value}
    frames = [p.HEADER, b"pong", msgpack.packb({**body, "seq": 0, "final": True}, use_bin_type=True)]
    if ok:
        p.decode(frames, reply=True)
    else:
        with pytest.raises(p.ProtocolError) as info:
            p.decode(frames, reply=True)
        assert info.value.code == p.TOO_LARGE


@pytest.mark.parametrize("depth", [15, 16, 17, 100, 5000])
def test_depth_limit(depth):
    # {"id": 1, "x": [[...[nil]...]]}: the body map is level 1, each array one more.
    frames = [p.HEADER, b"ping", b"\x82\xa2id\x01\xa1x" + b"\x91" * (depth - 1) + b"\xc0"]
    if depth <= p.MAX_DEPTH:
        assert p.decode(frames).body["id"] == 1
    else:
        with pytest.raises(p.ProtocolError) as info:
            p.decode(frames)
        assert info.value.code == p.TOO_LARGE


def test_reply_payload_limits():
    body = msgpack.packb({"id": 1, "seq": 1, "final": False})
    with pytest.raises(p.ProtocolError) as info:
        p.decode([p.HEADER, b"chunk", body, bytes(p.MAX_CHUNK_BYTES + 1)], reply=True)
    assert info.value.code == p.TOO_LARGE
    with pytest.raises(p.ProtocolError) as info:
        p.decode([p.HEADER, b"pong", msgpack.packb({"id": 1, "seq": 0, "final": True, "x": [b"x" * 16000] * 70})],
                 reply=True)
    assert info.value.code == p.TOO_LARGE


# ---------------------------------------------------------------- requests
def test_get_track_defaults():
    r = request(id=1, context="battle")
    assert r == {"type": "get_track", "id": 1, "context": "battle", "variant": None, "fallback": True,
                 "prompt": None, "params": {}, "format": "pcm_s16le", "sample_rate": None, "stream": False,
                 "regenerate": False, "cached_only": False, "priority": 0}
    r = request(id="x", prompt="  lute  ", params={"duration": 5, "seed": 3, "top_k": None}, sample_rate=44100,
                stream=True, format="ogg", priority=-100)
    assert r["prompt"] == "lute" and r["params"] == {"duration": 5.0, "seed": 3}
    assert isinstance(r["params"]["duration"], float)
    assert (r["sample_rate"], r["stream"], r["format"], r["priority"]) == (44100, True, "ogg", -100)
    # nil counts as absent
    assert request(id=2, context="menu", variant=None, prompt=None, params=None)["context"] == "menu"


def test_request_options():
    assert request(id=1, prompt="x", params={"duration": 20})["params"]["duration"] == 20.0
    with pytest.raises(p.ProtocolError) as info:
        parse_request(p.decode(p.encode("get_track", {"id": 1, "prompt": "x", "params": {"duration": 20}})),
                        max_duration=10)
    assert (info.value.code, info.value.field) == ("invalid_param", "params.duration")
    msg = p.decode(p.encode("get_track", {"id": 1, "prompt": "x", "sample_rate": 24000}))
    assert parse_request(msg, sample_rates=(24000,))["sample_rate"] == 24000


@pytest.mark.parametrize("body, code, field", [
    ({"prompt": "x"}, "bad_request", "id"),
    ({"id": -1, "prompt": "x"}, "bad_request", "id"),
    ({"id": 1.0, "prompt": "x"}, "bad_request", "id"),
    ({"id": "", "prompt": "x"}, "bad_request", "id"),
    ({"id": 1, "prompt": "x", "extra": 1}, "bad_request", "extra"),
    ({"id": 1, "context": 5}, "bad_request", "context"),
    ({"id": 1, "context": "a b"}, "invalid_param", "context"),
    ({"id": 1, "context": "a", "variant": 16}, "invalid_param", "variant"),
    ({"id": 1, "context": "a", "variant": "0"}, "bad_request", "variant"),
    ({"id": 1, "context": "a", "fallback": 1}, "bad_request", "fallback"),
    ({"id": 1, "prompt": "x", "variant": 0}, "bad_request", "variant"),
    ({"id": 1, "prompt": "x", "fallback": False}, "bad_request", "fallback"),
    ({"id": 1, "prompt": 3}, "bad_request", "prompt"),
    ({"id": 1, "prompt": ""}, "empty_prompt", "prompt"),
    ({"id": 1, "prompt": "x" * 2001}, "invalid_param", "prompt"),
    ({"id": 1, "prompt": "x", "params": [1]}, "bad_request", "params"),
    ({"id": 1, "prompt": "x", "params": {"steps": 3}}, "bad_request", "params.steps"),
    ({"id": 1, "prompt": "x", "params": {"duration": "5"}}, "bad_request", "params.duration"),
    ({"id": 1, "prompt": "x", "params": {"duration": True}}, "bad_request", "params.duration"),
    ({"id": 1, "prompt": "x", "params": {"seed": 1.5}}, "bad_request", "params.seed"),
    ({"id": 1, "prompt": "x", "params": {"duration": 0}}, "invalid_param", "params.duration"),
    ({"id": 1, "prompt": "x", "params": {"temperature": math.nan}}, "invalid_param", "params.temperature"),
    ({"id": 1, "prompt": "x", "params": {"top_p": 2}}, "invalid_param", "params.top_p"),
    ({"id": 1, "prompt": "x", "params": {"cfg_coef": 0.5}}, "invalid_param", "params.cfg_coef"),
    ({"id": 1, "prompt": "x", "params": {"top_k": -1}}, "invalid_param", "params.top_k"),
    ({"id": 1, "prompt": "x", "format": "mp3"}, "invalid_param", "format"),
    ({"id": 1, "prompt": "x", "format": 1}, "bad_request", "format"),
    ({"id": 1, "prompt": "x", "sample_rate": 22050}, "invalid_param", "sample_rate"),
    ({"id": 1, "prompt": "x", "sample_rate": 44100.0}, "bad_request", "sample_rate"),
    ({"id": 1, "prompt": "x", "stream": 1}, "bad_request", "stream"),
    ({"id": 1, "prompt": "x", "regenerate": True, "cached_only": True}, "bad_request", "cached_only"),
    ({"id": 1, "prompt": "x", "priority": 101}, "invalid_param", "priority"),
    ({"id": 1, "prompt": "x", "priority": True}, "bad_request", "priority"),
])
def test_get_track_refused(body, code, field):
    e = refused("get_track", **body)
    assert (e.code, e.field) == (code, field)
    assert e.req_id == p.request_id(body)
    assert isinstance(e, TroubadourError)


def test_other_requests():
    for t in ("info", "health", "list_profiles", "unsubscribe", "reload_profiles", "ping"):
        assert request(t, id=9) == {"type": t, "id": 9}
        assert refused(t, id=9, x=1).field == "x"
    assert request("cancel", id=1, target="abc")["target"] == "abc"
    assert refused("cancel", id=1).field == "target"
    assert refused("cancel", id=1, target=-5).field == "target"
    assert request("subscribe", id=1)["events"] == list(p.EVENTS)
    assert request("subscribe", id=1, events=["progress", "future_event", "track_ready"])["events"] == [
        "track_ready", "progress"]
    assert refused("subscribe", id=1, events="track_ready").field == "events"
    assert refused("subscribe", id=1, events=[1]).field == "events[0]"


def test_prefetch():
    r = request("prefetch", id=1, contexts=["a", "b", "a"])   # duplicates: dropped by the handler
    assert r == {"type": "prefetch", "id": 1, "contexts": ["a", "b", "a"], "variants": "all", "priority": -50,
                 "stream": False}
    r = request("prefetch", id=1, contexts=["a"], variants=3, stream=True, format="wav", sample_rate=48000)
    assert (r["variants"], r["stream"]) == (3, True) and "format" not in r
    for body, code, field in [({}, "bad_request", "contexts"), ({"contexts": []}, "invalid_param", "contexts"),
                              ({"contexts": ["a"] * 257}, "invalid_param", "contexts"),
                              ({"contexts": "a"}, "bad_request", "contexts"),
                              ({"contexts": ["a", 2]}, "bad_request", "contexts[1]"),
                              ({"contexts": ["a"], "variants": 0}, "invalid_param", "variants"),
                              ({"contexts": ["a"], "variants": "some"}, "invalid_param", "variants"),
                              ({"contexts": ["a"], "variants": 1.0}, "bad_request", "variants"),
                              ({"contexts": ["a"], "format": "flac"}, "invalid_param", "format")]:
        e = refused("prefetch", id=4, **body)
        assert (e.code, e.field, e.req_id) == (code, field, 4), body


def test_parse_request_rejects_reply_types():
    with pytest.raises(p.ProtocolError) as info:
        parse_request(p.Message("pong", {"id": 3}))
    assert (info.value.code, info.value.req_id) == (p.UNKNOWN_TYPE, 3)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("code", p.ERROR_CODES)
def test_error_frames_every_code(code):
    msg = p.decode(p.error_frames(5, 2, TroubadourError("boom", code=code, field="f")), reply=True)
    assert msg.type == "error" and msg.body == {"code": code, "message": "boom", "field": "f", "id": 5, "seq": 2,
                                                "final": True}


def test_error_frames_unknown_codes_and_exceptions():
    msg = p.decode(p.error_frames(None, 0, TroubadourError("x")), reply=True)
    assert msg.body["code"] == p.INTERNAL and msg.id is None
    msg = p.decode(p.error_frames(1, 0, KeyError("k" * 5000)), reply=True)
    assert msg.body["code"] == p.INTERNAL and len(msg.body["message"]) == p.MAX_ERROR_MESSAGE
    assert p.decode(p.error_frames(1, 0, ValidationError("bad", field="top_k")), reply=True).body["field"] == "top_k"


def test_event_frames():
    msg = p.decode(p.event_frames(4, "profiles_changed", contexts=["a"]), reply=True)
    assert (msg.type, msg.id, msg.seq, msg.final, msg.body["event"]) == ("event", None, 4, False, "profiles_changed")


def test_spec_lists_every_code_type_and_limit():
    spec = SPEC.read_text("utf-8")
    for name in (*p.ERROR_CODES, *p.REQUEST_TYPES, *p.REPLY_TYPES, *p.EVENTS, *p.FORMATS, *p.HEALTH_STATUSES,
                 *p.TRACK_READY_REASONS):
        assert f"`{name}`" in spec, name
    for number in (p.MAX_REQUEST_BYTES, p.MAX_STR_BYTES, p.MAX_ARRAY_LEN, p.MAX_MAP_LEN, p.MAX_DEPTH,
                   p.MAX_ID_CHARS, p.MAX_PREFETCH_CONTEXTS, p.MAX_ERROR_MESSAGE, p.HEARTBEAT_MS):
        assert re.search(rf"\b{number}\b", spec), number
    for key in REQUEST_FIELDS[p.GET_TRACK] + REQUEST_FIELDS[p.PREFETCH]:
        assert f"`{key}`" in spec, key


# ---------------------------------------------------------------- fuzzing
def decode_or_refuse(frames, reply):
    try:
        msg = p.decode(frames, reply=reply)
    except p.ProtocolError as e:
        assert e.code in p.ERROR_CODES
        return
    assert isinstance(msg, p.Message) and isinstance(msg.body, dict)
    if not reply:
        try:
            r = parse_request(msg)
            assert r["type"] == msg.type
        except p.ProtocolError as e:
            assert e.code in p.ERROR_CODES


subset = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
keys = st.sampled_from(["id", "context", "variant", "prompt", "params", "format", "sample_rate", "stream",
                        "contexts", "variants", "target", "events", "priority", "duration", "seed", "fallback",
                        "regenerate", "cached_only", "seq", "final"])
bodies = st.dictionaries(keys | st.text(max_size=6), subset, max_size=8)
types = st.sampled_from([t.encode() for t in p.REQUEST_TYPES + p.REPLY_TYPES]) | st.binary(max_size=10)
raw_frames = st.lists(st.binary(max_size=64), max_size=6)


@FUZZ
@given(raw_frames, st.booleans())
def test_fuzz_raw_frames(frames, reply):
    decode_or_refuse(frames, reply)


@FUZZ
@given(types, st.one_of(bodies.map(lambda b: msgpack.packb(b, use_bin_type=True)), st.binary(max_size=64)),
       st.lists(st.binary(max_size=8), max_size=2), st.sampled_from([p.HEADER, b"TRB\x00", b"TRB"]),
       st.booleans())
def test_fuzz_structured(msg_type, body, extra, header, reply):
    decode_or_refuse([header, msg_type, body, *extra], reply)


@FUZZ
@given(st.sampled_from([v for v in vectors()]), st.data())
def test_fuzz_mutated_vectors(v, data):
    frames = frames_of(v)
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, len(frame)))
        if action == "flip" and frame:
            frame[min(pos, len(frame) - 1)] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del frame[pos:]
        else:
            frame[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    frames[i] = bytes(frame)
    decode_or_refuse(frames, v["direction"] == "reply")


# RequestParser remembers get_track bodies; whatever it remembers, it must answer like decode + parse_request.
SHARED_PARSER = RequestParser(size=64)


def outcome(fn, frames):
    try:
        return "ok", fn(frames)
    except p.ProtocolError as e:
        return "refused", e.code, e.field, e.req_id


def reference(frames):
    return parse_request(p.decode(frames))


plausible = {"prompt": st.sampled_from(["calm piano", " ", "x"]) | subset,
             "context": st.sampled_from(["battle", "bad name!"]) | subset,
             "variant": st.integers(-1, 17) | st.booleans(),
             "params": st.dictionaries(st.sampled_from(["duration", "seed", "top_k", "top_p", "nope"]),
                                       st.integers(-1, 40) | st.floats(-1, 40) | st.booleans() | st.none(),
                                       max_size=3) | subset,
             "format": st.sampled_from(["wav", "pcm_s16le", "mp3"]), "sample_rate": st.sampled_from([48000, 1, 48000.0]),
             "stream": st.booleans() | st.integers(0, 1), "fallback": st.booleans(), "priority": st.integers(-1, 200)}
get_track_bodies = st.fixed_dictionaries({}, optional=plausible)
ABSENT = "<no id>"
ids = st.lists(st.integers(-2, 2**63) | st.text(max_size=3) | st.booleans() | st.none() | st.just(ABSENT),
               min_size=1, max_size=3)


@FUZZ
@given(get_track_bodies, ids)
def test_request_parser_answers_like_parse_request(body, rids):
    for rid in rids + rids:   # each body twice per id: the second time it is known
        frames = [p.HEADER, b"get_track",
                  msgpack.packb(body if rid == ABSENT else {**body, "id": rid}, use_bin_type=True)]
        assert outcome(SHARED_PARSER, frames) == outcome(reference, frames)


def test_request_parser_knows_bodies_not_ids_or_types():
    parse = RequestParser()
    body = {"prompt": "calm piano", "params": {"duration": 12, "seed": 3}, "stream": True}
    first = parse(p.encode("get_track", {**body, "id": 1}))
    assert first == request(**body, id=1) and first["params"] == {"duration": 12.0, "seed": 3}
    assert parse(p.encode("get_track", {**body, "id": "abc"})) == {**first, "id": "abc"}
    with pytest.raises(p.ProtocolError) as e:   # a known body with a bad id is refused all the same
        parse(p.encode("get_track", {**body, "id": -1}))
    assert e.value.field == "id"
    with pytest.raises(p.ProtocolError) as e:   # True == 1 in Python, but not here
        parse(p.encode("get_track", {**body, "params": {"duration": 12, "seed": True}, "id": 2}))
    assert e.value.field == "params.seed"
    assert parse(p.encode("cancel", {"id": 4, "target": 1}))["target"] == 1   # other types: parsed as usual
