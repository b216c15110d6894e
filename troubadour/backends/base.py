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

    def text_lengths(self, prompts: list[str]) -> list[int]:
        """Tokens per prompt, as encode_text counts them (melody models batch equal lengths only)."""
        raise NotImplementedError

    def stream_decoder(self, lookahead_frames: int, gemv=None):
        """A per-track decoder that carries the codec's state from chunk to chunk (codec_stream.py), or None:
        the engine then decodes each chunk from its codes with left context. gemv: the native kernel, if the
        engine uses it (the codec's LSTM then runs its recurrent matmul there)."""
        return None


def pick_device(requested: str | None = "auto") -> str:
    import torch

    if requested and requested != "auto":
        _check_device(requested)
        return requested
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _check_device(requested: str) -> None:
    """An unknown or absent device is a bad --device value, not a traceback from deep inside torch."""
    import torch

    from ..errors import ValidationError

    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValidationError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}",
                              field="device")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValidationError(f"--device {requested}: no CUDA device (this PyTorch has no CUDA, or no GPU is "
                                  "visible); use --device auto or cpu", field="device")
        if device.index is not None and device.index >= count:
            raise ValidationError(f"--device {requested}: only {count} CUDA device(s)", field="device")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValidationError(f"--device {requested}: MPS is not available here; use --device auto or cpu",
                                  field="device")
