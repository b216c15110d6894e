"""Request handlers of the server (mixed into server.Server; I/O thread only). Events from its other threads
are in events.py."""

from __future__ import annotations

import time

from . import __version__
from . import protocol as P
from .cache import track_key
from .delivery import Delivery
from .errors import UNKNOWN_CONTEXT, Cancelled, TroubadourError, ValidationError, did_you_mean
from .jobs import BACKGROUND, TrackSpec
from .loops import bar_aligned_duration
from .params import MAX_SEED, MAX_VARIANTS, GenParams
from .shaping import Shaper, shape_of
from .streams import (LiveTrack, PrefetchState, Reply, Subscription, TrackStream, pinned, recording, replay,
                      replay_memo, track_header)

IMMEDIATE = {P.PING, P.INFO, P.HEALTH, P.CANCEL}
NEEDS_MODEL = {P.GET_TRACK, P.PREFETCH, P.RELOAD_PROFILES}   # held while the geometry is not known


class Handlers:
    # ------------------------------------------------------------------ dispatch
    def dispatch(self, envelope: list, req: dict) -> None:
        client, rid, kind = bytes(envelope[0]), req["id"], req["type"]
        key = (client, rid)
        old = self.replies.get(key)
        if old is not None and not old.closed:   # answered with id nil: the open request keeps one final
            return self._reply_error(envelope, None, P.ProtocolError(
                f"request id {rid!r} is already open on this connection", field="id"))
        if old is not None:   # finished but its last messages are still queued: keep them, free the id
            old.key = (client, ("done", next(self._error_ids)))
            self.replies[old.key] = self.replies.pop(key)
        if kind not in IMMEDIATE and self.open_count(client) >= self.max_inflight:
            raise TroubadourError(f"{self.max_inflight} requests already open on this connection", code="busy")
        if self.dead is not None and kind in (P.GET_TRACK, P.PREFETCH):
            raise self.dead
        waits = self.geometry is None and kind in NEEDS_MODEL
        if waits and self._holding() >= self.max_held:   # all connections together: each has its own 32 too
            raise TroubadourError(f"the model is still loading and {self.max_held} requests already wait for it; "
                                  "ask again later", code="busy")
        reply = Reply(envelope, rid, kind)
        reply.key = key
        self.replies[key] = reply
        if waits:
            self.held.append((reply, req))   # answered when the model is ready (events._model_ready)
            return
        self._handle(reply, req)

    def _holding(self) -> int:
        """Requests waiting for the model, without those cancelled or gone meanwhile (dropped here)."""
        if len(self.held) >= self.max_held:
            self.held = [(r, q) for r, q in self.held
                         if r is None or (not r.closed and self.replies.get(r.key) is r)]
        return len(self.held)

    def _handle(self, reply, req) -> None:
        try:
            getattr(self, "on_" + req["type"])(reply, req)
        except TroubadourError as e:
            reply.fail(e)

    max_inflight = 32
    max_rotations = 1 << 16   # (connection, context) turns remembered; the least recently used go first
    max_held = 1024   # requests waiting for a model still loading whose config was not at hand

    # ------------------------------------------------------------------ simple requests
    def on_ping(self, reply, req):
        reply.send(P.PONG, final=True, time=time.time())

    def on_info(self, reply, req):
        if self.engine is None:   # loading: what is known without the weights (clients ask on connecting)
            model = self.model_described
        else:
            info = self.engine.info
            model = {"id": info.model_id, "identity": info.identity, "sample_rate": info.sample_rate,
                     "channels": info.channels, "device": info.device}
        rates = sorted(set(P.SAMPLE_RATES) | ({model["sample_rate"]} if "sample_rate" in model else set()))
        reply.send(P.INFO, final=True, server_version=__version__, protocol_version=P.VERSION,
                   protocol_minor=P.MINOR, model=model, sample_rates=rates, formats=list(P.FORMATS),
                   limits={"max_message_bytes": P.MAX_REQUEST_BYTES, "max_duration": self.parse.max_duration,
                           "max_variants": MAX_VARIANTS, "max_chunk_bytes": P.MAX_CHUNK_BYTES,
                           "max_track_bytes": P.MAX_TRACK_BYTES, "max_inflight_per_client": self.max_inflight,
                           "queue_length": self.scheduler.max_queue},
                   profiles=self.profiles.names(), heartbeat_ms=P.HEARTBEAT_MS)

    def on_health(self, reply, req):
        status = "degraded" if (self.dead or self.worker.failures) else "loading" if self.engine is None else "ok"
        reply.send(P.HEALTH, final=True, status=status, queue=self.scheduler.queued(),
                   generating=len(self.scheduler.running()), generated=self.worker.generated,
                   uptime_s=round(time.time() - self.started, 3))

    def on_list_profiles(self, reply, req):
        rows = []
        for name in self.profiles.names():
            c = self.profiles.get(name)
            row = {"name": name, "prompt": c.prompt, "variants": c.variants, "duration": c.params.duration,
                   "loop": c.loop, "meter": c.meter}
            if c.bpm is not None:
                row["bpm"] = c.bpm
            rows.append(row)
        game = {k: v for k, v in self.profiles.game.items() if isinstance(v, str)}
        reply.send(P.PROFILES, final=True, contexts=rows, game=game)

    def on_subscribe(self, reply, req):
        self._forget_subscription(reply.client)   # (a re-subscription: the old one's events are dropped)
        sub = self.subscribers[reply.client] = Subscription(reply.envelope, req["events"], self.waiting_subs)
        reply.send(P.SUBSCRIBED, final=True, events=req["events"])
        sub.after = reply   # events queued in the same pass wait for it (their seq restarts at 0 after it)

    def on_unsubscribe(self, reply, req):
        self._forget_subscription(reply.client)
        reply.send(P.UNSUBSCRIBED, final=True)

    def on_reload_profiles(self, reply, req):
        names, changed, _ = self.reload_profiles()
        reply.send(P.RELOADED, final=True, contexts=names, changed=changed)

    def on_cancel(self, reply, req):
        target = self.replies.get((reply.client, req["target"]))
        # a cancel naming itself is not a target: failing it would give its id two final messages
        found = target is not None and target is not reply and not target.closed
        if found:
            self._detach(target)
            target.fail(Cancelled("cancelled by the client"))
            # the protocol promises the target's final error before this reply
            reply.send_after(target, P.CANCELLED_REPLY, target=req["target"], found=True)
        else:
            reply.send(P.CANCELLED_REPLY, final=True, target=req["target"], found=False)

    # ------------------------------------------------------------------ tracks
    def resolve(self, client: bytes, req: dict) -> TrackSpec:
        """A get_track request (context or prompt) -> the exact track to deliver."""
        overrides = req.get("params") or {}
        if req.get("context") is None:
            # a prompt's track depends on nothing but the request: remembered by prompt and overrides
            memo_key = (req["prompt"], repr(overrides))
            spec = self._prompt_specs.get(memo_key)
            if spec is None:
                params = GenParams.from_dict({**GenParams().to_dict(), **overrides}, self.geometry.max_duration)
                spec = self._spec(req["prompt"], params, None, None, {})
                if len(self._prompt_specs) >= 1024:
                    self._prompt_specs.clear()
                self._prompt_specs[memo_key] = spec
            return spec
        ctx = self.profiles.get(req["context"], strict=not req.get("fallback", True))
        if ctx.fallback and (notice := self.profiles.fallback_notice(ctx.name)):
            self.log(notice)
        variant = req.get("variant")
        if variant is None:
            variant = self._pick_variant(client, ctx)
        elif variant >= ctx.variants:
            raise ValidationError(f"variant must be in [0, {ctx.variants}) for context {ctx.name!r}",
                                  field="variant")
        if not overrides:
            return self.context_spec(ctx, variant)
        merged = {**ctx.params_for(variant).to_dict(), **overrides}
        if "duration" in overrides and ctx.bpm:
            merged["duration"] = bar_aligned_duration(overrides["duration"], ctx.bpm, ctx.meter,
                                                      self.geometry.max_duration)
        if "seed" in overrides:   # the base seed, as in a profile: variant i uses seed + i
            merged["seed"] = overrides["seed"] + variant
            if merged["seed"] > MAX_SEED:
                raise ValidationError(f"seed + variant must be at most 2**63-1: variant {variant} uses seed "
                                      f"{overrides['seed']} + {variant}", field="params.seed")
        try:
            params = GenParams.from_dict(merged, self.geometry.max_duration)
        except ValidationError as e:
            raise ValidationError(e.message, field=f"params.{e.field}") from None
        return self.context_spec(ctx, variant, params)

    def context_spec(self, ctx, variant: int, params=None) -> TrackSpec:
        """The track of a context variant; a context with a `theme` follows the theme's variant 0 (melody)."""
        if params is None and self.profiles.contexts.get(ctx.name) is ctx:
            # remembered per profiles object, so a reload starts afresh; fallbacks for unknown names are not
            if self._ctx_specs[0] is not self.profiles:
                self._ctx_specs = (self.profiles, {})
            known = self._ctx_specs[1]
            spec = known.get((ctx.name, variant))
            if spec is None:
                spec = known[(ctx.name, variant)] = self._context_spec(ctx, variant, None)
            return spec
        return self._context_spec(ctx, variant, params)

    def _context_spec(self, ctx, variant: int, params) -> TrackSpec:
        theme = None
        if ctx.theme:
            theme = self.context_spec(self.profiles.get(ctx.theme), 0)
        info = {"bpm": ctx.bpm, "meter": ctx.meter, "loop": ctx.loop, "fallback": ctx.fallback}
        return self._spec(ctx.prompt, params or ctx.params_for(variant), ctx.name, variant, info, theme)

    def _spec(self, prompt, params, context, variant, info, theme=None) -> TrackSpec:
        # remembered: a track key is a hash over canonical JSON, a third of a cache hit's request handling.
        # repr keeps 10 and 10.0 apart (the header echoes params as given); the inputs are all in the key.
        memo_key = repr((prompt, params, context, variant, info, theme.key if theme is not None else None))
        spec = self._specs.get(memo_key)
        if spec is None:
            extra = {}
            if theme is not None:
                extra["theme"] = theme.key
            if shape_of(info):
                extra["shape"] = shape_of(info)
            key = track_key(self.geometry.info.identity, prompt, params, extra or None)
            spec = TrackSpec(key, prompt, params, context, variant, info, theme)
            if len(self._specs) >= 4096:
                self._specs.clear()
            self._specs[memo_key] = spec
        return spec

    def _shaper(self, spec: TrackSpec) -> Shaper:
        return Shaper(shape_of(spec.info), self.geometry.samples_for(spec.params.duration), self.geometry.sample_rate,
                      self.geometry.info.frame_rate)

    def _pick_variant(self, client: bytes, ctx) -> int:
        """Rotate through a context's variants per client, preferring ones already cached."""
        n = self.rotation.pop((client, ctx.name), 0)
        self.rotation[(client, ctx.name)] = n + 1   # re-inserted: the dict's order is least recently used first
        if len(self.rotation) > self.max_rotations:   # connections that vanished without a failed send
            del self.rotation[next(iter(self.rotation))]
        order = [(n + i) % ctx.variants for i in range(ctx.variants)]
        for v in order:
            key = self.context_spec(ctx, v).key
            if self.memo.holds(key) or self.cache.contains(key):   # the memo first: no disk read
                turn = self.context_spec(ctx, order[0])
                if v != order[0] and self.scheduler.find(turn.key) is None:
                    # answer now from the cache, and make the variant whose turn it was for next time
                    self._submit_background(turn, P.PREFETCH_PRIORITY, "prefetch")
                return v
        return order[0]

    def on_get_track(self, reply, req):
        spec = self.resolve(reply.client, req)
        job = self.scheduler.find(spec.key)
        memo_key = (spec.key, req["format"], req["sample_rate"] or self.geometry.sample_rate)
        # cached_only takes the cached audio even while the track is being generated again
        from_cache = (job is None or req["cached_only"]) and not req["regenerate"]
        memo = self.memo.get(memo_key) if from_cache else None
        if memo is not None:
            return self._send_memo(reply, req, spec, memo)
        track = self.decoded.get(spec.key) if from_cache else None
        if track is not None:   # being replayed to another request (in another format): its audio is shared
            self.counts[0] += 1
            return self._deliver(reply, req, spec, job, track)
        if from_cache and self.cache.contains(spec.key):
            # reading and checking a blob takes milliseconds per MB: a reader thread does it, the I/O thread
            # goes on serving, and delivery continues in on_event("cached")
            self.cache.pin(spec.key)
            self.readers.submit(self._read_cached, reply, req, spec)
            return
        self.counts[1] += 1   # (a disk hit, or a damaged entry's miss, is counted by cache.get)
        self._deliver(reply, req, spec, job, None)

    def _read_cached(self, reply, req, spec) -> None:
        """Reader thread."""
        try:
            track = self.cache.get(spec.key)
        except Exception:   # an unreadable entry is a miss: the track is generated again
            track = None
        self._emit(("cached", reply, req, spec, track))

    def _deliver(self, reply, req, spec, job, track) -> None:
        memo_key = (spec.key, req["format"], req["sample_rate"] or self.geometry.sample_rate)
        if track is None and req["cached_only"]:   # a generation in flight is not ready: no waiting for it
            raise TroubadourError("track not in the cache yet", code=P.NOT_FOUND)
        shaper = self._shaper(spec)
        native_frames = track.audio.shape[1] if track else shaper.frames
        delivery = Delivery(self.geometry.sample_rate, self.geometry.channels, native_frames, req["format"],
                            req["sample_rate"])
        if not req["stream"] and delivery.max_bytes() > P.MAX_TRACK_BYTES:
            raise TroubadourError(f"the track would be over {P.MAX_TRACK_BYTES} bytes in one message; "
                                  "ask with stream=true", code=P.TOO_LARGE, field="stream")
        finished = job is not None and spec.key in self.live and self.live[spec.key].finished
        header = self._header(spec, track is not None or finished, delivery)
        ts = TrackStream(reply, delivery, header, req["stream"])
        reply.stream = ts
        if track is not None:
            track.audio.setflags(write=False)   # shared by every replay of it (self.decoded)
            self.decoded[spec.key] = track
            self.cache.pin(spec.key)
            # one replay of a track x format x rate records its pieces for the memo, not each of them
            record = memo_key not in self._recording
            source = replay(ts, track.audio, self.geometry.chunk_samples, self.memo if record else None, memo_key)
            if record:
                self._recording.add(memo_key)
                source = recording(self._recording, memo_key, source)
            reply.source = pinned(self.cache, spec.key, source, track)
            # started now (the header is queued): a generator that never ran does not run its `finally` when
            # dropped, and a cancel in the same read would leave the pin and the recording behind
            reply.refill(1)
            return
        reason = "hot_swap" if req["regenerate"] else "generated"
        # joins the job in flight (one generation, both streamed) unless there is none or it was cancelled
        job, created = self.scheduler.submit(spec, req["priority"], reply, reason)
        if created:
            self.live[spec.key] = LiveTrack(job, native_frames)
        reply.job = job
        self.live[spec.key].attach(ts)

    def _header(self, spec: TrackSpec, cached: bool, delivery: Delivery) -> dict:
        header = track_header(spec, cached, delivery)
        shaper = self._shaper(spec)
        if shaper.loop:
            scale = delivery.rate / self.geometry.sample_rate
            header["loop_start"], header["loop_end"] = (round(x * scale) for x in shaper.loop)
        if spec.info.get("fallback") is not None:
            header["fallback"] = spec.info["fallback"]
        return header

    def _send_memo(self, reply, req, spec, entry) -> None:
        """A remembered track; its streamed header is prebuilt once per (context, variant, profile info)."""
        self.counts[0] += 1
        rate = req["sample_rate"] or self.geometry.sample_rate

        def header() -> dict:
            delivery = Delivery(self.geometry.sample_rate, self.geometry.channels,
                                round(entry.frames * self.geometry.sample_rate / rate), req["format"], rate)
            return {**self._header(spec, True, delivery), "frames": entry.frames}

        key = (spec.context, spec.variant, repr(spec.info))
        if not req["stream"]:
            if entry.nbytes > P.MAX_TRACK_BYTES:
                raise TroubadourError(f"the track is over {P.MAX_TRACK_BYTES} bytes in one message; ask with "
                                      "stream=true", code=P.TOO_LARGE, field="stream")
            reply.send_prebuilt(self.memo.whole(entry, key, header))
            return
        reply.source = replay_memo(reply, entry, entry.header(key, header))

    def on_prefetch(self, reply, req):
        specs = []
        for i, name in enumerate(req["contexts"]):
            if name not in self.profiles.contexts:
                raise TroubadourError(f"unknown context {name!r}{did_you_mean(name, self.profiles.contexts)}",
                                      code=UNKNOWN_CONTEXT, field=f"contexts[{i}]")
        for name in dict.fromkeys(req["contexts"]):   # duplicates ignored
            ctx = self.profiles.get(name)
            count = ctx.variants if req["variants"] == "all" else min(req["variants"], ctx.variants)
            for v in range(count):
                specs.append(self.context_spec(ctx, v))
        running = {s.key for s in specs if self.scheduler.find(s.key) is not None}
        jobs = [(s, s.key not in running and self.cache.contains(s.key)) for s in specs]
        new = {s.key for s, cached in jobs if not cached and s.key not in running}
        room = self.scheduler.room()
        if len(new) > room:   # all or nothing: a busy prefetch queues none of its tracks
            raise TroubadourError(f"the generation queue has room for {room} of the {len(new)} tracks this "
                                  "prefetch needs; retry later", code="busy")
        for spec, cached in jobs:
            if not cached:
                self._submit_background(spec, req["priority"], "prefetch")
        rows = [{"context": s.context, "variant": s.variant, "track_id": s.key, "cached": c} for s, c in jobs]
        reply.send(P.ACCEPTED, final=not req["stream"], jobs=rows)
        if req["stream"]:
            state = PrefetchState(reply, jobs)
            for key in state.pending:
                self.prefetches.setdefault(key, []).append(state)
            state.finish_if_done()

    def _submit_background(self, spec: TrackSpec, priority: int, reason: str):
        job, created = self.scheduler.submit(spec, priority, BACKGROUND, reason)
        if created:
            self.live[spec.key] = LiveTrack(job, self._shaper(spec).frames)
        return job

    # ------------------------------------------------------------------ clients going away
    def _detach(self, reply) -> None:
        if reply.stream is not None and reply.job is not None:
            live = self.live.get(reply.job.key)
            if live is not None:
                live.detach(reply.stream)
        if reply.job is not None and self.scheduler.release(reply.job, reply):
            self._drop_unstarted(reply.job)
        reply.source = None
        for states in self.prefetches.values():
            states[:] = [s for s in states if s.reply is not reply]

    def _drop_unstarted(self, job) -> None:
        """A job just cancelled: if it never started, no engine event will clear its live entry."""
        live = self.live.get(job.key)
        if job.state == "cancelled" and live is not None and live.job is job:
            del self.live[job.key]

    def _forget_subscription(self, client: bytes) -> None:
        self.subscribers.pop(client, None)
        self.waiting_subs.pop(client, None)

    def drop_client(self, client: bytes, why: str) -> None:
        """The connection is gone: forget everything about it. Constant time for a client holding no replies
        (one broadcast can find thousands of vanished subscribers); its variant turns age out of `rotation`."""
        if self.replies.count.get(client):
            for key in [k for k in self.replies if k[0] == client]:
                reply = self.replies.pop(key)
                self._detach(reply)
                reply.outbox.clear()
        self._forget_subscription(client)

    def drop_stream(self, reply, why: str) -> None:
        """A client stopped reading this request: free its backlog and end it with one error it can act on.
        Its generation goes on for the cache (owned by the background), as the error tells the client."""
        if reply.job is not None:
            self.scheduler.adopt(reply.job, BACKGROUND)
        self._detach(reply)
        reply.outbox.clear()
        reply.closed = False
        state = "cached" if reply.kind == P.GET_TRACK and reply.job is None else "still generated and cached"
        reply.fail(TroubadourError(f"the stream was dropped: {why}; the track is {state}, ask again", code=P.BUSY))
        reply.outbox.extend(reply.trailer)   # e.g. the `cancelled` reply that must follow this stream's end
