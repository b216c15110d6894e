"""Adversarial requests against one real `troubadour serve` process (hypothesis).

Properties, for every generated message:
  * the server process stays alive;
  * a message that reaches the decode stage (ZeroMQ delivered it and it has an empty delimiter frame) gets
    exactly one final reply: an `error` whose code is in protocol.ERROR_CODES (and is not `internal`, which
    means a server bug), or the valid reply when the random request happened to be valid; every message for
    that request has contiguous seq numbers and nothing follows the final one;
  * a message without any empty frame gets no reply (there is no envelope to answer to);
  * a valid `ping` sent right after is answered (and acts as a barrier: nothing for the fuzzed request may
    arrive after the final message).

Generated requests never cost more than a tiny generation: get_track bodies carry params.duration <= 0.1 s
(context requests with a bpm round that up to one bar, about 2 s) or cached_only=true. Messages over MAXMSGSIZE
(ZeroMQ drops the connection without a reply) are tested separately; generated frames stay under it.

After a test that crashed the server, the next test restarts it (same port and cache), so one crash bug does
not hide the others. Targeted tests at the end cover bugs the random search finds only sometimes.

Default budget: about 300 examples in total, so the module runs in well under a minute on 2 CPU cores;
TROUBADOUR_FUZZ_EXAMPLES=10000 raises the total for a dedicated run (TROUBADOUR_FUZZ_REPLY_TIMEOUT, default 60 s,
bounds the wait for one reply; TROUBADOUR_FUZZ_VERBOSE=1 prints a tally of the final replies).
"""

from __future__ import annotations

import collections
import itertools
import os
import struct
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from servers import PROFILES, ServerProcess
from troubadour import protocol as P
from troubadour.parse import REQUEST_FIELDS

TOTAL_EXAMPLES = int(os.environ.get("TROUBADOUR_FUZZ_EXAMPLES", "300"))


def fuzz_settings(share: float) -> settings:
    return settings(max_examples=max(10, int(TOTAL_EXAMPLES * share)), deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


CONTEXTS = ("menu", "explore", "battle", "boss", "victory")   # servers.PROFILES
TINY = (0.02, 0.05, 0.1)                                      # seconds: the only durations that get generated
REPLY_TIMEOUT = float(os.environ.get("TROUBADOUR_FUZZ_REPLY_TIMEOUT", "60"))
TALLY: collections.Counter = collections.Counter()   # final reply kinds seen; printed with TROUBADOUR_FUZZ_VERBOSE=1


# ---------------------------------------------------------------- server and a raw connection
@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    profiles = work / "profiles.toml"
    profiles.write_text(PROFILES)
    srv = ServerProcess(tiny_model, work, profiles, args=["--no-watch"]).start()
    yield srv
    srv.stop()
    if os.environ.get("TROUBADOUR_FUZZ_VERBOSE"):
        print("\nfinal replies seen:", dict(TALLY.most_common()))


@pytest.fixture(autouse=True)
def restart_if_dead(server):
    """A test that exposed a crash leaves the server dead (or dying): the next test gets a new one (same port
    and cache)."""
    if server.proc.poll() is None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.address)
        sock.send_multipart([b""] + P.encode(P.PING, {"id": "alive?"}))
        deadline = time.monotonic() + 10
        answered = False
        while not answered and server.proc.poll() is None and time.monotonic() < deadline:
            if sock.poll(100):
                frames = sock.recv_multipart()
                answered = P.decode(frames[1:], reply=True).id == "alive?"
        sock.close(0)
        if answered:
            return
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(30)
    server.start()


def alive(srv) -> None:
    if srv.proc.poll() is not None:
        pytest.fail(f"the server died (exit {srv.proc.returncode}); log tail:\n{srv.log()[-3000:]}")


class Raw:
    """A pre-encoded msgpack piece (possibly invalid), spliced into a body as is."""

    def __init__(self, data: bytes, label: str):
        self.data, self.label = data, label

    def __repr__(self):
        return f"Raw({self.label})"


