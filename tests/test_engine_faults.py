"""Faults inside generation: the affected requests fail with engine_error and the engine goes on; a fault
that leaves the device unusable reports engine_dead and ends the server with a non-zero code."""

import threading
import time

import pytest
import torch

from servers import Conn, free_port
from troubadour import protocol as P
from troubadour.engine import Engine
from troubadour.server import EXIT_ENGINE_DEAD, Server


@pytest.fixture
def faulty(backend, tmp_path):
    """An in-process server whose model raises `fault[0]` for prompts containing 'explode'."""
    fault = [None]

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        text = " ".join(backend.tokenizer.batch_decode(ids))
        if "explode" in text and fault[0] is not None:
            raise fault[0]

    handle = backend.model.text_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    server = Server(Engine(backend), cache_dir=str(tmp_path / "cache"), bind=f"tcp://127.0.0.1:{free_port()}",
                    watch=False)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", server.serve_forever()), daemon=True)
    thread.start()
    yield server, fault, result, thread
    server.stop()
    thread.join(10)
    handle.remove()


def final(conn, **req):
    return conn.call(P.GET_TRACK, stream=True, params={"duration": 0.5}, **req)[-1]


@pytest.mark.parametrize("exc", [RuntimeError("injected failure"),
                                 torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")])
def test_fault_fails_only_that_request_and_engine_recovers(faulty, exc):
    server, fault, _, _ = faulty
    fault[0] = exc
    c = Conn(server.bound)
    bad = final(c, prompt="explode the drums")
    assert bad.type == P.ERROR and bad.body["code"] == "engine_error" and "injected" in bad.body["message"]
    assert c.call(P.HEALTH)[0].body["status"] == "degraded"
    good = final(c, prompt="calm piano")
    assert good.type == P.END
    deadline = time.time() + 5
    while c.call(P.HEALTH)[0].body["status"] != "ok" and time.time() < deadline:
        time.sleep(0.05)
    assert c.call(P.HEALTH)[0].body["status"] == "ok"
    c.close()


def test_unrecoverable_fault_reports_engine_dead_and_exits(faulty):
    server, fault, result, thread = faulty
    fault[0] = RuntimeError("CUDA error: device-side assert triggered (injected)")
    c = Conn(server.bound)
    bad = final(c, prompt="explode")
    assert bad.type == P.ERROR and bad.body["code"] == "engine_dead"
    thread.join(15)
    assert not thread.is_alive() and result["rc"] == EXIT_ENGINE_DEAD
    c.close()
