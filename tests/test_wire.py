"""troubadour.wire: whole multipart messages through pyzmq's compiled socket calls, over real sockets."""

import errno

import pytest
import zmq

from troubadour.wire import readable, recv_message, send_message


@pytest.fixture
def pair():
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    dealer.setsockopt(zmq.ROUTING_ID, b"game")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close(0)
    dealer.close(0)


def _wait(sock):
    assert sock.poll(5000), "nothing arrived"


def test_round_trip_small_and_large_frames_in_order(pair):
    router, dealer = pair
    big = bytes(range(256)) * 4096          # 1 MiB: above pyzmq's copy threshold, sent zero-copy
    dealer.send_multipart([b"", b"hello"])
    _wait(router)
    envelope = recv_message(router)
    assert [f.bytes for f in envelope] == [b"game", b"", b"hello"]
    send_message(router, [b"game", b"", b"TRB\x01", b"chunk", b"\x80", big])
    _wait(dealer)
    got = recv_message(dealer)
    assert [f.bytes for f in got] == [b"", b"TRB\x01", b"chunk", b"\x80", big]
    assert not got[-1].more and all(f.more for f in got[:-1])


def test_nothing_waiting_raises_again(pair):
    with pytest.raises(zmq.Again):
        recv_message(pair[1])


def test_unknown_peer_is_reported_not_dropped(pair):
    router, _ = pair
    with pytest.raises(zmq.ZMQError) as e:
        send_message(router, [b"nobody", b"", b"x"])
    assert e.value.errno == errno.EHOSTUNREACH


def test_one_frame_object_sent_many_times_delivers_the_same_bytes(pair):
    """The memo of delivered tracks keeps payload pieces as zmq.Frames and sends each many times."""
    router, dealer = pair
    dealer.send_multipart([b"", b"hi"])
    _wait(router)
    recv_message(router)
    payload = bytes(range(200)) * 2000
    frame = zmq.Frame(payload, copy=False)
    for i in range(5):
        send_message(router, [b"game", b"", str(i).encode(), frame])
    for i in range(5):
        _wait(dealer)
        got = recv_message(dealer)
        assert got[1].bytes == str(i).encode() and got[2].bytes == payload


def test_readable_says_whether_a_whole_message_waits(pair):
    """The client and server drain loops stop on readable() instead of a receive that raises zmq.Again."""
    router, dealer = pair
    assert not readable(router)
    dealer.send_multipart([b"", b"one"])
    dealer.send_multipart([b"", b"two"])
    _wait(router)
    got = []
    while readable(router):
        got.append(recv_message(router)[-1].bytes)
        if len(got) == 1 and not readable(router):
            _wait(router)   # the second message may still be on its way
    assert got == [b"one", b"two"]
    assert not readable(router)
    with pytest.raises(zmq.Again):
        recv_message(router)