class Pairs(list):
    """A msgpack map given as (key, value) pairs, so keys may be anything (ints, duplicates, Raw)."""


def pack(value) -> bytes:
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, (dict, Pairs)):
        items = list(value.items()) if isinstance(value, dict) else list(value)
        n = len(items)
        head = bytes([0x80 | n]) if n < 16 else (b"\xde" + struct.pack(">H", n) if n < 65536
                                                 else b"\xdf" + struct.pack(">I", n))
        return head + b"".join(pack(k) + pack(v) for k, v in items)
    if isinstance(value, list):
        n = len(value)
        head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536
                                                 else b"\xdd" + struct.pack(">I", n))
        return head + b"".join(pack(v) for v in value)
    return msgpack.packb(value, use_bin_type=True)


class Wire:
    """A DEALER that sends frames exactly as given (no delimiter added) and reads any envelope back."""

    _ids = itertools.count(1)

    def __init__(self, srv):
        self.srv = srv
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(srv.address)

    def close(self):
        self.sock.close(0)

    def send(self, frames):
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float):
        """The next server message (decoded, validated as a reply), or None after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.sock.poll(int(max(0.0, min(0.5, left)) * 1000)):
                frames = self.sock.recv_multipart()
                empties = [i for i, f in enumerate(frames) if not f]
                assert empties, f"server message without a delimiter: {frames[:4]!r}"
                # whatever preceded the first empty frame is our own envelope, echoed back
                return P.decode(frames[empties[0] + 1:], reply=True)
            alive(self.srv)
            if left <= 0:
                return None

    def barrier(self, timeout: float = REPLY_TIMEOUT) -> list:
        """Send a valid ping and read up to its pong; returns the non-event messages seen before it."""
        rid = f"barrier-{next(self._ids)}"
        self.send([b""] + P.encode(P.PING, {"id": rid}))
        stray = []
        while True:
            m = self.recv(timeout)
            assert m is not None, "a valid ping right after the fuzzed message got no pong"
            if m.id == rid:
                assert m.type == P.PONG and m.final and m.seq == 0, m.body
                return stray
            if not is_event(m):
                stray.append(m)


@pytest.fixture
def wire(server):
    """One connection per test function (shared by its examples): a fresh one after a restart, so nothing
    queued for a dead server reaches the next one."""
    w = Wire(server)
    yield w
    w.close()


def is_event(m) -> bool:
    return m.type == P.EVENT and m.id is None and m.final is False


def check_messages(msgs: list) -> None:
    """One request's messages: seq 0..n-1, exactly one final (the last), sane errors."""
    assert [m.seq for m in msgs] == list(range(len(msgs))), [m.body for m in msgs]
    assert [m.final for m in msgs] == [False] * (len(msgs) - 1) + [True], [m.body for m in msgs]
    for m in msgs:
        if m.type == P.ERROR:
            assert m.final
            assert m.body["code"] in P.ERROR_CODES, m.body
            assert m.body["code"] != P.INTERNAL, f"internal error (a server bug): {m.body}"
            assert isinstance(m.body["message"], str) and len(m.body["message"]) <= P.MAX_ERROR_MESSAGE
            assert isinstance(m.body.get("field", ""), str)


def reaches_decode(frames) -> bool:
    """An empty delimiter, and an envelope before it the server echoes (not over MAX_ENVELOPE_BYTES with the
    ROUTER's 5-byte identity in front)."""
    from troubadour.server import MAX_ENVELOPE_BYTES

    i = next((i for i, f in enumerate(frames) if len(f) == 0), None)
    return i is not None and 5 + sum(len(f) for f in frames[:i]) <= MAX_ENVELOPE_BYTES


