"""Backend over Hugging Face transformers' MusicGen (and MusicGen-Melody) checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ModelLoadError
from .base import Backend, ModelInfo, pick_device

_HELP = ("Pass --model with a local checkpoint directory, or a hub id such as facebook/musicgen-small on a "
         "machine that can download it (or with the files already in the Hugging Face cache). "
         "`troubadour make-test-model DIR` writes a tiny test model that produces noise.")


class TransformersBackend(Backend):
    def __init__(self, model, tokenizer, model_id: str, device: str, identity: str):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.decoder = model.decoder
        self.melody = type(model).__name__.startswith("MusicgenMelody")
        self.torch_device = torch.device(device)
        self._panel_lstm = None   # (kernel, codec_stream.PanelLSTM): the codec LSTM packed once per kernel
        self.dtype = next(model.parameters()).dtype
        self.info = _model_info(model.config, model_id, identity, device, str(self.dtype).replace("torch.", ""),
                                self.melody)

    def encode_text(self, prompts: list[str]):
        import torch

        tok = self.tokenizer(prompts, padding=True, return_tensors="pt")
        ids = tok["input_ids"].to(self.torch_device)
        mask = tok["attention_mask"].to(self.torch_device)
        with torch.inference_mode():
            hidden = self.model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            proj = getattr(self.model, "enc_to_dec_proj", None)
            if proj is not None:
                hidden = proj(hidden)
            hidden = hidden * mask[..., None].to(hidden.dtype)
        return hidden, mask

    def text_lengths(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(prompts)["input_ids"]]

    def melody_prefix(self, hidden, chroma: list):
        """musicgen-melody's conditioning: chroma frames then text, prepended to the decoder input.

        `hidden` holds the text rows (unconditional rows included, as zeros); `chroma` has one (frames, 12)
        array or None per row of `hidden`. None is the null melody: pitch class 0 everywhere, as upstream."""
        import torch

        cfg = self.model.config
        length, n = int(cfg.chroma_length), int(cfg.num_chroma)
        null = torch.zeros(length, n)
        null[:, 0] = 1
        rows = []
        for ch in chroma:
            if ch is None:
                rows.append(null)
            else:
                t = torch.as_tensor(ch, dtype=torch.float32)
                rows.append(t.repeat(-(-length // t.shape[0]), 1)[:length])   # loop a short melody
        audio = torch.stack(rows).to(self.torch_device, self.dtype)
        proj = getattr(self.model, "audio_enc_to_dec_proj", None)
        with torch.inference_mode():
            if proj is not None:
                audio = proj(audio)
            return torch.cat([audio, hidden], dim=1)

    def decode_audio(self, codes):
        import torch

        enc = self.model.audio_encoder
        with torch.inference_mode():
            if self.info.channels == 1:
                return enc.decode(codes[None], audio_scales=[None] * codes.shape[0]).audio_values
            left = enc.decode(codes[None, :, ::2], audio_scales=[None] * codes.shape[0]).audio_values
            right = enc.decode(codes[None, :, 1::2], audio_scales=[None] * codes.shape[0]).audio_values
            return torch.cat([left, right], dim=1)

    def stream_decoder(self, lookahead_frames: int, gemv=None):
        from .. import codec_stream

        enc = self.model.audio_encoder
        if not codec_stream.supports(enc, lookahead_frames):
            return None
        lstm = enc.decoder.layers[1].lstm
        if codec_stream.PanelLSTM.usable(lstm, gemv):
            if self._panel_lstm is None or self._panel_lstm[0] is not gemv:
                self._panel_lstm = (gemv, codec_stream.PanelLSTM(lstm, gemv))
            return codec_stream.StreamDecoder(enc, self.info.channels, self._panel_lstm[1])
        return codec_stream.StreamDecoder(enc, self.info.channels)


def model_identity(model_id: str, path: Path | None) -> str:
    """Stable id of the weights: config plus weight files' sizes and edge bytes (no full read of GBs)."""
    h = hashlib.sha256(model_id.encode() if path is None else b"local")
    if path is not None:
        for name in sorted(os.listdir(path)):
            f = path / name
            if not f.is_file():
                continue
            if name.endswith(".json"):
                h.update(name.encode() + f.read_bytes())
            elif name.endswith((".safetensors", ".bin")):
                size = f.stat().st_size
                h.update(f"{name}:{size}".encode())
                with open(f, "rb") as fh:
                    h.update(fh.read(1 << 16))
                    fh.seek(max(0, size - (1 << 16)))
                    h.update(fh.read())
    return h.hexdigest()[:16]


