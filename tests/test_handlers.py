"""Request handling shortcuts in troubadour.handlers, on an in-process Server that is not serving: what the
remembered specs return must be what a fresh resolution returns, and a profiles reload must be seen."""

import pytest

from servers import PROFILES
from troubadour.server import Server


@pytest.fixture
def server(engine, tmp_path):
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(PROFILES)
    srv = Server(engine, cache_dir=str(tmp_path / "cache"), bind="tcp://127.0.0.1:0", profiles_path=profiles,
                 watch=False)
    yield srv
    srv.cache.close()
    srv.readers.shutdown()


def get(**fields):
    return {"type": "get_track", "id": 1, "params": {}, "format": "pcm_s16le", "sample_rate": None,
            "stream": True, "regenerate": False, "cached_only": False, "priority": 0, "context": None,
            "variant": None, "fallback": True, "prompt": None, **fields}


def test_remembered_specs_equal_fresh_ones(server):
    for req in (get(prompt="calm piano"), get(prompt="calm piano", params={"duration": 2.0, "seed": 7}),
                get(context="battle", variant=0), get(context="explore", variant=1),
                get(context="explore", variant=1, params={"duration": 0.5})):
        first, again = server.resolve(b"c", req), server.resolve(b"c", req)
        server._prompt_specs.clear()
        server._ctx_specs = (None, {})
        assert first == again == server.resolve(b"c", req)
    assert server.resolve(b"c", get(prompt="calm piano")).key != server.resolve(
        b"c", get(prompt="calm piano", params={"seed": 7})).key


def test_reloaded_profiles_give_new_specs(server):
    before = server.resolve(b"c", get(context="battle", variant=0))
    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "mysterious"'))
    names, changed, regenerating = server.reload_profiles()
    assert changed == ["battle"] and regenerating == 1
    after = server.resolve(b"c", get(context="battle", variant=0))
    assert after.key != before.key and "mysterious" in after.prompt.lower()
    # unchanged contexts resolve to the same track as before
    assert server.resolve(b"c", get(context="menu", variant=0)).key == server.context_spec(
        server.profiles.get("menu"), 0).key


def test_rotation_prefers_a_remembered_variant_and_queues_the_one_whose_turn_it_was(server):
    ctx = server.profiles.get("explore")
    v0, v1 = (server.context_spec(ctx, v) for v in (0, 1))
    assert not server.cache.contains(v1.key)
    server.memo.put((v1.key, "pcm_s16le", 32000), [(0, 10, b"\0" * 40)], 10, 40, {})
    # variant 0's turn, but only variant 1 can be delivered at once: it is served, and 0 is made for next time
    assert server.resolve(b"c", get(context="explore")).variant == 1
    assert server.scheduler.find(v0.key) is not None
    server.memo.drop(v1.key)
    assert server.resolve(b"c", get(context="explore")).variant == 1   # the turn moved on; nothing held


def test_rotation_turns_are_bounded_and_the_least_recently_used_go_first(server):
    """Connections come and go and the server learns of a vanished one only when a send to it fails: their
    turns must not pile up. The turn a connection used last is kept over older ones."""
    server.max_rotations = 3
    turn = lambda client: server.resolve(client, get(context="explore")).variant   # noqa: E731
    assert [turn(b"a"), turn(b"a")] == [0, 1]
    for other in (b"b", b"c"):
        turn(other)
    assert turn(b"a") == 0   # two variants: a's third turn wraps around
    turn(b"d")               # the fourth connection: b's turn, the oldest, is forgotten
    assert len(server.rotation) == 3 and (b"b", "explore") not in server.rotation
    assert turn(b"a") == 1 and turn(b"b") == 0   # a kept its turn; b starts over


def test_a_streaming_prefetch_of_a_superseded_edit_waits_for_what_replaced_it(server):
    """A prefetch waiting for a hot-swap regeneration that a newer edit cancels in the queue: no engine event
    ever comes for a job cancelled there, so the prefetch never got `done` (and 32 of them filled the
    connection: busy). It now waits for the newer version; the cancelled job leaves no live entry."""
    from troubadour import protocol as P
    from troubadour.streams import Reply

    def battle():
        return server.context_spec(server.profiles.get("battle"), 0)

    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "mysterious"'))
    server.reload_profiles()
    first = server.scheduler.find(battle().key)
    assert first is not None and first.reason == "hot_swap" and battle().key in server.live
    reply = Reply([b"c"], 9, P.PREFETCH)
    server.on_prefetch(reply, {"contexts": ["battle"], "variants": 1, "priority": -50, "stream": True})
    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "sad"'))
    server.reload_profiles()
    newer = server.scheduler.find(battle().key)
    assert first.state == "cancelled" and newer is not None and newer is not first
    assert first.key not in server.live and first.key not in server.prefetches
    assert server.prefetches[newer.key][0].pending == {newer.key: [("battle", 0)]}
    server.on_event(("done", newer, None, {}))   # the engine made the newer version
    done = P.decode(reply.outbox[-1], reply=True)
    assert done.type == P.DONE and done.final and (done.body["generated"], done.body["failed"]) == (1, []), done.body

    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "calm"'))   # a third edit, and
    server.reload_profiles()
    job = server.scheduler.find(battle().key)
    other = Reply([b"c"], 10, P.PREFETCH)
    server.on_prefetch(other, {"contexts": ["battle"], "variants": 1, "priority": -50, "stream": True})
    server.profiles_path.write_text(PROFILES.replace('[contexts.battle]\nmood = "tense"\nbpm = 140\n', ""))
    server.reload_profiles()   # ... battle removed before it was made
    assert job.state == "cancelled" and job.key not in server.live
    done = P.decode(other.outbox[-1], reply=True)
    assert done.type == P.DONE and [f["error"]["code"] for f in done.body["failed"]] == ["unknown_context"]