def exchange(wire, frames, *, req_id=None, expect_code=None) -> list:
    """Send one message; check the property above; return its messages."""
    assert all(len(f) <= P.MAX_REQUEST_BYTES for f in frames), "frames over MAXMSGSIZE drop the connection"
    wire.send(frames)
    msgs: list = []
    if reaches_decode(frames):
        while True:
            m = wire.recv(REPLY_TIMEOUT)
            assert m is not None, f"no final reply within {REPLY_TIMEOUT}s to {frames_repr(frames)}"
            if is_event(m):
                continue
            msgs.append(m)
            if m.final:
                break
        check_messages(msgs)
        TALLY[msgs[-1].body.get("code", msgs[-1].type)] += 1
        ids = {repr(m.id) for m in msgs}
        assert len(ids) == 1, [m.body for m in msgs]
        if req_id is not None and msgs[-1].id is not None:
            assert msgs[-1].id == req_id, (req_id, msgs[-1].body)
        if expect_code is not None:
            assert msgs[-1].type == P.ERROR and msgs[-1].body["code"] == expect_code, msgs[-1].body
    stray = wire.barrier()
    assert not stray, f"messages after the final reply (or for nothing sent): {[m.body for m in stray]}"
    alive(wire.srv)
    return msgs


def frames_repr(frames) -> str:
    return repr([bytes(f[:40]) + (b"..." if len(f) > 40 else b"") for f in frames])[:600]


# ---------------------------------------------------------------- value strategies
INT64 = st.integers(P.INT_MIN, P.INT_MAX)
BIG_UINT = st.integers(P.INT_MAX + 1, 2**64 - 1).map(lambda n: Raw(b"\xcf" + n.to_bytes(8, "big"), f"uint64 {n}"))
BAD_UTF8 = st.binary(max_size=6).map(lambda b: Raw(bytes([0xa0 | (len(b) + 1)]) + b + b"\xff", "bad utf8"))
EXT = st.sampled_from([
    Raw(b"\xd4\x01\x00", "fixext1"),
    Raw(b"\xd6\xff\x00\x00\x00\x01", "timestamp32"),
    Raw(b"\xc7\x03\x05abc", "ext8"),
])
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True).map(
    lambda x: Raw(b"\xca" + struct.pack(">f", x), f"float32 {x}"))
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 5e-324, 1.7976931348623157e308])
DEEP = st.integers(12, 80).flatmap(lambda n: st.sampled_from([
    Raw(b"\x91" * n + b"\xc0", f"array nesting {n}"),
    Raw(b"\x81\xa1k" * n + b"\xc0", f"map nesting {n}"),
]))
OVER_LIMITS = st.sampled_from([
    Raw(b"\xda" + struct.pack(">H", P.MAX_STR_BYTES + 1) + b"a" * (P.MAX_STR_BYTES + 1), "str 16385"),
    Raw(b"\xc5" + struct.pack(">H", P.MAX_STR_BYTES + 1) + b"\x00" * (P.MAX_STR_BYTES + 1), "bin 16385"),
    Raw(b"\xdc" + struct.pack(">H", P.MAX_ARRAY_LEN + 1) + b"\xc0" * (P.MAX_ARRAY_LEN + 1), "array 4097"),
    Raw(pack({f"k{i}": 0 for i in range(P.MAX_MAP_LEN + 1)}), "map 257"),
    Raw(b"\xdd\xff\xff\xff\xff", "array claiming 2^32-1 items"),
    Raw(b"\xdb\x7f\xff\xff\xff", "str claiming 2 GiB"),
    Raw(b"\xdf\xff\xff\xff\xff", "map claiming 2^32-1 entries"),
    Raw(pack({"k": "x" * P.MAX_STR_BYTES}), "str exactly at the limit"),
])
BROKEN = st.sampled_from([
    Raw(b"\xc1", "reserved byte"),
    Raw(b"\x92\x01", "truncated array"),
    Raw(b"\xa5ab", "truncated str"),
    Raw(b"\xcb\x00\x00", "truncated float64"),
    Raw(b"\x81\x01\x02", "int map key"),
    Raw(b"\x81\xc4\x01k\x02", "bin map key"),
    Raw(b"\x81\xc0\x02", "nil map key"),
])
RAW = st.one_of(BIG_UINT, BAD_UTF8, EXT, FLOAT32, DEEP, OVER_LIMITS, BROKEN)
SCALARS = st.one_of(st.none(), st.booleans(), INT64, st.floats(), NONFINITE, st.text(max_size=24),
                    st.binary(max_size=24))
