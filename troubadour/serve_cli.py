"""`troubadour serve`: its arguments and start-up (checks, model loader), kept apart from server.py so other
commands start without importing torch or pyzmq."""

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
    import signal
    import time

    from .backends import describe_model
    from .cli import make_engine
    from .engine import Job
    from .errors import TroubadourError
    from .profiles import load_and_warn
    from .server import Server, log

    if bool(args.curve_secret) != bool(args.allow):
        raise TroubadourError("--curve-secret and --allow go together", code="invalid_param", field="allow")
    if not _is_loopback(args.bind) and not args.curve_secret:
        log(f"WARNING: binding {args.bind} exposes the server beyond this machine WITHOUT authentication: anyone "
            "who can reach it can use it. Use --curve-secret/--allow (see `troubadour keys`).")
    for name, value, ok, bound in (("max_queue", args.max_queue, args.max_queue >= 1, ">= 1"),
                                   ("threads", args.threads, args.threads is None or args.threads >= 1, ">= 1"),
                                   ("max_batch", args.max_batch, args.max_batch >= 1, ">= 1"),
                                   ("cache_size", args.cache_size, args.cache_size > 0, "> 0")):
        if not ok:
            raise TroubadourError(f"--{name.replace('_', '-')} must be {bound}, got {value}", code="invalid_param",
                                  field=name)
    load_and_warn(args.profiles)   # a broken file fails now, before minutes of model loading
    _check_bind(args.bind)         # and so does a port already in use
    described = describe_model(args.model, args.device)   # and a model that cannot load, or a bad --device
    if args.curve_secret:
        from .auth import check_server_keys
        check_server_keys(args.curve_secret, args.allow)

    def load():
        """On the engine thread, while the server already answers."""
        log(f"loading model {args.model} ...")
        engine = make_engine(args, same_thread=False)
        t0 = time.perf_counter()
        if engine.compiled and args.max_batch > 1:   # the largest batch first: its KV cache is the one all share;
            engine.generate([Job("warm up", _warmup_params())] * args.max_batch)   # compiled now
        engine.generate([Job("warm up", _warmup_params())])   # first-call allocations happen now
        log(f"model warm ({time.perf_counter() - t0:.1f}s) on {engine.info.device}; decode matmuls: "
            f"{engine.matmuls}")
        return engine

    server = Server(loader=load, described=described, cache_dir=args.cache, bind=args.bind,
                    profiles_path=args.profiles, max_queue=args.max_queue, max_batch=args.max_batch,
                    watch=not args.no_watch, cache_size=int(args.cache_size * 1e9), curve_secret=args.curve_secret,
                    allow_dir=args.allow)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())

    def ready(s):
        log(f"ready on {s.bound} (model {s.engine.info.model_id}, {len(s.profiles.names())} contexts, "
            f"cache {args.cache})")

    return server.serve_forever(ready)


def _check_bind(address: str) -> None:
    import zmq

    from .server import bind_error

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(address)
    except zmq.ZMQError as e:
        raise bind_error(address, e) from None
    finally:
        sock.close(0)


def _warmup_params():
    from .params import GenParams

    return GenParams(duration=0.1, seed=0)


def _is_loopback(address: str) -> bool:
    if not address.startswith("tcp://"):
        return True   # ipc:// and inproc:// never leave the machine
    if ";" in address:   # "tcp://SOURCE;HOST:PORT": ZeroMQ binds HOST, which is what counts
        return _is_loopback("tcp://" + address.split(";", 1)[1])
    host = address[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
