"""`troubadour bake` arguments and command, kept apart from bake.py (the baking itself)."""

from __future__ import annotations

import os
import sys

from .bake import DEFAULT_SAMPLE_RATE, SAMPLE_RATES, bake
from .bake_sources import EngineSource, ServerSource
from .errors import TroubadourError
from .params import MAX_VARIANTS
from .showcase import MANIFEST


def add_cli(sub) -> None:
    p = sub.add_parser("bake", help="render every context of a profiles file to game-ready files",
                       description="Render every context x variant of a profiles file into a folder a game "
                                   "ships: looped/normalised audio, manifest.json, soundtrack_info.txt, "
                                   "index.html. Re-running skips tracks that are already up to date.")
    p.add_argument("profiles", nargs="?", help="profiles TOML file (default: the bundled profiles)")
    p.add_argument("--out", default="soundtrack", help="output folder (default ./soundtrack)")
    p.add_argument("--variants", type=int, help="variants per context, replacing each context's own count")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=os.environ.get("TROUBADOUR_MODEL"),
                     help="local model: hub id or checkpoint directory (default facebook/musicgen-small "
                          "or $TROUBADOUR_MODEL)")
    src.add_argument("--server", metavar="ADDR", help="fetch raw audio from a running server, e.g. "
                                                     "tcp://127.0.0.1:5555, instead of loading a model")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="with --server: seconds of silence before retrying (default 10)")
    p.add_argument("--retries", type=int, default=3, help="with --server: resends before giving up (default 3)")
    p.add_argument("--server-key", default=os.environ.get("TROUBADOUR_SERVER_KEY"),
                   help="with --server: its public key file for CURVE (default $TROUBADOUR_SERVER_KEY)")
    p.add_argument("--client-key", default=os.environ.get("TROUBADOUR_CLIENT_KEY"),
                   help="with --server: this client's .key_secret file (default $TROUBADOUR_CLIENT_KEY)")
    p.add_argument("--device", default="auto", help="with --model: auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--compile", action="store_true", dest="compile_step",
                   help="with --model: decode step through torch.compile (CUDA graphs on an NVIDIA GPU)")
    p.add_argument("--format", choices=["wav", "ogg"], default="wav")
    p.add_argument("--sample-rate", type=int, choices=SAMPLE_RATES, default=DEFAULT_SAMPLE_RATE,
                   dest="sample_rate", help=f"output sample rate (default {DEFAULT_SAMPLE_RATE})")
    p.add_argument("--loudness", type=float, help="target LUFS for every track (default: each context's)")
    p.add_argument("--max-duration", type=float, dest="max_duration",
                   help="cap every track at this many seconds (quick previews)")
    p.set_defaults(func=cmd_bake)


def cmd_bake(args) -> int:
    from .profiles import load_and_warn

    if args.variants is not None and not 1 <= args.variants <= MAX_VARIANTS:
        raise TroubadourError(f"--variants must be in [1, {MAX_VARIANTS}]", code="invalid_param", field="variants")
    if args.loudness is not None and not -40 <= args.loudness <= -5:
        raise TroubadourError("--loudness must be in [-40, -5] LUFS", code="invalid_param", field="loudness")
    if args.max_duration is not None and not args.max_duration > 0:
        raise TroubadourError("--max-duration must be > 0", code="invalid_param", field="max_duration")
    load_and_warn(args.profiles)   # a bad file fails before a model loads or a server is asked
    if args.server:
        source = ServerSource(args.server, args.timeout, lambda msg: print(f"bake: {msg}", file=sys.stderr),
                              retries=args.retries, server_key=args.server_key, client_key=args.client_key)
        print(f"bake: server {args.server}, model {source.model_id}", file=sys.stderr)
    else:
        from .backends.base import DEFAULT_MODEL

        source = EngineSource(model=args.model or DEFAULT_MODEL, device=args.device, compile_step=args.compile_step,
                              log=lambda msg: print(f"bake: {msg}", file=sys.stderr))
    try:
        report = bake(args.profiles, args.out, source, variants=args.variants, fmt=args.format,
                      sample_rate=args.sample_rate, loudness=args.loudness, max_duration=args.max_duration)
    finally:
        source.close()
    print(report.out_dir / MANIFEST)
    return 0