VALUES = st.recursive(
    st.one_of(SCALARS, SCALARS, RAW),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4),
                            st.lists(st.tuples(st.one_of(st.text(max_size=4), INT64, RAW), inner),
                                     max_size=3).map(Pairs)),
    max_leaves=8)
BAD_IDS = st.one_of(st.sampled_from([None, -1, P.INT_MIN, "", "x" * (P.MAX_ID_CHARS + 1), 1.5, float("nan"), True,
                                     False, [1], {"id": 1}, b"bin"]),
                    BIG_UINT, BAD_UTF8, st.text(min_size=P.MAX_ID_CHARS + 1, max_size=80))

_unique = itertools.count(1)


def unique_id(draw):
    n = next(_unique)
    return draw(st.sampled_from([n, f"fz{n}", f"{n}-" + "x" * 50, P.INT_MAX - n]))


# ---------------------------------------------------------------- request strategies
def valid_params(draw) -> dict:
    params = {"duration": draw(st.sampled_from(TINY + (5e-324, 1e-9)))}
    extra = draw(st.dictionaries(st.sampled_from(["temperature", "top_k", "top_p", "cfg_coef", "seed"]),
                                 st.none(), max_size=5))
    for key in extra:
        if key == "temperature":
            params[key] = draw(st.one_of(st.floats(0.001, 100), st.integers(1, 100)))
        elif key == "top_k":
            params[key] = draw(st.one_of(st.integers(0, 300), st.just(P.INT_MAX)))
        elif key == "top_p":
            params[key] = draw(st.one_of(st.floats(0, 1), st.sampled_from([0, 1])))
        elif key == "cfg_coef":
            params[key] = draw(st.one_of(st.floats(1, 100), st.just(1)))
        else:
            params[key] = draw(st.integers(0, P.INT_MAX))
    return params


def base_body(draw, kind: str) -> dict:
    body = {"id": unique_id(draw)}
    opt = lambda key, strategy: body.__setitem__(key, draw(strategy)) if draw(st.booleans()) else None  # noqa: E731
    if kind == P.GET_TRACK:
        if draw(st.booleans()):
            body["context"] = draw(st.one_of(st.sampled_from(CONTEXTS), st.sampled_from(["nowhere", "x" * 64])))
            opt("variant", st.integers(0, 3))
            opt("fallback", st.booleans())
        else:
            body["prompt"] = draw(st.one_of(st.text(max_size=40), st.sampled_from(["calm lute", "   ", "a" * 2000])))
        body["params"] = valid_params(draw)
        opt("format", st.sampled_from(P.FORMATS))
        opt("sample_rate", st.sampled_from(P.SAMPLE_RATES))
        opt("stream", st.booleans())
        opt("cached_only", st.booleans())
        opt("regenerate", st.booleans())
        opt("priority", st.integers(-100, 100))
    elif kind == P.PREFETCH:
        body["contexts"] = draw(st.lists(st.sampled_from(CONTEXTS + ("nowhere",)), min_size=1, max_size=3))
        opt("variants", st.one_of(st.just("all"), st.integers(1, 3)))
        opt("priority", st.integers(-100, 100))
        opt("stream", st.booleans())
        opt("format", st.sampled_from(P.FORMATS))
        opt("sample_rate", st.sampled_from(P.SAMPLE_RATES))
    elif kind == P.CANCEL:
        body["target"] = draw(st.one_of(st.integers(0, 10**6), st.text(min_size=1, max_size=8)))
    elif kind == P.SUBSCRIBE:
        opt("events", st.lists(st.sampled_from(P.EVENTS + ("nope", "")), max_size=5))
    return body


FIELDS = {**REQUEST_FIELDS, P.GET_TRACK: REQUEST_FIELDS[P.GET_TRACK] + tuple(
    f"params.{k}" for k in ("duration", "temperature", "top_k", "top_p", "cfg_coef", "seed", "bogus"))}


