"""Cache hits over loopback: a real `troubadour serve` subprocess and the Python client, side by side with a
bare pyzmq ROUTER/DEALER pair (bench/rawzmq.py) that sends the same message sizes."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import zmq

from common import dist, med, now, pct, r
from troubadour.wire import recv_message

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPT = "an epic orchestral battle theme with drums brass and choir"


def _servers_module():
    """tests/servers.py (ServerProcess), loaded by path so no other `tests` package can shadow it."""
    spec = importlib.util.spec_from_file_location("troubadour_bench_servers", ROOT / "tests" / "servers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class RawServer:
    def __init__(self, track_file: Path):
        mod = _servers_module()
        self.address = f"tcp://127.0.0.1:{mod.free_port()}"
        self.proc = subprocess.Popen([sys.executable, str(HERE / "rawzmq.py"), self.address, str(track_file)],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("raw zmq server did not start")

    def stop(self):
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.linger = 0
        s.connect(self.address)
        s.send_multipart([b"", b"stop"])
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        s.close(0)


class RawClient:
    def __init__(self, address: str, sizes: list[int]):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(address)
        self.request = [b"", b"go", ",".join(map(str, sizes)).encode()]

    def fetch(self, sizes=None) -> dict:
        t0 = now()
        self.sock.send_multipart(self.request if sizes is None else
                                 [b"", b"go", ",".join(map(str, sizes)).encode()])
        arrivals, sizes = [], []
        while True:
            zmq.select([self.sock], [], [])
            frames = recv_message(self.sock)   # zero-copy and no pyzmq sugar, like the client: a strict baseline
            kind = frames[1].bytes
            if kind == b"chunk":
                sizes.append(len(frames[2].buffer))
                arrivals.append(now())
            elif kind == b"end":
                break
        return _record(t0, now(), arrivals, sum(sizes), sizes)

    def close(self):
        self.sock.close(0)


class BareClient:
    """Our server fetched by the least a client can do: the request encoded, each reply received and left
    unread (no decoding, no hash, no bookkeeping). Its ratio to the raw pair is the
    server's own cost; the gap between it and the Python client is the client's (bench/README.md)."""

    def __init__(self, address: str, request: dict):
        from troubadour import protocol as P

        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.connect(address)
        self.ids = itertools.count(10 ** 9)
        self.encode = lambda rid: [b"", *P.encode(P.GET_TRACK, {**request, "stream": True, "id": rid})]

    def fetch(self) -> dict:
        from troubadour.wire import send_message

        t0 = now()
        send_message(self.sock, self.encode(next(self.ids)))
        arrivals, sizes = [], []
        while True:
            zmq.select([self.sock], [], [])
            got = recv_message(self.sock)
            kind = got[2].bytes
            if kind == b"chunk":
                sizes.append(len(got[4].buffer))
                arrivals.append(now())
            elif kind in (b"end", b"error"):
                break
        return _record(t0, now(), arrivals, sum(sizes), sizes)

    def close(self):
        self.sock.close(0)


def pair_order(i: int, sides=("ours", "raw")) -> tuple:
    """Interleaved so load changes hit every side alike, each side first as often as the others: whichever
    fetch comes second in a pair ran measurably faster here (ratio 0.73-0.76 with ours always first, 0.85-0.87
    with raw always first, same code and process). Two sides go ABBA; three cycle through all six orders."""
    orders = list(itertools.permutations(sides))
    return orders[i % len(orders)]


def fetch_pairs(client, rawc, request: dict, n: int, faults: dict, bare=None) -> tuple:
    """n interleaved pairs (warmed up first): our fetches and the raw pair's, adding each side's page faults
    to `faults`; with `bare` (a BareClient on our server) triples, and its fetches come back third."""
    fetch = {"ours": lambda: fetch_server(client, request), "raw": rawc.fetch}
    if bare is not None:
        fetch["bare"] = bare.fetch
    for _ in range(3):
        for f in fetch.values():
            f()
    out: dict = {side: [] for side in fetch}
    for i in range(n):
        for side in pair_order(i, tuple(fetch)):
            f0 = _minor_faults()
            out[side].append(fetch[side]())
            faults[side] = faults.get(side, 0) + _minor_faults() - f0
    return tuple(out.values())


def _minor_faults() -> int:
    """This process's minor page faults so far: received messages in freshly mapped memory fault in page by
    page, which is what makes the raw pair's MB/s move between runs (bench/README.md)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _record(t0, t1, arrivals, nbytes, sizes=None) -> dict:
    gaps = [b - a for a, b in zip([t0] + arrivals[:-1], arrivals)][1:] or [0.0]
    rec = {"seconds": t1 - t0, "bytes": nbytes, "first_chunk": arrivals[0] - t0 if arrivals else float("nan"),
           "max_gap": max(gaps), "chunks": len(arrivals)}
    if sizes is not None:
        rec["trace"] = list(zip(arrivals, sizes))   # (arrival time, bytes) per chunk, for windowed shares
    return rec


