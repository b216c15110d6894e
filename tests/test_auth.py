"""CURVE authentication: only clients on the allow-list get answers; keys come from `troubadour keys`."""

import subprocess
import sys

import pytest
import zmq

from servers import Conn, ServerProcess
from troubadour import protocol as P
from troubadour.auth import secure_client


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    for name, folder in (("server", d), ("game", d / "allowed"), ("stranger", d / "others")):
        r = subprocess.run([sys.executable, "-m", "troubadour.cli", "keys", str(folder), "--name", name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def server(tiny_model, keys, tmp_path_factory):
    srv = ServerProcess(tiny_model, tmp_path_factory.mktemp("srv"),
                        args=["--curve-secret", str(keys / "server.key_secret"), "--allow", str(keys / "allowed")])
    srv.start()
    yield srv
    srv.stop()


def curve_conn(server, keys, client_secret):
    c = Conn.__new__(Conn)
    c.ctx = zmq.Context.instance()
    c.sock = c.ctx.socket(zmq.DEALER)
    c.sock.setsockopt(zmq.LINGER, 0)
    secure_client(c.sock, keys / "server.key", client_secret)
    c.sock.connect(server.address)
    c.pending = []
    return c


def test_allowed_client_is_served(server, keys):
    c = curve_conn(server, keys, keys / "allowed" / "game.key_secret")
    assert c.call(P.PING)[0].type == P.PONG
    assert c.call(P.INFO)[0].body["protocol_version"] == 1
    c.close()


def test_unknown_key_and_plaintext_get_nothing(server, keys):
    stranger = curve_conn(server, keys, keys / "others" / "stranger.key_secret")
    stranger.send(P.PING)
    with pytest.raises(TimeoutError):
        stranger.recv(timeout=3)
    plain = Conn(server.address)
    plain.send(P.PING)
    with pytest.raises(TimeoutError):
        plain.recv(timeout=3)
    stranger.close()
    plain.close()


def test_secret_keys_are_private_from_the_start(tmp_path):
    """The secret is written with owner-only permissions (no window in which others can read it)."""
    import os
    import stat

    from troubadour.auth import make_keys

    seen = []
    real_open = open

    def spying_open(file, mode="r", *a, **kw):   # what the file's mode is the moment it is created
        f = real_open(file, mode, *a, **kw)
        if str(file).endswith(".key_secret"):
            seen.append(stat.S_IMODE(os.stat(file).st_mode))
        return f

    import builtins
    builtins.open, saved = spying_open, builtins.open
    try:
        public, secret = make_keys(tmp_path, "game")
    finally:
        builtins.open = saved
    assert seen and all(m & 0o077 == 0 for m in seen), [oct(m) for m in seen]
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and stat.S_IMODE(public.stat().st_mode) == 0o644


def test_bind_check_looks_past_a_source_address():
    from troubadour.serve_cli import _is_loopback

    assert _is_loopback("tcp://127.0.0.1:5555") and _is_loopback("ipc:///tmp/x")
    assert not _is_loopback("tcp://0.0.0.0:5555")
    assert not _is_loopback("tcp://127.0.0.1:0;0.0.0.0:5801")   # ZeroMQ binds what follows the ';'
    assert _is_loopback("tcp://10.0.0.5:0;127.0.0.1:5801")


def test_keys_refuse_to_overwrite(keys):
    r = subprocess.run([sys.executable, "-m", "troubadour.cli", "keys", str(keys), "--name", "server"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not overwriting" in r.stderr


def test_non_loopback_bind_without_auth_warns(tiny_model, tmp_path):
    srv = ServerProcess(tiny_model, tmp_path)
    srv.address = f"tcp://0.0.0.0:{srv.port}"
    srv.start()
    try:
        assert "WITHOUT authentication" in srv.log()
    finally:
        srv.stop()


def test_python_client_and_cli_with_keys(server, keys, tmp_path):
    from troubadour.client import Client, Timeout

    with Client(server.address, timeout=3, retries=0, server_key=keys / "server.key",
                client_key=keys / "allowed" / "game.key_secret") as c:
        assert "time" in c.ping()
        assert c.info()["protocol_version"] == 1
    with Client(server.address, timeout=1, retries=0, server_key=keys / "server.key",
                client_key=keys / "others" / "stranger.key_secret") as c:
        with pytest.raises(Timeout):
            c.info()
    r = subprocess.run([sys.executable, "-m", "troubadour.cli", "status", "--server", server.address, "--json",
                        "--server-key", str(keys / "server.key"),
                        "--client-key", str(keys / "allowed" / "game.key_secret")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"protocol_version": 1' in r.stdout