# Plausible mistakes for a field: another JSON-ish type, an out-of-range number, a non-finite float.
NEARBY = st.one_of(st.none(), st.booleans(), INT64, st.integers(-300, 300), st.floats(), NONFINITE,
                   st.text(max_size=12), st.sampled_from(["all", "menu", "pcm_s16le", "ogg", "wav", "1", ""]),
                   st.lists(st.one_of(INT64, st.text(max_size=6)), max_size=3),
                   st.dictionaries(st.text(max_size=6), INT64, max_size=2), BIG_UINT, st.binary(max_size=4),
                   FLOAT32)


def mutate(draw, kind: str, body: dict) -> None:
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["nearby", "nearby", "nearby", "set", "delete", "unknown", "id"]))
        fields = FIELDS.get(kind, ())
        if not fields and op != "id":   # requests without fields: an unknown key, or a broken id
            op = draw(st.sampled_from(["unknown", "id"]))
        if op == "id":
            body["id"] = draw(BAD_IDS)
        elif op == "unknown":
            body[draw(st.text(max_size=10).filter(lambda k: k != "id"))] = draw(VALUES)
        else:
            name = draw(st.sampled_from(fields))
            if name.startswith("params."):
                params = body.get("params")
                if not isinstance(params, dict):
                    params = body["params"] = {}
                target, name = params, name.split(".", 1)[1]
            else:
                target = body
            if op == "delete":
                target.pop(name, None)
            else:
                target[name] = draw(NEARBY if op == "nearby" else VALUES)
    if kind == P.GET_TRACK:
        # Never ask for an expensive generation: a tiny valid duration, or cached_only.
        params = body.get("params")
        duration = params.get("duration") if isinstance(params, dict) else None
        tiny = (isinstance(duration, (int, float)) and not isinstance(duration, bool)
                and 0 < duration <= max(TINY))
        if not tiny:
            body["cached_only"] = True
            body.pop("regenerate", None)


# The requests with fields, more often.
KINDS = P.REQUEST_TYPES + (P.GET_TRACK,) * 4 + (P.PREFETCH, P.CANCEL, P.SUBSCRIBE)


@st.composite
def requests(draw, kinds=KINDS):
    kind = draw(st.sampled_from(kinds))
    body = base_body(draw, kind)
    mutate(draw, kind, body)
    if draw(st.sampled_from(["map"] * 15 + ["other"])) == "other":   # not a map at the top
        body = draw(st.one_of(SCALARS, st.lists(SCALARS, max_size=3), RAW))
    # a frame over MAXMSGSIZE makes ZeroMQ drop the connection (no reply): tested on its own below
    assume(len(pack(body)) <= P.MAX_REQUEST_BYTES - 64)
    return kind, body


# ---------------------------------------------------------------- the fuzz tests
@fuzz_settings(0.40)
@given(req=requests())
def test_mutated_requests_get_exactly_one_final_reply(wire, req):
    kind, body = req
    data = pack(body)
    req_id = P.request_id(body) if isinstance(body, dict) else None
    msgs = exchange(wire, [b"", P.HEADER, kind.encode(), data], req_id=req_id)
    last = msgs[-1]
    if isinstance(body, dict) and req_id is not None and last.type != P.ERROR:
        assert last.id == req_id
    if not isinstance(body, dict):
        assert last.type == P.ERROR and last.body["code"] in (P.BAD_REQUEST, P.TOO_LARGE), last.body


HEADERS = st.one_of(st.just(P.HEADER), st.just(P.HEADER),
                    st.integers(0, 255).filter(lambda v: v != P.VERSION).map(lambda v: P.MAGIC + bytes([v])),
                    st.sampled_from([b"TRB", b"TRB\x01\x00", b"trb\x01", b"\x01BRT", b"", b"TRB\x02extra"]),
                    st.binary(max_size=8))