def fetch_server(client, request: dict) -> dict:
    from troubadour.client import Chunk

    t0 = now()
    arrivals, sizes, cached = [], [], None
    with client.stream_track(**request) as ts:
        for item in ts:
            if isinstance(item, Chunk):
                sizes.append(len(item.data))
                arrivals.append(now())
            else:
                cached = item.get("cached")
    rec = _record(t0, now(), arrivals, sum(sizes), sizes)
    rec["cached"] = cached
    return rec


def _concurrent(n: int, seconds: float, make, fetch, warm) -> dict:
    """n threads, each with its own connection, start together and fetch back to back for `seconds`.

    Shares are measured over a window in which every client is busy (from a quarter of the run to its end):
    with one fetch each, whichever request happened to reach the server first finished alone at full speed,
    so min / max of whole-fetch rates measured arrival order (0.09-0.89 for ours, 0.15-0.86 raw, same code)
    rather than how the server splits its sending between streams."""
    barrier = threading.Barrier(n + 1)
    out: list = [None] * n
    errors: list = []
    stop = [float("inf")]

    def worker(i):
        conn = make()
        try:
            warm(conn)   # connected and answered once, so the timed part is not the TCP handshake
            barrier.wait()
            recs = []
            while now() < stop[0]:
                recs.append(fetch(conn))
            out[i] = recs
        except Exception as e:  # reported, not fatal to the bench
            errors.append(repr(e))
            barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = now()
    stop[0] = t0 + seconds
    for t in threads:
        t.join()
    wall = now() - t0
    done = [recs for recs in out if recs]
    w0, w1 = t0 + seconds / 4, stop[0]
    in_window = [sum(b for recs_x in recs for t, b in recs_x["trace"] if w0 <= t < w1) for recs in done]
    per_client = [x / (w1 - w0) / 1e6 for x in in_window]
    return {"clients": n, "fetches": [len(recs) for recs in done], "errors": errors, "wall_s": wall,
            "aggregate_mb_s": sum(per_client), "per_client_mb_s": per_client,
            "jain": _jain(per_client),
            "first_chunk_s": [x["first_chunk"] for recs in done for x in recs],
            "max_gap_s": [x["max_gap"] for recs in done for x in recs],
            "not_cached": sum(1 for recs in done for x in recs if x.get("cached") is False)}


def _jain(xs: list) -> float:
    """Jain's fairness index: 1 when every client gets the same share, 1/n when one gets everything."""
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else float("nan")


