"""Soak test: many clients, a mixed workload, a few minutes; prints latencies, errors, RSS growth, lost requests.

    python bench/soak.py                      # starts a server with a tiny random-weight model, 1 minute
    python bench/soak.py --minutes 10 --clients 64
    python bench/soak.py --server tcp://127.0.0.1:5555 [--server-pid PID]   # an already running server

Every client is a thread with its own DEALER socket doing, one after the other: cached get_track (streamed and
not), an occasional cold get_track with a small duration, prefetch, ping, info, health, list_profiles,
subscribe/unsubscribe, a cold stream cancelled after its first message, and invalid requests. A request is
"lost" when no final message arrives within --timeout seconds (the protocol promises exactly one); lost must be 0.
Errors a request is expected to get (busy under load, not_found for a cached_only miss, the codes of the invalid
requests, cancelled for a cancelled stream) are counted apart from unexpected ones.

The last line printed is one JSON object with all figures. Exit status 1 when requests were lost, unexpected
errors occurred or the server died.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving import _servers_module  # noqa: E402
from troubadour import protocol as P  # noqa: E402

# The test suite's game (tests/servers.py): it has every context cycled below.
PROFILES = _servers_module().PROFILES
CONTEXTS = ("menu", "explore", "battle", "victory")

# op -> weight
MIX = {"get_cached": 20, "get_cached_stream": 20, "get_cold": 4, "prefetch": 3, "ping": 15, "info": 5,
       "health": 5, "list_profiles": 4, "subscribe": 4, "cancel_stream": 5, "invalid": 15}
# codes an op may legitimately end with
EXPECTED = {"get_cold": {"busy"}, "prefetch": {"busy"}, "cancel_stream": {"cancelled", "busy"},
            "invalid": {"bad_request", "unknown_type", "unsupported_version", "too_large", "invalid_param",
                        "empty_prompt", "not_found", "unknown_context"}}


# ------------------------------------------------------------------ server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, model: str) -> tuple[subprocess.Popen, str]:
    profiles = workdir / "profiles.toml"
    profiles.write_text(PROFILES)
    address = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "troubadour.cli", "serve", "--model", model, "--cache", str(workdir / "cache"),
           "--bind", address, "--profiles", str(profiles), "--no-watch"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    log = open(workdir / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env,
                            cwd=workdir)
    deadline = time.time() + 300
    while " ready on " not in (workdir / "server.log").read_text():
        if proc.poll() is not None or time.time() > deadline:
            raise SystemExit("server did not start:\n" + (workdir / "server.log").read_text())
        time.sleep(0.2)
    return proc, address


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ------------------------------------------------------------------ one client
class Client(threading.Thread):
    def __init__(self, n: int, address: str, deadline: float, stats, args, cached: list, stop: threading.Event):
        super().__init__(name=f"soak-{n}", daemon=True)
        self.n, self.address, self.deadline, self.stats, self.args = n, address, deadline, stats, args
        self.cached, self.stop_event = cached, stop
        self.rng = random.Random(args.seed * 1000 + n)
        self.ids = itertools.count(1)
        self.pending: dict = {}    # id -> messages received (for ids we wait on)
        self.events = 0

    # -- wire
    def send(self, msg_type: str, **body) -> int:
        rid = next(self.ids)
        self.sock.send_multipart([b""] + P.encode(msg_type, {"id": rid, **body}))
        return rid

    def send_raw(self, frames, rid) -> int:
        self.sock.send_multipart([b""] + frames)
        return rid

    def recv_one(self, timeout: float):
        if not self.sock.poll(int(timeout * 1000)):
            return None
        frames = self.sock.recv_multipart()
        return P.decode(frames[1:], reply=True)

    def wait_final(self, rid, timeout: float, on_first=None):
        """Messages of `rid` up to its final one, or None when lost. Other ids' messages are kept."""
        msgs = self.pending.pop(rid, [])
        if msgs and on_first:
            on_first(msgs[0])
            on_first = None
        if msgs and msgs[-1].final:
            return msgs
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            m = self.recv_one(min(left, 1.0))
            if m is None:
                continue
            if m.type == P.EVENT and m.id is None:
                self.events += 1
                continue
            if m.id == rid:
                msgs.append(m)
                if on_first and len(msgs) == 1:
                    on_first(m)
                if m.final:
                    return msgs
            else:
                self.pending.setdefault(m.id, []).append(m)

    def request(self, op: str, rid, t0: float, on_first=None):
        msgs = self.wait_final(rid, self.args.timeout, on_first)
        self.record(op, t0, msgs)
        return msgs

    def record(self, op: str, t0: float, msgs) -> None:
        dt = time.perf_counter() - t0
        with self.stats["lock"]:
            self.stats["requests"][op] += 1
            if msgs is None:
                self.stats["lost"][op] += 1
                return
            self.stats["latency"][op].append(dt)
            last = msgs[-1]
            if last.type == P.ERROR:
                code = last.body.get("code")
                self.stats["errors"][code] += 1
                if code not in EXPECTED.get(op, ()):
                    self.stats["unexpected"][f"{op}:{code}"] += 1
                    if len(self.stats["examples"]) < 20:
                        self.stats["examples"].append({"op": op, "error": last.body})

    # -- ops
    def run(self):
        ctx = zmq.Context.instance()
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.address)
        ops, weights = zip(*MIX.items())
        try:
            while time.time() < self.deadline and not self.stop_event.is_set():
                op = self.rng.choices(ops, weights)[0]
                getattr(self, "op_" + op)(op)
                time.sleep(self.rng.uniform(0, self.args.think_ms / 1000))
        finally:
            self.sock.close(0)

    def op_get_cached(self, op, stream=False):
        req = dict(self.rng.choice(self.cached))
        req.update(format=self.rng.choice(P.FORMATS), sample_rate=self.rng.choice(P.SAMPLE_RATES))
        t0 = time.perf_counter()
        self.request(op, self.send(P.GET_TRACK, stream=stream, **req), t0)

    def op_get_cached_stream(self, op):
        self.op_get_cached(op, stream=True)

    def op_get_cold(self, op):
        req = dict(prompt=f"soak cold {self.n}", params={"duration": self.rng.choice([0.2, 0.5, 1.0]),
                                                          "seed": self.rng.randrange(1 << 40)})
        t0 = time.perf_counter()
        self.request(op, self.send(P.GET_TRACK, stream=self.rng.random() < 0.5, **req), t0)

    def op_prefetch(self, op):
        contexts = self.rng.sample(CONTEXTS, self.rng.randint(1, 3))
        t0 = time.perf_counter()
        self.request(op, self.send(P.PREFETCH, contexts=contexts, stream=self.rng.random() < 0.5), t0)

    def _simple(self, op, msg_type):
        t0 = time.perf_counter()
        self.request(op, self.send(msg_type), t0)

    def op_ping(self, op):
        self._simple(op, P.PING)

    def op_info(self, op):
        self._simple(op, P.INFO)

    def op_health(self, op):
        self._simple(op, P.HEALTH)

    def op_list_profiles(self, op):
        self._simple(op, P.LIST_PROFILES)

    def op_subscribe(self, op):
        t0 = time.perf_counter()
        self.request(op, self.send(P.SUBSCRIBE, events=["track_ready", "progress"]), t0)
        end = time.monotonic() + self.rng.uniform(0.1, 0.5)
        while time.monotonic() < end:   # take some events
            m = self.recv_one(0.05)
            if m is not None and m.type == P.EVENT:
                self.events += 1
            elif m is not None:
                self.pending.setdefault(m.id, []).append(m)
        t0 = time.perf_counter()
        self.request("unsubscribe", self.send(P.UNSUBSCRIBE), t0)

    def op_cancel_stream(self, op):
        req = dict(prompt=f"soak cancel {self.n}", params={"duration": 3.0, "seed": self.rng.randrange(1 << 40)})
        t0 = time.perf_counter()
        target = self.send(P.GET_TRACK, stream=True, **req)
        cancel = {}

        def on_first(m):
            if not m.final:
                cancel["t0"] = time.perf_counter()
                cancel["id"] = self.send(P.CANCEL, target=target)

        self.request(op, target, t0, on_first)
        if "id" in cancel:
            msgs = self.request("cancel", cancel["id"], cancel["t0"])
            if msgs and msgs[-1].type != P.CANCELLED_REPLY:
                with self.stats["lock"]:
                    self.stats["unexpected"][f"cancel:{msgs[-1].type}"] += 1

    def op_invalid(self, op):
        rng = self.rng
        rid = next(self.ids)
        kind = rng.randrange(8)
        if kind == 0:
            frames = P.encode(P.GET_TRACK, {"id": rid, "context": "menu", "tempo": 3})        # unknown field
        elif kind == 1:
            frames = [P.HEADER, b"get_track", msgpack.packb({"id": rid, "prompt": 5})]      # wrong type
        elif kind == 2:
            frames = [P.HEADER, b"get_trak", msgpack.packb({"id": rid})]                     # unknown type
        elif kind == 3:
            frames = [b"TRB\x07", b"info", msgpack.packb({"id": rid})]                      # wrong version
            rid = None   # the body of an unsupported version is not read: the error carries id nil
        elif kind == 4:
            frames = P.encode(P.GET_TRACK, {"id": rid, "prompt": f"never made {rng.random()}",
                                            "cached_only": True})                          # not_found
        elif kind == 5:
            frames = P.encode(P.GET_TRACK, {"id": rid, "context": "menu", "variant": 7})     # invalid_param
        elif kind == 6:
            frames = P.encode(P.GET_TRACK, {"id": rid, "prompt": "   "})                     # empty_prompt
        else:
            frames = [P.HEADER, b"info", b"\xc1garbage"]                                   # not msgpack
            rid = None
        t0 = time.perf_counter()
        self.sock.send_multipart([b""] + frames)
        self.request(op, rid, t0)


