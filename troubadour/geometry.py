"""What naming and shaping a track needs of a model: rates, frames, chunk size. Known from the checkpoint's
config before the weights load (backends.describe_model), so the server serves cached tracks meanwhile;
the Engine is one too."""

from __future__ import annotations

from .params import MAX_DURATION

CHUNK_FRAMES = 25      # audio leaves every 0.5 s of generated music (codec frames, 50 per second)


class Geometry:
    """A model's track geometry from its ModelInfo."""

    def __init__(self, info, max_duration: float = MAX_DURATION, chunk_frames: int = CHUNK_FRAMES):
        self.info, self.max_duration, self.chunk_frames = info, max_duration, chunk_frames
        self._hop = info.sample_rate // info.frame_rate

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def channels(self) -> int:
        return self.info.channels

    def frames_for(self, duration: float) -> int:
        return max(1, int(round(duration * self.info.frame_rate)))

    def samples_for(self, duration: float) -> int:
        return self.frames_for(duration) * self._hop

    @property
    def chunk_samples(self) -> int:
        return self.chunk_frames * self._hop
