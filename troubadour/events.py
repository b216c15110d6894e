"""Events reaching the server's I/O thread from its other threads (mixed into server.Server): the engine
thread's progress, audio, results, failures and its model loading, cache reads finished by reader threads,
and profile-file edits from the watcher (hot-swap: the profiles reloaded, changed contexts regenerated)."""

from __future__ import annotations

from . import protocol as P
from .errors import ENGINE_DEAD, TroubadourError
from .parse import RequestParser
from .jobs import BACKGROUND, TrackSpec
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
                _, changed, regenerating = self.reload_profiles()
                for note in self.profiles.notes:
                    self.log(f"warning: {note}")
                self.log(f"profiles reloaded: {', '.join(changed) if changed else 'no context sounds different'}"
                         + (f" (regenerating {regenerating} track{'s' * (regenerating != 1)})" if regenerating else ""))
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
            _, job, _audio, meta = event
            self._log_made(job, meta)
            self.memo.drop(job.key)   # a regenerated track replaces what was delivered before
            self.decoded.pop(job.key, None)
            if self.live.get(job.key) is not None and self.live[job.key].job is job:
                del self.live[job.key]
            if job.reason != "hot_swap" or self._current(job.spec):   # not a superseded edit's
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
        """Load the profiles file again: (context names, changed contexts, tracks to regenerate). A variant
        changed when its track key did (prompt, params, shape, or its theme's track); only those regenerate."""
        try:
            new = load_profiles(self.profiles_path)
            check_model_support(new, self.geometry.info)   # (a file with no contexts is refused by the loader)
        except TroubadourError as e:
            for s in self.subscribers.values():
                s.push("profiles_error", message=e.message, file=str(self.profiles_path or ""))
            raise
        before = self._variant_specs()
        self.profiles = new
        after = self._variant_specs()
        moved = [spec for k, spec in after.items() if k not in before or before[k].key != spec.key]
        changed = sorted({spec.context for spec in moved} | {n for n, v in before if (n, v) not in after})
        for s in self.subscribers.values():
            s.push("profiles_changed", contexts=changed)
        current = {spec.key for spec in after.values()}
        superseded = []
        for old in before.values():   # an earlier edit's regeneration nobody wants any more
            job = self.scheduler.find(old.key)
            if job is not None and job.reason == "hot_swap" and old.key not in current:
                if self.scheduler.release(job, BACKGROUND):
                    superseded.append(job)
        deferred = []   # the new profiles are in use: a full queue only delays their regeneration
        for spec in moved:
            if self.scheduler.find(spec.key) is None and self.cache.contains(spec.key):
                self._track_ready(spec, "hot_swap")   # e.g. an edit undone: the old audio is back
                continue
            try:
                self._submit_background(spec, P.PREFETCH_PRIORITY, "hot_swap")
            except TroubadourError as e:
                if e.code != "busy":
                    raise
                deferred.append(f"{spec.context}#{spec.variant}")
        if deferred:
            self.log(f"queue full: {', '.join(deferred)} not regenerated now (generated when next asked for)")
        for job in superseded:
            self._superseded(job, after)
        return new.names(), changed, len(moved) - len(deferred)

    def _superseded(self, job, after: dict) -> None:
        """A hot-swap regeneration cancelled by a newer edit. Streaming prefetches that waited for it wait for
        the version that replaced it (they waited forever: a job cancelled in the queue sends no event), and
        its live entry goes if it never started (no engine event will clear it)."""
        self._drop_unstarted(job)
        for state in self.prefetches.pop(job.key, []):
            for ctx, variant in state.pending.pop(job.key, ()):
                spec = after.get((ctx, variant))
                if spec is not None and self.scheduler.find(spec.key) is not None:
                    state.pending.setdefault(spec.key, []).append((ctx, variant))
                    waiting = self.prefetches.setdefault(spec.key, [])
                    if state not in waiting:
                        waiting.append(state)
                elif spec is not None and self.cache.contains(spec.key):
                    state.cached += 1
                else:
                    why = (f"context {ctx!r} variant {variant} is no longer in the profiles" if spec is None else
                           "the queue was full when the profiles changed; it is generated when next asked for")
                    state.failed.append({"context": ctx, "variant": variant,
                                         "error": {"code": "unknown_context" if spec is None else "busy",
                                                   "message": why}})
            state.finish_if_done()

    def _variant_specs(self) -> dict:
        return {(name, v): self.context_spec(ctx, v)
                for name, ctx in self.profiles.contexts.items() for v in range(ctx.variants)}

    def _current(self, spec: TrackSpec) -> bool:
        ctx = self.profiles.contexts.get(spec.context)
        return ctx is not None and spec.variant < ctx.variants and self.context_spec(ctx, spec.variant).key == spec.key

    def _log_made(self, job, meta: dict) -> None:
        """One line per generated track: a developer sees the server work, and how fast this machine is."""
        s = job.spec
        name = f"{s.context}#{s.variant}" if s.context is not None else repr(s.prompt[:40])
        seconds, length = meta.get("generation_seconds", 0.0), s.params.duration
        batch = meta.get("batch_size", 1)
        together = f", batch of {batch}" if batch > 1 else ""
        self.log(f"{name}: {length:g} s of audio made in {seconds:.1f} s ({seconds / length:.2f}x real time"
                 f"{together}; {job.reason})")

    def _track_ready(self, spec: TrackSpec, reason: str) -> None:
        if spec.context is None:
            return
        for s in self.subscribers.values():
            s.push("track_ready", context=spec.context, variant=spec.variant, track_id=spec.key, reason=reason)
