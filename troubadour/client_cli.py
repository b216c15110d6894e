"""`troubadour fetch`, `prefetch` and `status`: the client side of the server, from a shell."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import protocol as P
from .client import DEFAULT_ADDRESS, Client, ConnectionLost
from .errors import TroubadourError, did_you_mean

EXIT_FAILED = 1        # prefetch: some jobs failed
EXIT_NO_SERVER = 4


def add_cli(sub) -> None:
    from .cli import _add_param_args

    f = sub.add_parser("fetch", help="fetch one track from a running server into a file")
    _server_args(f)
    what = f.add_mutually_exclusive_group(required=True)
    what.add_argument("--context", help="a game context of the server's profiles")
    what.add_argument("--prompt", help="a raw MusicGen prompt")
    f.add_argument("--variant", type=int, help="variant of the context (default: the server's choice)")
    f.add_argument("--out", required=True, help="output file: .wav, .ogg (or .raw/.pcm for raw PCM)")
    f.add_argument("--format", choices=P.FORMATS,
                   help="format to ask the server for (default: from --out, else pcm_s16le)")
    f.add_argument("--sample-rate", type=int, help="32000, 44100 or 48000 (default: the model's)")
    f.add_argument("--regenerate", action="store_true", help="generate again even if cached")
    f.add_argument("--cached-only", action="store_true", help="fail unless the track is already cached")
    f.add_argument("--no-fallback", action="store_true", help="fail for a context not in the profiles")
    f.add_argument("--priority", type=int, help="-100..100 (default 0)")
    _add_param_args(f)
    f.add_argument("--json", action="store_true", help="print one JSON line instead of a sentence")
    f.set_defaults(func=_guard(cmd_fetch))

    p = sub.add_parser("prefetch", help="generate contexts ahead of time on a running server")
    _server_args(p)
    p.add_argument("contexts", nargs="+", metavar="CONTEXT")
    p.add_argument("--variants", default="all", type=_variants, help="N or all (default all)")
    p.add_argument("--priority", type=int, help="-100..100 (default -50)")
    p.add_argument("--json", action="store_true", help="print the server's summary as one JSON line")
    p.set_defaults(func=_guard(cmd_prefetch))

    s = sub.add_parser("status", help="show a running server's model, profiles and queue")
    _server_args(s)
    s.add_argument("--json", action="store_true", help="print {info, health} as one JSON line")
    s.set_defaults(func=_guard(cmd_status))


def _server_args(p) -> None:
    default = os.environ.get("TROUBADOUR_SERVER") or DEFAULT_ADDRESS
    p.add_argument("--server", default=default, help=f"server address (default $TROUBADOUR_SERVER or {DEFAULT_ADDRESS})")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds of silence before retrying (default 5)")
    p.add_argument("--retries", type=int, default=2, help="resends before giving up (default 2)")
    p.add_argument("--server-key", default=os.environ.get("TROUBADOUR_SERVER_KEY"),
                   help="server public key file for CURVE (default $TROUBADOUR_SERVER_KEY)")
    p.add_argument("--client-key", default=os.environ.get("TROUBADOUR_CLIENT_KEY"),
                   help="this client's .key_secret file for CURVE (default $TROUBADOUR_CLIENT_KEY)")


def _variants(text: str):
    return "all" if text == "all" else int(text)


def _guard(fn):
    """A server that does not answer is an expected failure: one line and exit 4, no traceback."""
    def run(args) -> int:
        try:
            return fn(args)
        except ConnectionLost as e:
            print(f"troubadour: error: {e.message}", file=sys.stderr)
            return EXIT_NO_SERVER
    return run


def _client(args) -> Client:
    return Client(args.server, timeout=args.timeout, retries=args.retries, server_key=args.server_key,
                  client_key=args.client_key)


def cmd_fetch(args) -> int:
    from .params import GenParams

    out = Path(args.out)
    suffix = out.suffix.lower().lstrip(".")
    # checked before asking: a file whose name says one format and holds another fools engines and editors
    if suffix not in ("wav", "ogg", "raw", "pcm"):
        raise TroubadourError(f"--out {args.out}: name a .wav, .ogg, .raw or .pcm file", code="invalid_param",
                              field="out")
    if out.is_dir():
        raise TroubadourError(f"--out {args.out} is a folder: name the file to write", code="invalid_param",
                              field="out")
    raw = suffix in ("raw", "pcm")
    if args.format and (args.format.startswith("pcm_") if raw else args.format == suffix) is False:
        fits = "pcm_s16le or pcm_f32le" if raw else suffix
        raise TroubadourError(f"--format {args.format} does not match --out {out.name}, which takes {fits} "
                              "(leave --format out to follow the file name)", code="invalid_param", field="format")
    fmt = args.format or (suffix if not raw else "pcm_s16le")
    params = {k: getattr(args, k) for k in GenParams.names() if getattr(args, k, None) is not None}
    out.parent.mkdir(parents=True, exist_ok=True)   # as generate and bake do with --out; before any generation
    start = time.monotonic()
    with _client(args) as client:
        track = client.get_track(args.context, variant=args.variant, prompt=args.prompt, params=params or None,
                                 format=fmt, sample_rate=args.sample_rate, regenerate=args.regenerate,
                                 cached_only=args.cached_only, priority=args.priority,
                                 fallback=False if args.no_fallback else None)
        if track.header.get("fallback"):   # at dev time usually a typo: say so, with the closest name
            hint = did_you_mean(args.context, client.info().get("profiles", []))
            print(f"troubadour: warning: context {args.context!r} is not in the server's profiles{hint}; this is "
                  f"fallback music (--no-fallback makes it an error)", file=sys.stderr)
    track.save(out)
    seconds = round(time.monotonic() - start, 3)
    h = track.header
    if args.json:
        keys = ("track_id", "cached", "context", "variant", "fallback", "sample_rate", "channels", "frames",
                "format", "prompt", "bpm", "meter", "loop", "loop_start", "loop_end")
        record = {k: h[k] for k in keys if k in h}
        record.update(sha256=track.sha256, bytes=len(track.audio), file=str(out), seconds=seconds)
        print(json.dumps(record, sort_keys=True))
    else:
        length = h["frames"] / h["sample_rate"]
        where = f"{h['context']} variant {h.get('variant')}" if "context" in h else "prompt"
        print(f"{out}: {length:.2f} s, {h['sample_rate']} Hz, {'stereo' if h['channels'] == 2 else 'mono'}, "
              f"{where}, track {h['track_id'][:12]} ({'cached' if h['cached'] else 'generated'}) in {seconds:.2f} s")
    return 0


def cmd_prefetch(args) -> int:
    from tqdm import tqdm

    bar = tqdm(total=0, unit="track", desc="prefetch", file=sys.stderr, disable=None,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} tracks [{elapsed}]")
    progress: dict = {}   # track_id -> fraction done
    cached = 0

    def accepted(body) -> None:
        nonlocal cached
        jobs = body.get("jobs", [])
        cached = sum(1 for j in jobs if j.get("cached"))
        bar.total = len(jobs)
        bar.n = cached
        bar.refresh()

    def step(body) -> None:
        total = body.get("total_steps") or 1
        progress[body.get("track_id")] = min(1.0, body.get("done_steps", 0) / total)
        bar.n = round(cached + sum(progress.values()), 2)
        bar.refresh()

    try:
        with _client(args) as client:
            client.ping()   # prefetch itself is never resent: find out first whether anyone answers
            done = client.prefetch(args.contexts, variants=args.variants, priority=args.priority,
                                   on_progress=step, on_accepted=accepted)
        bar.n = bar.total
        bar.refresh()
    finally:
        bar.close()
    failed = done.get("failed", [])
    if args.json:
        print(json.dumps(done, sort_keys=True))
    else:
        print(f"prefetch: {done.get('generated', 0)} generated, {done.get('cached', 0)} cached, "
              f"{len(failed)} failed")
        for f in failed:
            err = f.get("error", {})
            print(f"  {f.get('context')} variant {f.get('variant')}: {err.get('code')}: {err.get('message')}")
    return EXIT_FAILED if failed else 0


def cmd_status(args) -> int:
    with _client(args) as client:
        info, health = client.info(), client.health()
    if args.json:
        print(json.dumps({"address": args.server, "info": info, "health": health}, sort_keys=True))
        return 0
    m, lim = info.get("model", {}), info.get("limits", {})
    print(f"server    troubadour {info.get('server_version')} at {args.server} "
          f"(protocol {info.get('protocol_version')}.{info.get('protocol_minor')})")
    layout = {1: "mono", 2: "stereo"}.get(m.get("channels"), "channels not known yet")
    print(f"model     {m.get('id')} on {m.get('device')}, {m.get('sample_rate') or '?'} Hz, {layout}")
    waiting = " (loading the model: track requests wait for it)" if health.get("status") == "loading" else ""
    print(f"status    {health.get('status')}{waiting}, up {health.get('uptime_s', 0):.0f} s")
    print(f"queue     {health.get('queue')} waiting, {health.get('generating')} generating "
          f"(max {lim.get('queue_length')})")
    names = info.get("profiles", [])
    print(f"profiles  {len(names)}: {', '.join(names)}")
    return 0