# ------------------------------------------------------------------ main
def warm_up(address: str, rng: random.Random) -> list:
    """Cache some tracks (profiles and prompts) for the cached part of the mix; returns their requests."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(address)
    reqs = [dict(context=c) for c in CONTEXTS] + [dict(context="explore", variant=1)]
    reqs += [dict(prompt=f"soak cached {i}", params={"duration": float(d), "seed": i})
             for i, d in enumerate([1, 2, 3, 1, 2, 4, 1, 2])]
    for i, req in enumerate(reqs):
        s.send_multipart([b""] + P.encode(P.GET_TRACK, {"id": i, **req}))
    done = 0
    deadline = time.time() + 600
    while done < len(reqs):
        if time.time() > deadline:
            raise SystemExit("warm-up did not finish")
        if not s.poll(1000):
            continue
        m = P.decode(s.recv_multipart()[1:], reply=True)
        if m.final:
            if m.type == P.ERROR:
                raise SystemExit(f"warm-up failed: {m.body}")
            done += 1
    s.close(0)
    return [{**r, "cached_only": True} for r in reqs]


def summarize(stats, args, rss_start, rss_end, rss_max, elapsed, alive, server_pid) -> dict:
    lat = {}
    for op, xs in sorted(stats["latency"].items()):
        xs = sorted(xs)
        q = lambda p: round(1000 * xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))], 2)  # noqa: E731
        lat[op] = {"n": len(xs), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(1000 * xs[-1], 2)}
    total = sum(stats["requests"].values())
    return {
        "minutes": args.minutes, "clients": args.clients, "elapsed_s": round(elapsed, 1),
        "requests": total, "requests_per_s": round(total / elapsed, 1) if elapsed else None,
        "requests_by_op": dict(sorted(stats["requests"].items())),
        "errors": dict(sorted(stats["errors"].items())),
        "unexpected_errors": dict(sorted(stats["unexpected"].items())),
        "lost": sum(stats["lost"].values()), "lost_by_op": dict(stats["lost"]),
        "latency": lat,
        "rss_mb": None if rss_start is None else {
            "start": round(rss_start, 1), "end": round(rss_end, 1) if rss_end else None,
            "max": round(rss_max, 1), "growth": round(rss_end - rss_start, 1) if rss_end else None},
        "server_pid": server_pid, "server_alive": alive,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--server", help="address of a running server (default: start one with a tiny model)")
    ap.add_argument("--server-pid", type=int, help="its pid, for RSS (with --server)")
    ap.add_argument("--model", help="checkpoint for the started server (default: build a tiny random one)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without a final reply = lost")
    ap.add_argument("--think-ms", type=float, default=20.0, help="max pause between one client's requests")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="troubadour-soak-")
    work = Path(tmp.name)
    proc = None
    if args.server:
        address, pid = args.server, args.server_pid
    else:
        model = args.model
        if model is None:
            from troubadour.testmodel import build_test_model
            model = str(build_test_model(work / "tiny"))
        print(f"starting a server with {model} ...", flush=True)
        proc, address = start_server(work, model)
        pid = proc.pid
    try:
        t_w = time.time()
        cached = warm_up(address, random.Random(args.seed))
        print(f"warm-up: {len(cached)} tracks cached in {time.time() - t_w:.1f}s; "
              f"{args.clients} clients for {args.minutes:g} min", flush=True)
        stats = {"lock": threading.Lock(), "requests": collections.Counter(), "errors": collections.Counter(),
                 "unexpected": collections.Counter(), "lost": collections.Counter(),
                 "latency": collections.defaultdict(list), "examples": []}
        time.sleep(0.5)
        rss_start = rss_mb(pid)
        rss_max = rss_start or 0.0
        stop = threading.Event()
        t0 = time.time()
        deadline = t0 + args.minutes * 60
        clients = [Client(i, address, deadline, stats, args, cached, stop) for i in range(args.clients)]
        for c in clients:
            c.start()
        next_report = t0 + 15
        while any(c.is_alive() for c in clients):
            time.sleep(0.5)
            r = rss_mb(pid)
            if r is not None:
                rss_max = max(rss_max, r)
            if proc is not None and proc.poll() is not None:
                stop.set()
            if time.time() >= next_report:
                with stats["lock"]:
                    n = sum(stats["requests"].values())
                print(f"  {time.time() - t0:5.0f}s  requests {n}  rss {r or 0:.0f} MB", flush=True)
                next_report += 15
            if time.time() > deadline + args.timeout + 30:
                break
        elapsed = time.time() - t0
        time.sleep(1.0)
        rss_end = rss_mb(pid)
        alive = proc.poll() is None if proc is not None else rss_end is not None or pid is None
        summary = summarize(stats, args, rss_start, rss_end, rss_max, elapsed, alive, pid)
        summary["events_received"] = sum(c.events for c in clients)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                print((work / "server.log").read_text()[-3000:], file=sys.stderr)
        tmp.cleanup()

    print()
    print(f"requests {summary['requests']} in {summary['elapsed_s']}s ({summary['requests_per_s']}/s), "
          f"lost {summary['lost']}, server alive {summary['server_alive']}")
    print("errors by code:", summary["errors"] or "none")
    print("unexpected errors:", summary["unexpected_errors"] or "none")
    for ex in stats["examples"][:5]:
        print("  e.g.", ex)
    print(f"{'op':<18} {'n':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for op, d in summary["latency"].items():
        print(f"{op:<18} {d['n']:>7} {d['p50_ms']:>9.2f} {d['p99_ms']:>9.2f} {d['max_ms']:>9.2f}")
    if summary["rss_mb"]:
        m = summary["rss_mb"]
        print(f"server RSS: start {m['start']} MB, end {m['end']} MB, max {m['max']} MB, growth {m['growth']} MB")
    print(json.dumps(summary, sort_keys=True))
    bad = summary["lost"] or summary["unexpected_errors"] or not summary["server_alive"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