TYPES = st.one_of(st.sampled_from(P.REQUEST_TYPES), st.sampled_from(P.REQUEST_TYPES),
                  st.sampled_from([b"get_trak", b"event", b"pong", b"track", b"a" * 32, b"a" * 33, b"Ping",
                                   b"ping\x00", "p\u00efng".encode(), b"", b"9ping", b"_ping", b"ping ", b"\xff",
                                   b"x" * 5000]),
                  st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=40),
                  st.binary(max_size=40))


@st.composite
def framed(draw):
    header = draw(HEADERS)
    kind = draw(TYPES)
    kind_b = kind.encode() if isinstance(kind, str) else kind
    body = draw(st.one_of(
        st.builds(lambda: {"id": next(_unique)}).map(pack),
        requests().map(lambda r: pack(r[1])),
        VALUES.map(pack).filter(lambda b: len(b) <= P.MAX_REQUEST_BYTES),
        st.binary(max_size=64),
        st.just(b""),
        # bodies right around the 64 KiB request limit
        st.integers(P.MAX_REQUEST_BYTES - 100, P.MAX_REQUEST_BYTES).map(
            lambda n: pack({"id": 1, "p": Raw(b"\xc5" + struct.pack(">H", n - 16) + b"\x00" * (n - 16), "bin")})),
    ))
    frames = [header, kind_b, body]
    frames += draw(st.lists(st.one_of(st.binary(max_size=64), st.just(b""),
                                      st.integers(1, 65536).map(lambda n: b"\x00" * n)), max_size=3))
    layout = draw(st.sampled_from(["ok", "ok", "ok", "missing", "double", "prefix"]))
    if layout == "ok":
        frames = [b""] + frames
    elif layout == "double":
        frames = [b"", b""] + frames
    elif layout == "prefix":
        frames = draw(st.lists(st.binary(min_size=1, max_size=16), min_size=1, max_size=3)) + [b""] + frames
    return frames


@fuzz_settings(0.25)
@given(frames=framed())
def test_malformed_framing_gets_exactly_one_error(wire, frames):
    expect = None
    rest = frames[[i for i, f in enumerate(frames) if not f][0] + 1:] if reaches_decode(frames) else None
    if rest and rest[0][:3] == P.MAGIC and len(rest[0]) >= 4 and rest[0][3] != P.VERSION:
        expect = P.UNSUPPORTED_VERSION
    elif rest and rest[0] == P.HEADER and not 3 <= len(rest) <= 4:
        expect = P.BAD_REQUEST
    msgs = exchange(wire, frames, expect_code=expect)
    if rest is not None and (not rest or rest[0] != P.HEADER):
        assert msgs[-1].type == P.ERROR and msgs[-1].id is None, msgs[-1].body


@fuzz_settings(0.15)
@given(frames=st.lists(st.one_of(st.binary(max_size=48), st.just(P.HEADER), st.just(b""),
                                 st.sampled_from([t.encode() for t in P.REQUEST_TYPES]),
                                 st.binary(min_size=1000, max_size=20000)), min_size=1, max_size=7))
def test_random_frames_never_crash_and_get_at_most_one_reply(wire, frames):
    exchange(wire, frames)


@st.composite
def bursts(draw):
    reqs = draw(st.lists(requests(), min_size=2, max_size=6))
    ids = []
    for kind, body in reqs:
        if isinstance(body, dict) and P.request_id(body) in ids:
            body["id"] = f"fz{next(_unique)}"   # distinct ids (duplicates: see the test further down)
        if kind == P.CANCEL and isinstance(body, dict) and ids and draw(st.booleans()):
            body["target"] = draw(st.sampled_from(ids))   # cancel something of this very burst
        if isinstance(body, dict) and P.request_id(body) is not None:
            ids.append(body["id"])
    return reqs


