"""Where `troubadour bake` gets raw model audio: a local engine (loaded on first use) or a running server."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProfileError, TroubadourError

if TYPE_CHECKING:
    from .bake import TrackPlan


class EngineSource:
    """A local engine, or a model loaded on first use (a bake with nothing to generate never loads it).
    The variants of one context are one engine.generate batch."""

    def __init__(self, engine=None, *, model: str | None = None, device: str = "auto", log=None,
                 compile_step: bool = False):
        from .backends.transformers_backend import model_identity
        from .params import MAX_DURATION

        self._engine, self._model, self._device, self._log = engine, model, device, log
        self._compile = compile_step
        if engine is not None:
            self.model_id, self.identity, self.max_duration = (engine.info.model_id, engine.info.identity,
                                                               engine.max_duration)
        else:   # the identity load_backend computes, without loading anything
            local = Path(model).expanduser()
            self.model_id, self.identity = model, model_identity(model, local if local.is_dir() else None)
            self.max_duration = MAX_DURATION

    @property
    def engine(self):
        if self._engine is None:
            from .backends import load_backend
            from .engine import Engine

            backend = load_backend(self._model, self._device)
            if backend.info.identity != self.identity:
                raise TroubadourError(f"model {self._model!r} changed while loading", field="model")
            if self._log:
                self._log(f"model {backend.info.model_id} on {backend.info.device}")
            self._engine = Engine(backend, max_duration=self.max_duration, compile_step=self._compile,
                                  same_thread=True)   # a bake generates on the thread that loads the model
        return self._engine

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    def check_themes(self, profiles, names) -> None:
        from .profiles import check_model_support

        check_model_support(profiles, self.engine.info)

    def render(self, plans: list[TrackPlan], progress, melody=None) -> list:
        from .engine import Job

        jobs = [Job(p.context.prompt, p.params, melody) for p in plans]
        return [r.audio for r in self.engine.generate(jobs, progress=lambda d, t: progress(d / t))]

    def close(self) -> None:
        pass


class ServerSource:
    """A running troubadour server, asked for raw native-rate float PCM."""

    def __init__(self, address: str, timeout: float = 10.0, log=None, *, retries: int = 3,
                 server_key: str | None = None, client_key: str | None = None):
        import time

        from .client import Client

        self.client = Client(address, timeout=timeout, retries=retries, server_key=server_key, client_key=client_key)
        # a server started just before the bake may still be loading its model (and not know its rate yet)
        said = False
        while self.client.health()["status"] == "loading":
            if log and not said:
                log("waiting for the server to load its model")
                said = True
            time.sleep(0.25)
        info = self.client.info()
        self.model_id, self.identity = info["model"]["id"], info["model"]["identity"]
        self.sample_rate = int(info["model"]["sample_rate"])
        self.max_duration = float(info["limits"]["max_duration"])

    def check_themes(self, profiles, names) -> None:
        raise ProfileError(f"--server cannot bake contexts that follow a theme ({', '.join(names)}): the protocol "
                           "sends no melody; bake them with --model and a musicgen-melody checkpoint", field="theme")

    def render(self, plans: list[TrackPlan], progress, melody=None) -> list:
        return [self._fetch(p, lambda f, i=i: progress((i + f) / len(plans))) for i, p in enumerate(plans)]

    def _fetch(self, plan: TrackPlan, progress):
        from .audio import from_pcm
        from .client import Chunk

        # By prompt + full params, not context name: the audio follows the profiles file being baked
        # whatever the server loaded, and arrives raw (the server shapes only context tracks).
        parts, header = [], None
        with self.client.stream_track(prompt=plan.context.prompt, params=plan.params.to_dict(),
                                      format="pcm_f32le") as ts:
            for item in ts:
                if isinstance(item, Chunk):
                    parts.append(item.data)
                    progress((item.offset + item.frames) / max(header["frames"], 1))
                else:
                    header = item
        if header["sample_rate"] != self.sample_rate:
            raise TroubadourError(f"server sent {header['sample_rate']} Hz, not {self.sample_rate}")
        return from_pcm(b"".join(parts), header["channels"], "f32le")

    def close(self) -> None:
        self.client.close()
