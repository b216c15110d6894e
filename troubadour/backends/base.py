"""The backend interface: what the engine needs from a loaded MusicGen-style model."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "facebook/musicgen-small"


@dataclass(frozen=True)
class ModelInfo:
    model_id: str          # hub id or local directory as given by the user
    identity: str          # hash of config + weights: part of every cache key
    device: str
    dtype: str
    sample_rate: int
    frame_rate: int
    channels: int
    num_codebooks: int
    max_frames: int        # positional window of the decoder
    melody: bool           # conditions by a prefix (musicgen-melody) instead of cross-attention

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Backend:
    """A loaded model. The engine runs its decode loop over `decoder`'s modules.

    encode_text(prompts) -> (hidden (B, T, D_dec), mask (B, T)): conditioning for the decoder, already
        projected to the decoder width and zeroed where masked.
    decode_audio(codes (B, K, T) long) -> float tensor (B, channels, T * hop).
    """

    info: ModelInfo
    decoder = None  # a transformers MusicgenForCausalLM-like module

    def encode_text(self, prompts: list[str]):
        raise NotImplementedError

    def decode_audio(self, codes):
        raise NotImplementedError


def pick_device(requested: str | None = "auto") -> str:
    import torch

    if requested and requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"