@fuzz_settings(0.20)
@given(reqs=bursts())
def test_pipelined_bursts_get_one_final_each(wire, reqs):
    """Several requests (distinct ids) sent back to back, replies interleaving: one final per message."""
    for kind, body in reqs:
        wire.send([b"", P.HEADER, kind.encode(), pack(body)])
    by_id: dict = {}
    anonymous = []
    finals = 0
    while finals < len(reqs):
        m = wire.recv(REPLY_TIMEOUT)
        assert m is not None, f"only {finals} of {len(reqs)} final replies arrived"
        if is_event(m):
            continue
        if m.id is None:
            anonymous.append(m)
        else:
            by_id.setdefault(m.id, []).append(m)
        finals += m.final
    for msgs in by_id.values():
        check_messages(msgs)
        TALLY[msgs[-1].body.get("code", msgs[-1].type)] += 1
    for m in anonymous:
        check_messages([m])
        TALLY[m.body.get("code", m.type)] += 1
    sent_ids = [P.request_id(b) for _, b in reqs if isinstance(b, dict)]
    assert set(by_id) <= {i for i in sent_ids if i is not None}, (list(by_id), sent_ids)
    stray = wire.barrier()
    assert not stray, f"messages after the final reply: {[m.body for m in stray]}"
    alive(wire.srv)


# ---------------------------------------------------------------- targeted cases
def test_over_maxmsgsize_drops_only_that_connection(server):
    """A frame over MAXMSGSIZE: ZeroMQ drops the connection without a reply; the server lives on."""
    victim = Wire(server)
    assert victim.barrier(10) == []
    for size in (P.MAX_REQUEST_BYTES + 1, 1 << 20, 8 << 20):
        victim.send([b"", P.HEADER, b"ping", b"\x81\xa2id\x01" + b"\x00" * size])
        time.sleep(0.2)
        alive(server)
        fresh = Wire(server)
        assert fresh.barrier(10) == [], "a new connection must work"
        fresh.close()
    # one frame of exactly MAXMSGSIZE bytes is delivered: a too_large error, same connection
    w = Wire(server)
    body = b"\x81\xa2id\x05" + b"\x00" * (P.MAX_REQUEST_BYTES - 5)
    msgs = exchange(w, [b"", P.HEADER, b"ping", body], expect_code=P.TOO_LARGE)
    assert msgs[-1].id is None
    # frames of <= 64 KiB each but far more in total: also too_large, not a dropped connection
    exchange(w, [b"", P.HEADER, b"get_track", b"\x80" + b"\x00" * 60000, b"\x00" * 60000], expect_code=P.TOO_LARGE)
    w.close()
    victim.close()


def test_nan_inf_and_out_of_range_params_are_refused(wire):
    cases = [({"duration": float("nan")}, "params.duration"), ({"duration": float("inf")}, "params.duration"),
             ({"temperature": float("nan")}, "params.temperature"), ({"top_p": float("-inf")}, "params.top_p"),
             ({"cfg_coef": float("nan")}, "params.cfg_coef"), ({"duration": -0.0}, "params.duration"),
             ({"duration": 1e9}, "params.duration")]
    for params, field in cases:
        body = {"id": next(_unique), "prompt": "nan test", "params": params}
        msgs = exchange(wire, [b"", P.HEADER, b"get_track", pack(body)], req_id=body["id"])
        assert msgs[-1].body["code"] == "invalid_param" and msgs[-1].body["field"] == field, msgs[-1].body
    body = {"id": next(_unique), "prompt": "big seed", "params": {"duration": 0.05, "seed": Raw(
        b"\xcf" + (2**63).to_bytes(8, "big"), "2^63")}}
    msgs = exchange(wire, [b"", P.HEADER, b"get_track", pack(body)])
    assert msgs[-1].body["code"] == "bad_request", msgs[-1].body


def test_duplicate_id_in_one_burst_gets_one_final_each(server):
    """Two requests with the same id sent back to back (a client bug). Section 4: the duplicate gets
    bad_request and the first continues, so two messages must each get one final reply. The server
    instead replaces the first request's Reply (final already queued, not yet sent) with the second's."""
    w = Wire(server)
    n = 40
    for i in range(n):
        for _ in range(2):
            w.send([b"", P.HEADER, b"ping", pack({"id": 9000 + i})])
    finals = []
    while True:
        m = w.recv(1.5)
        if m is None:
            break
        if not is_event(m) and m.final:
            finals.append((m.id, m.type, m.body.get("code")))
    w.close()
    alive(server)
    assert len(finals) == 2 * n, (f"{2 * n} requests, {len(finals)} final replies "
                                  f"(pongs {sum(t == P.PONG for _, t, _ in finals)}, "
                                  f"errors {sum(t == P.ERROR for _, t, _ in finals)})")


