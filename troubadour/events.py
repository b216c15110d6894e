"""Events reaching the server's I/O thread from its other threads (mixed into server.Server): the engine
thread's progress, audio, results, failures and its model loading, cache reads finished by reader threads,
and profile-file edits from the watcher (hot-swap: the profiles reloaded, changed contexts regenerated)."""

from __future__ import annotations

from . import protocol as P
from .errors import ENGINE_DEAD, TroubadourError
from .parse import RequestParser
from .jobs import TrackSpec
from .profiles import check_model_support, load_profiles


# what cached tracks were named and shaped by while the model loaded
SAME_WHEN_LOADED = ("identity", "sample_rate", "frame_rate", "channels", "num_codebooks", "melody")


class Events:
    # ------------------------------------------------------------------ engine events
    def on_event(self, event) -> None:
        kind = event[0]
        if kind == "profiles_file" and self.geometry is None:
            if (None, None) not in self.held:   # reloaded once the model is ready: checked against it
                self.held.append((None, None))
        elif kind == "profiles_file":
            # said in the server's terminal too: a developer editing the file may have no subscriber open
            try:
                _, changed = self.reload_profiles()
                self.log(f"profiles reloaded: {', '.join(changed) if changed else 'no context sounds different'}"
                         + (" (regenerating)" if changed else ""))
            except TroubadourError as e:   # subscribers got profiles_error; the old profiles stay
                self.log(f"profiles file not loaded, the previous profiles stay: {e.message}")
        elif kind == "cached":
            _, reply, req, spec, track = event
            try:
                if not reply.closed and self.replies.get(reply.key) is reply:
                    job = self.scheduler.find(spec.key) if track is None else None
                    self._deliver(reply, req, spec, job, track)
            except TroubadourError as e:
                reply.fail(e)
            finally:
                self.cache.unpin(spec.key)
        elif kind == "progress":
            _, job, done, total = event
            fields = {"track_id": job.key, "done_steps": done, "total_steps": total}
            if job.spec.context is not None:
                fields.update(context=job.spec.context, variant=job.spec.variant)
            for state in self.prefetches.get(job.key, []):
                state.reply.send(P.PROGRESS, **fields)
            for s in self.subscribers.values():
                s.push("progress", **fields)
        elif kind == "chunk":
            _, job, _start, audio, final = event
            live = self.live.get(job.key)
            if live is not None and live.job is job:
                live.add(audio, final)
        elif kind == "done":
            _, job, _audio, _meta = event
            self.memo.drop(job.key)   # a regenerated track replaces what was delivered before
            if self.live.get(job.key) is not None and self.live[job.key].job is job:
                del self.live[job.key]
            self._track_ready(job.spec, job.reason)
            for state in self.prefetches.pop(job.key, []):
                state.generated += len(state.pending.pop(job.key, ()))
                state.finish_if_done()
        elif kind == "failed":
            _, job, err = event
            live = self.live.get(job.key)
            if live is not None and live.job is job:   # not a newer job's (this one may have been cancelled)
                del self.live[job.key]
                for ts in live.streams:
                    ts.reply.fail(err)
            if self.scheduler.find(job.key) is not None:
                return   # a newer generation of the track goes on: prefetches wait for it
            for state in self.prefetches.pop(job.key, []):
                for ctx, variant in state.pending.pop(job.key, ()):
                    state.failed.append({"context": ctx, "variant": variant, "error": err.to_dict()})
                state.finish_if_done()
        elif kind == "dead":
            err = event[1]
            self.dead = TroubadourError(f"the engine stopped: {err.message}", code=ENGINE_DEAD)
            self.fail_all(self.dead)
        elif kind == "ready":
            self._model_ready(event[1])
        elif kind == "load_failed":
            self._model_failed(event[1])

    # ------------------------------------------------------------------ the model loaded (or not)
    def _model_ready(self, engine) -> None:
        if self.geometry is not None:   # what was served meanwhile was named and shaped by the config
            was, now = self.geometry.info, engine.info
            if any(getattr(was, f) != getattr(now, f) for f in SAME_WHEN_LOADED):
                return self._model_failed(TroubadourError(f"{now.model_id} changed while it loaded"),
                                          "the model is not the one described")
        else:
            try:
                check_model_support(self.profiles, engine.info)
            except TroubadourError as e:   # e.g. a melody theme for a text-only checkpoint: as at startup
                return self._model_failed(e, "the model cannot play these profiles")
        self.engine = self.geometry = engine
        self.parse = RequestParser(engine.max_duration)
        if self._ready:
            self._ready(self)
        held, self.held = self.held, []
        for reply, req in held:
            if reply is None:
                self.on_event(("profiles_file",))
            elif not reply.closed and self.replies.get(reply.key) is reply:   # not cancelled or gone meanwhile
                self._handle(reply, req)

    def _model_failed(self, exc: Exception, what: str = "the model did not load") -> None:
        """Held requests get engine_dead; the loop exits once they are sent and serve_forever raises `exc`."""
        message = exc.message if isinstance(exc, TroubadourError) else f"{type(exc).__name__}: {exc}"
        self.log(f"{what}: {message}")
        self.fatal = exc
        self.dead = TroubadourError(f"{what}: {message}", code=ENGINE_DEAD)
        self.held = []
        self.fail_all(self.dead)

    # ------------------------------------------------------------------ hot-swap
    def reload_profiles(self):
        try:
            new = load_profiles(self.profiles_path)
            check_model_support(new, self.geometry.info)
        except TroubadourError as e:
            for s in self.subscribers.values():
                s.push("profiles_error", message=e.message, file=str(self.profiles_path or ""))
            raise
        old = self.profiles
        changed = sorted(n for n in set(old.contexts) | set(new.contexts)
                         if n not in old.contexts or n not in new.contexts
                         or old.contexts[n].audio_key() != new.contexts[n].audio_key()
                         or old.contexts[n].variants != new.contexts[n].variants)
        self.profiles = new
        for s in self.subscribers.values():
            s.push("profiles_changed", contexts=changed)
        deferred = []   # the new profiles are in use: a full queue only delays their regeneration
        for name in changed:
            ctx = new.contexts.get(name)
            for v in range(ctx.variants if ctx else 0):
                spec = self.context_spec(ctx, v)
                if self.scheduler.find(spec.key) is None and self.cache.contains(spec.key):
                    self._track_ready(spec, "hot_swap")   # e.g. an edit undone: the old audio is back
                    continue
                try:
                    self._submit_background(spec, P.PREFETCH_PRIORITY, "hot_swap")
                except TroubadourError as e:
                    if e.code != "busy":
                        raise
                    deferred.append(f"{name}#{v}")
        if deferred:
            self.log(f"queue full: {', '.join(deferred)} not regenerated now (generated when next asked for)")
        return new.names(), changed

    def _track_ready(self, spec: TrackSpec, reason: str) -> None:
        if spec.context is None:
            return
        for s in self.subscribers.values():
            s.push("track_ready", context=spec.context, variant=spec.variant, track_id=spec.key, reason=reason)