def fresh_process(server: str, raw: str, n: int, request: dict, sizes: list[int]) -> dict:
    """bench/fresh_client.py in a new interpreter (see there why)."""
    import json

    out = subprocess.run([sys.executable, str(HERE / "fresh_client.py"), server, raw, str(n), json.dumps(request),
                          ",".join(map(str, sizes))], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)])))
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cfg, table, results: dict) -> None:
    import models
    from troubadour.client import Client, Chunk

    table.section("1. cache hits: 30 s, 48 kHz stereo pcm_s16le over loopback (server+client vs raw pyzmq)")
    model = models.tiny(stereo=True)
    work = Path(tempfile.mkdtemp(prefix="troubadour-bench-serve-"))
    servers = _servers_module()
    os.environ["OMP_NUM_THREADS"] = str(cfg.threads)   # the server subprocess inherits it
    srv = servers.ServerProcess(model, work, args=["--no-watch", "--device", "cpu"])
    t = now()
    srv.start()
    raw = None
    request = dict(prompt=PROMPT, params={"duration": 30.0, "seed": 1}, sample_rate=48000, format="pcm_s16le")
    res: dict = {"server_start_s": r(now() - t)}
    try:
        client = Client(srv.address, timeout=120)
        t = now()
        fetch_server(client, request)                   # generates and caches it (a miss)
        res["prefill_generate_s"] = r(now() - t)
        sizes, track = [], bytearray()
        with client.stream_track(**request) as ts:
            for item in ts:
                if isinstance(item, Chunk):
                    sizes.append(len(item.data))
                    track += item.data
        (work / "track.raw").write_bytes(track)
        raw = RawServer(work / "track.raw")   # the baseline sends these same bytes
        res["track_bytes"] = sum(sizes)
        res["chunks"] = len(sizes)
        res["chunk_bytes"] = sorted(set(sizes))[-3:]
        srv_recs, raw_recs, rounds, bare_rounds = [], [], [], []
        faults = {"ours": 0, "raw": 0, "bare": 0}
        per_round = -(-cfg.cache_requests // cfg.cache_rounds)
        for k in range(cfg.cache_rounds):
            # Rounds: the ratio of one pair of server processes stayed put over a thousand fetches yet moved
            # 0.64-0.89 from one pair of processes to the next (where their threads and buffers landed), so
            # each round starts both servers afresh and the headline is the median round.
            if k:
                client.close()
                raw.stop()
                srv.stop()
                srv.start()
                client = Client(srv.address, timeout=120)
                raw = RawServer(work / "track.raw")
            rawc = RawClient(raw.address, sizes)   # (the warm-up's first hit after a restart reads the disk)
            bare = BareClient(srv.address, request)
            ours_k, raw_k, bare_k = fetch_pairs(client, rawc, request, per_round, faults, bare)
            rawc.close()
            bare.close()
            srv_recs += ours_k
            raw_recs += raw_k
            tp = lambda recs: med([x["bytes"] / x["seconds"] for x in recs])   # noqa: E731
            rounds.append(tp(ours_k) / tp(raw_k))
            bare_rounds.append(tp(bare_k) / tp(raw_k))
        srv_tp = [x["bytes"] / x["seconds"] / 1e6 for x in srv_recs]
        raw_tp = [x["bytes"] / x["seconds"] / 1e6 for x in raw_recs]
        ratio = med(rounds)
        fc = [x["first_chunk"] * 1e3 for x in srv_recs]
        res.update(requests=len(srv_recs), not_cached=sum(1 for x in srv_recs if not x["cached"]),
                   server_mb_s=dist(srv_tp, digits=1), raw_mb_s=dist(raw_tp, digits=1),
                   throughput_ratio=r(ratio), round_ratios=[r(x) for x in rounds],
                   server_only_ratio=r(med(bare_rounds)), server_only_round_ratios=[r(x) for x in bare_rounds],
                   throughput_ratio_pooled=r(med(srv_tp) / med(raw_tp)),
                   throughput_ratio_best=r(max(srv_tp) / max(raw_tp)),
                   first_chunk_ms=dist(fc, digits=2), raw_first_chunk_ms=dist([x["first_chunk"] * 1e3
                                                                               for x in raw_recs], digits=2),
                   whole_track_ms=dist([x["seconds"] * 1e3 for x in srv_recs], digits=1),
                   raw_whole_track_ms=dist([x["seconds"] * 1e3 for x in raw_recs], digits=1),
                   page_faults_per_fetch={k: round(v / len(srv_recs)) for k, v in faults.items()})
        table.row("track", f"{res['track_bytes'] / 1e6:.2f} MB in {res['chunks']} chunks")
        table.row("server+client throughput p50", r(med(srv_tp), 1), "MB/s")
        table.row("raw pyzmq throughput p50", r(med(raw_tp), 1), "MB/s")
        table.row("cache_hit_throughput_ratio", r(ratio), "", ">= 0.8", ratio >= 0.8,
                  f"median of {len(rounds)} rounds {res['round_ratios']}; pooled {res['throughput_ratio_pooled']}; "
                  f"page faults per fetch {res['page_faults_per_fetch']}")
        table.row("server only: a bare client on our server ÷ raw", res["server_only_ratio"], "",
                  note=f"median of rounds {res['server_only_round_ratios']}; no decoding, hash or bookkeeping")
        table.row("first chunk p50", r(pct(fc, 50), 2), "ms")
        table.row("cache_hit_first_chunk_p99_ms", r(pct(fc, 99), 2), "ms", "<= 5", pct(fc, 99) <= 5,
                  f"over {len(fc)} requests")
        res["fresh_process"] = fresh = fresh_process(srv.address, raw.address, cfg.cache_requests, request, sizes)
        table.row("same pair from a fresh process (no torch)", fresh.get("throughput_ratio"), "",
                  note=f"{fresh.get('server_mb_s')} vs {fresh.get('raw_mb_s')} MB/s; page faults per fetch "
                       f"{fresh.get('page_faults_per_fetch')}")

        conc = {}
        for n in cfg.concurrency:
            s = _concurrent(n, cfg.concurrent_seconds, lambda: Client(srv.address, timeout=120), lambda c: fetch_server(c, request),
                            lambda c: c.ping())
            w = _concurrent(n, cfg.concurrent_seconds, lambda: RawClient(raw.address, sizes), lambda c: c.fetch(),
                            lambda c: c.fetch([1]))
            pc, rpc = s["per_client_mb_s"], w["per_client_mb_s"]
            fair = min(pc) / max(pc) if pc else float("nan")
            raw_fair = min(rpc) / max(rpc) if rpc else float("nan")
            conc[str(n)] = {
                "seconds": cfg.concurrent_seconds, "fetches_per_client": dist(s["fetches"], digits=0),
                "raw_fetches_per_client": dist(w["fetches"], digits=0), "errors": s["errors"] + w["errors"], "not_cached": s["not_cached"],
                "aggregate_mb_s": r(s["aggregate_mb_s"], 1), "raw_aggregate_mb_s": r(w["aggregate_mb_s"], 1),
                "aggregate_ratio": r(s["aggregate_mb_s"] / w["aggregate_mb_s"]),
                "per_client_mb_s": dist(pc, digits=2), "fairness_min_over_max": r(fair), "raw_fairness_min_over_max": r(raw_fair),
                "jain_index": r(s["jain"]), "raw_jain_index": r(w["jain"]),
                "first_chunk_ms": dist(s["first_chunk_s"], 1e3, 2),
                "max_inter_chunk_gap_ms": r(max(s["max_gap_s"]) * 1e3, 1),
                "inter_chunk_gap_p99_ms": r(pct(s["max_gap_s"], 99) * 1e3, 1),
                "raw_max_inter_chunk_gap_ms": r(max(w["max_gap_s"]) * 1e3, 1)}
            c = conc[str(n)]
            table.row(f"{n:>2} clients: aggregate / raw", c["aggregate_ratio"], "",
                      note=f"{c['aggregate_mb_s']} vs {c['raw_aggregate_mb_s']} MB/s")
            table.row(f"{n:>2} clients: fairness min/max per-client", c["fairness_min_over_max"], "",
                      note=f"per-client p50 {c['per_client_mb_s'].get('p50')} MB/s; raw "
                           f"{c['raw_fairness_min_over_max']}; Jain {c['jain_index']} (raw {c['raw_jain_index']})")
            table.row(f"{n:>2} clients: first chunk p99", c["first_chunk_ms"].get("p99"), "ms")
            table.row(f"{n:>2} clients: max inter-chunk gap", c["max_inter_chunk_gap_ms"], "ms",
                      note=f"raw {c['raw_max_inter_chunk_gap_ms']} ms; errors {len(c['errors'])}")
        res["concurrency"] = conc
        client.close()
        res["breakdown"] = breakdown(srv.cache, table)
    finally:
        srv.stop()
        if raw is not None:
            raw.stop()
        shutil.rmtree(work, ignore_errors=True)
    results["cache_hits"] = res


def breakdown(cache_dir, table, reps: int = 5) -> dict:
    """The server's cache-hit path re-run piece by piece in this process on the server's cache (idle by
    now): where a hit's time goes, for the report. Medians of `reps`, milliseconds for the whole track."""
    import hashlib
    import zlib

    import xxhash

    from troubadour import protocol as P
    from troubadour.cache import BLOB_PREFIX, TrackCache
    from troubadour.delivery import Delivery, split_native
    from troubadour.trackblob import decode_track

    out = {}
    with TrackCache(cache_dir) as cache:
        key = cache.keys()[0]

        def timed(name, fn):
            ts = []
            for _ in range(reps):
                t = now()
                v = fn()
                ts.append(now() - t)
            out[name] = r(med(ts) * 1e3, 2)
            return v

        blob = timed("sqlite_read_blob_ms", lambda: bytes(cache.raw.get(BLOB_PREFIX + key, read=False)))
        timed("decode_track_incl_sha256_ms", lambda: decode_track(blob))
        track = timed("cache_get_total_ms", lambda: cache.get(key))
        out["blob_mb"] = r(len(blob) / 1e6, 2)
        audio = track.audio
        chunk = 16000   # engine.chunk_samples: 25 frames x 640

        def deliver(rate, fmt="pcm_s16le", first_only=False):
            d = Delivery(32000, audio.shape[0], audio.shape[1], fmt, rate)
            pieces = []
            for _, piece, last in split_native(audio, chunk):
                pieces += d.feed(piece, last)
                if first_only and pieces:
                    break
            return pieces

        pieces = timed("deliver_48k_s16_all_chunks_ms", lambda: deliver(48000))
        timed("deliver_48k_s16_first_chunk_ms", lambda: deliver(48000, first_only=True))
        timed("deliver_native_32k_s16_all_chunks_ms", lambda: deliver(None))
        msgs = timed("msgpack_encode_all_chunks_ms",
                     lambda: [P.reply(1, i, False, P.CHUNK, data, offset=o, frames=f, bytes=len(data))
                              for i, (o, f, data) in enumerate(pieces)])
        timed("client_decode_all_chunks_ms", lambda: [P.decode(m, reply=True) for m in msgs])
        whole = b"".join(d for _, _, d in pieces)
        timed("client_xxh3_track_ms", lambda: xxhash.xxh3_64_hexdigest(whole))   # what the client checks
        timed("crc32_track_ms", lambda: zlib.crc32(whole))                      # the alternatives measured
        timed("sha256_track_ms", lambda: hashlib.sha256(whole).digest())
    for k, v in out.items():
        if k.endswith("_ms"):
            table.row(f"hit breakdown: {k[:-3]}", v, "ms")
    return out