def test_extreme_valid_params_make_tracks_and_overflowing_ones_are_refused(server):
    """Sampling settings at the ends of their ranges make tracks; past them (cfg_coef 1e300 overflowed float32
    in the engine, and such request-caused failures must never count towards "the engine is dead") they are
    refused with invalid_param. The server goes on serving."""
    w = Wire(server)
    extremes = [{"cfg_coef": 100, "temperature": 0.001}, {"cfg_coef": 1, "temperature": 100},
                {"cfg_coef": 1e300}, {"temperature": 1e-300}]
    for i, params in enumerate(extremes):
        body = {"id": f"cfg{i}", "prompt": "cfg overflow", "params": {"duration": 1.0, "seed": i, **params}}
        w.send([b"", P.HEADER, b"get_track", pack(body)])
        while (m := w.recv(REPLY_TIMEOUT)) is not None and (is_event(m) or not m.final):
            pass
        alive(server)
        assert m is not None, params
        if i < 2:
            assert m.type == P.TRACK, (params, m.body)
        else:
            assert m.type == P.ERROR and m.body["code"] == P.INVALID_PARAM, (params, m.body)
    body = {"id": "after", "prompt": "cfg overflow", "params": {"duration": 1.0, "seed": 99}}
    msgs = exchange(w, [b"", P.HEADER, b"get_track", pack(body)], req_id="after")
    assert msgs[-1].type == P.TRACK, msgs[-1].body
    w.close()


def test_zz_non_streamed_track_over_max_track_bytes_is_an_error_not_a_crash(server):
    """A cached 300 s track asked for as one non-streamed pcm_f32le message is 38.4 MB, over max_track_bytes
    (32 MiB). The server must refuse it (too_large) and keep serving. Before commit 5bcb528 this request
    killed the server: the encode error escaped Server._flush (cached replay) and ended the I/O loop."""
    from troubadour.cache import TrackCache, track_key
    from troubadour.params import GenParams

    w = Wire(server)
    info = exchange(w, [b"", P.HEADER, b"info", pack({"id": "info"})])[-1].body
    model = info["model"]
    duration = float(info["limits"]["max_duration"])
    frames = int(duration * model["sample_rate"])
    assert frames * model["channels"] * 4 > P.MAX_TRACK_BYTES, "needs max_duration long enough to overflow"
    prompt = "fuzz: one very long cached track"
    key = track_key(model["identity"], prompt, GenParams(duration=duration))
    with TrackCache(server.cache) as cache:   # put it there instead of spending a minute generating it
        cache.put(key, np.zeros((model["channels"], frames), np.float32), model["sample_rate"], {"prompt": prompt})
    base = {"prompt": prompt, "params": {"duration": duration}, "cached_only": True}
    # s16le of the same track fits (19.2 MB): proves the entry is found under the server's key
    ok = exchange(w, [b"", P.HEADER, b"get_track", pack({"id": "s16", **base})], req_id="s16")
    assert ok[-1].type == P.TRACK and ok[-1].body["cached"] and len(ok[-1].payload) == frames * 2, ok[-1].body
    msgs = exchange(w, [b"", P.HEADER, b"get_track", pack({"id": "f32", "format": "pcm_f32le", **base})],
                    req_id="f32")
    assert msgs[-1].type == P.ERROR and msgs[-1].body["code"] == P.TOO_LARGE, msgs[-1].body
    # streamed, the same track is fine (chunks of at most max_chunk_bytes)
    exchange(w, [b"", P.HEADER, b"ping", pack({"id": "still here"})], req_id="still here")
    w.close()
