"""`troubadour serve` arguments, kept apart from server.py so other commands start without importing torch."""

from __future__ import annotations


def add_cli(sub) -> None:
    p = sub.add_parser("serve", help="run the music server")
    from .cli import _add_model_args

    _add_model_args(p)
    p.add_argument("--profiles", help="profiles TOML file, watched for hot-swap (default: the bundled profiles)")
    p.add_argument("--cache", default="troubadour-cache", help="cache directory (default ./troubadour-cache)")
    p.add_argument("--cache-size", type=float, default=2.0, help="cache size limit in GB (default 2)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default tcp://127.0.0.1:5555)")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--no-watch", action="store_true", help="do not watch the profiles file")
    p.add_argument("--curve-secret", help="server .key_secret file (`troubadour keys`): require CURVE authentication")
    p.add_argument("--allow", help="folder of client public keys (*.key) admitted with --curve-secret")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from .server import cmd_serve

    return cmd_serve(args)