def test_reload_regenerates_only_changed_variants_and_drops_superseded_edits(server):
    """A variant regenerates when its track changed: more variants regenerate only the new ones; a second edit
    of a context before the first one's regeneration ran releases that one (nobody wants it); a file with no
    contexts (a save half-way) is refused and the profiles stay."""
    from troubadour.errors import ProfileError

    def spec(name, v=0):
        return server.context_spec(server.profiles.get(name), v)

    old_explore = [spec("explore", v).key for v in (0, 1)]
    server.profiles_path.write_text(PROFILES.replace('mood = "peaceful"\nvariants = 2', 'mood = "peaceful"\nvariants = 3'))
    _, changed, regenerating = server.reload_profiles()
    assert changed == ["explore"] and regenerating == 1
    assert [spec("explore", v).key for v in (0, 1)] == old_explore
    assert server.scheduler.find(spec("explore", 2).key) is not None
    assert all(server.scheduler.find(k) is None for k in old_explore)

    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "mysterious"'))
    _, changed, _ = server.reload_profiles()
    first = server.scheduler.find(spec("battle").key)
    assert "battle" in changed and first is not None and first.reason == "hot_swap"
    server.profiles_path.write_text(PROFILES.replace('mood = "tense"', 'mood = "sad"'))
    _, changed, regenerating = server.reload_profiles()
    assert changed == ["battle"] and regenerating == 1
    assert first.cancelled and server.scheduler.find(first.key) is None
    assert server.scheduler.find(spec("battle").key) is not None

    kept = server.profiles
    server.profiles_path.write_text("[game]\ntitle = 'half-way'\n")
    with pytest.raises(ProfileError, match="no contexts"):
        server.reload_profiles()
    assert server.profiles is kept


def test_a_client_that_never_reads_cannot_grow_the_server(server):
    """Replies wait in the server until the client takes them: one that sends and never reads is forgotten
    once it has MAX_UNSENT_REPLIES waiting (its queued replies freed), instead of growing the server without
    bound; an envelope larger than any routing needs is not answered (it would be echoed with every reply)."""
    from troubadour import protocol as P
    from troubadour.server import MAX_UNSENT_REPLIES

    for i in range(3 * MAX_UNSENT_REPLIES):   # not serving: nothing is ever sent, as to a client not reading
        server._on_frames([b"greedy", b"", *P.encode("ping", {"id": i})])
    assert 0 < server.replies.count[b"greedy"] <= MAX_UNSENT_REPLIES
    assert len(server.replies) == server.replies.count[b"greedy"]
    server._on_frames([b"polite", b"", *P.encode("ping", {"id": 1})])
    assert server.replies.count[b"polite"] == 1
    server._on_frames([b"padded", b"x" * 8192, b"", *P.encode("ping", {"id": 1})])
    assert b"padded" not in server.replies.count


def test_send_passes_visit_only_subscribers_with_events(server):
    """Subscribers are known gone only when a send to them fails: thousands of idle or vanished ones were
    walked on every pass of the I/O loop (ping 0.46 -> 7.6 ms with 20 000). Passes now see those with events
    queued; dropping one is constant time."""
    from troubadour import protocol as P
    from troubadour.streams import Reply

    for i in range(500):
        client = b"sub%d" % i
        reply = Reply([client, b""], 1, P.SUBSCRIBE)
        server.on_subscribe(reply, {"events": ["track_ready", "profiles_changed"]})
        server.subscribers[client].after = None
    assert list(server._holders()) == []
    server.subscribers[b"sub7"].push("track_ready", context="menu", variant=0, track_id="t", reason="generated")
    assert list(server._holders()) == [server.subscribers[b"sub7"]]
    server.drop_client(b"sub7", "disconnected")
    assert b"sub7" not in server.subscribers and list(server._holders()) == []
    for s in server.subscribers.values():   # a broadcast: every subscriber has something to send
        s.push("profiles_changed", contexts=["menu"])
    assert len(list(server._holders())) == 499


def test_a_shared_replay_cancelled_before_it_started_releases_its_pin_and_recording(server):
    """A second request of a track being replayed takes its decoded audio at once; cancelled in the same read,
    before any send pass, its replay generator had never run, so dropping it skipped its `finally`: the pin
    stayed (the entry could never be evicted) and so did the recording (that format never memoised)."""
    import gc

    import numpy as np

    from troubadour import protocol as P
    from troubadour.streams import Reply

    req = get(prompt="a shared replay", params={"duration": 2.0}, cached_only=True)
    spec = server.resolve(b"a", req)
    server.cache.put(spec.key, np.zeros((1, 64000), np.float32), 32000, {})
    first = Reply([b"a", b""], 1, P.GET_TRACK)
    server.replies[first.key] = first
    server.cache.pin(spec.key)   # what on_get_track does before a reader thread reads the track, and reports:
    server.on_event(("cached", first, req, spec, server.cache.get(spec.key)))
    assert first.outbox, P.decode(first.outbox[0], reply=True)   # its header
    assert spec.key in server.decoded and server.cache._pins == {spec.key: 1}
    server.dispatch([b"b", b""], {**req, "id": 7, "format": "pcm_f32le"})
    assert server.cache._pins == {spec.key: 2} and len(server._recording) == 2
    server.dispatch([b"b", b""], {"type": "cancel", "id": 8, "target": 7})
    gc.collect()
    assert server.cache._pins == {spec.key: 1} and server._recording == {(spec.key, "pcm_s16le", 32000)}