def load_backend(model_id: str, device: str | None = "auto", dtype: str | None = None) -> TransformersBackend:
    """Load a MusicGen checkpoint by hub id or directory; failures raise ModelLoadError with advice."""
    import torch

    device = pick_device(device)
    local, is_dir = _source(model_id)
    source = str(local) if is_dir else model_id
    try:
        config = _quiet(lambda: json.loads((local / "config.json").read_text()) if is_dir else None)
        kind = (config or {}).get("model_type", "melody" if "melody" in model_id else "musicgen")
        from transformers import AutoTokenizer, MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

        cls = MusicgenMelodyForConditionalGeneration if "melody" in kind else MusicgenForConditionalGeneration
        if dtype is None:
            dtype = _default_dtype(device)
        kw = {} if is_dir else {"local_files_only": True}
        try:
            model = _quiet(lambda: cls.from_pretrained(source, dtype=getattr(torch, dtype), **kw))
        except OSError:
            if is_dir or _offline():
                raise
            kw = {}   # not in the local Hugging Face cache: download it
            model = _quiet(lambda: cls.from_pretrained(source, dtype=getattr(torch, dtype)))
        # only the tokenizer: musicgen-melody's feature extractor needs torchaudio, and we compute chroma ourselves
        tokenizer = _quiet(lambda: AutoTokenizer.from_pretrained(source, **kw))
    except ModelLoadError:
        raise
    except OSError as exc:
        if not is_dir and _offline():
            raise ModelLoadError(f"model {model_id!r} is not in the local Hugging Face cache and the hub cannot be "
                                 f"reached (offline). {_HELP}", field="model") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model {model_id!r} could not be loaded ({first[:300]}). {_HELP}",
                             field="model") from None
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors with long texts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model {model_id!r} could not be loaded ({type(exc).__name__}: {first[:300]}). "
                             f"{_HELP}", field="model") from None
    if not hasattr(model, "decoder") or not hasattr(model, "audio_encoder"):
        raise ModelLoadError(f"model {model_id!r} is not a MusicGen checkpoint. {_HELP}", field="model")
    model.to(device).eval()
    _fold_weight_norm(model.audio_encoder)
    return TransformersBackend(model, tokenizer, model_id, device, model_identity(model_id, local if is_dir else None))


def _source(model_id: str) -> tuple[Path, bool]:
    """(path, is a directory); a name that is neither a checkpoint directory nor a hub id is refused."""
    local = Path(model_id).expanduser()
    is_dir = local.is_dir()
    if not is_dir and not _hub_like(model_id):
        raise ModelLoadError(f"model {model_id!r}: no such directory. {_HELP}", field="model")
    if is_dir and not (local / "config.json").is_file():
        raise ModelLoadError(f"model {model_id!r}: the directory has no config.json, so it is not a MusicGen "
                             f"checkpoint. {_HELP}", field="model")
    return local, is_dir


def describe_model(model_id: str, device: str | None = "auto") -> tuple[dict, ModelInfo | None]:
    """What the server says and needs of a model before its weights load: `info.model` (id, identity and
    device, plus the native rate and channels when known) and the ModelInfo load_backend will give, from the
    checkpoint's config when it is on disk (a directory, or the Hugging Face cache), else None. Refuses up
    front what load_backend would refuse."""
    local, is_dir = _source(model_id)
    device = pick_device(device)
    summary = {"id": model_id, "identity": model_identity(model_id, local if is_dir else None), "device": device}
    try:
        from transformers import AutoConfig

        cfg = _quiet(lambda: AutoConfig.from_pretrained(str(local) if is_dir else model_id, local_files_only=True))
        info = _model_info(cfg, model_id, summary["identity"], device, _default_dtype(device),
                           "melody" in cfg.model_type)
    except (OSError, ValueError, KeyError, AttributeError, TypeError):   # not on disk, or not MusicGen's
        return summary, None
    return {**summary, "sample_rate": info.sample_rate, "channels": info.channels}, info


def _model_info(cfg, model_id: str, identity: str, device: str, dtype: str, melody: bool) -> ModelInfo:
    """ModelInfo from a MusicGen (or MusicGen-Melody) transformers config."""
    audio_cfg, dec = cfg.audio_encoder, cfg.decoder
    return ModelInfo(model_id=model_id, identity=identity, device=device, dtype=dtype,
                     sample_rate=int(audio_cfg.sampling_rate), frame_rate=int(audio_cfg.frame_rate),
                     channels=int(getattr(dec, "audio_channels", 1)), num_codebooks=int(dec.num_codebooks),
                     max_frames=int(dec.max_position_embeddings), melody=melody)


def _default_dtype(device: str) -> str:
    return "float16" if device.startswith(("cuda", "mps")) else "float32"


def _fold_weight_norm(module) -> None:
    """EnCodec's convolutions carry weight normalisation, recomputed from g and v on every call (7 % of a
    decode, measured); for inference the weight is computed once, the same value each call produced."""
    from torch.nn.utils import parametrize

    for m in module.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def _offline() -> bool:
    """True when the hub cannot be reached; checked up front because the hub client retries for ~20 s."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return False
    except OSError:
        return True


def _hub_like(model_id: str) -> bool:
    """`owner/name` with no path markers: try the hub (or its local cache) rather than the file system."""
    parts = model_id.split("/")
    return len(parts) == 2 and all(parts) and not model_id.startswith((".", "~")) and not os.path.exists(model_id)


def _quiet(fn):
    """Run fn with transformers' logging at error level (real checkpoints trigger harmless config warnings)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return fn()
    finally:
        hf_logging.set_verbosity(old)
        hf_logging.enable_progress_bar()
