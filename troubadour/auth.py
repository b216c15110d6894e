"""CURVE authentication for servers reachable beyond this machine: key pairs and an allow-list.

ZeroMQ's CURVE encrypts the connection and authenticates the server to clients; a ZAP handler (pyzmq's
ThreadAuthenticator) admits only clients whose public key is in the allow-list folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import TroubadourError


def make_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write `name.key` (public, share it) and `name.key_secret` (keep it private) into `directory`."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (d / f"{name}{suffix}").exists():
            raise TroubadourError(f"{d / (name + suffix)} exists; not overwriting a key", code="invalid_param",
                                  field="name")
    mask = os.umask(0o077)   # the secret is private from its first byte (a chmod after writing leaves a window)
    try:
        public, secret = zmq.auth.create_certificates(str(d), name)
    finally:
        os.umask(mask)
    Path(public).chmod(0o644)
    return Path(public), Path(secret)


def load_pair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise TroubadourError(f"cannot read key file {path}: {e}", code="invalid_param", field="key") from None
    if secret is None:
        raise TroubadourError(f"{path} holds no secret key (use the .key_secret file)", code="invalid_param",
                              field="key")
    return public, secret


def load_public(path: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as e:
        raise TroubadourError(f"cannot read key file {path}: {e}", code="invalid_param", field="key") from None
    return public


def check_server_keys(secret_file, allow_dir) -> tuple[bytes, bytes]:
    allow = Path(allow_dir)
    if not allow.is_dir() or not list(allow.glob("*.key")):
        raise TroubadourError(f"allow-list {allow} has no client public keys (*.key)", code="invalid_param",
                              field="allow")
    return load_pair(secret_file)


def secure_server(socket: zmq.Socket, ctx: zmq.Context, secret_file, allow_dir) -> ThreadAuthenticator:
    """Make `socket` a CURVE server that admits only the public keys found in `allow_dir`."""
    public, secret = check_server_keys(secret_file, allow_dir)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(allow_dir)))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    return auth


def secure_client(socket: zmq.Socket, server_public_file, client_secret_file) -> None:
    public, secret = load_pair(client_secret_file)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public(server_public_file)


def add_cli(sub) -> None:
    p = sub.add_parser("keys", help="generate a CURVE key pair (server or client) for authenticated access")
    p.add_argument("dir", help="folder to write NAME.key (public) and NAME.key_secret (private)")
    p.add_argument("--name", default="server", help="key name, e.g. server or the client's name")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args) -> int:
    public, secret = make_keys(args.dir, args.name)
    print(f"public key (give to the other side): {public}")
    print(f"secret key (keep private):           {secret}")
    return 0
