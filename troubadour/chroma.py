"""Chroma (pitch-class) features of a melody, as MusicGen-Melody was trained on them.

Same recipe as transformers' MusicgenMelodyFeatureExtractor (power spectrogram, librosa chroma filter bank,
one-hot of the strongest pitch class per frame), written on torch.stft so it needs no torchaudio.
"""

from __future__ import annotations

import numpy as np
import torch


def chroma_features(audio: np.ndarray, sample_rate: int = 32000, n_fft: int = 16384, hop_length: int = 4096,
                    num_chroma: int = 12) -> np.ndarray:
    """(channels, samples) audio at the model's rate -> (frames, num_chroma) one-hot chroma."""
    from transformers.audio_utils import chroma_filter_bank

    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if wav.ndim == 2:
        wav = wav.mean(dim=0)
    if wav.shape[-1] < n_fft:
        pad = n_fft - wav.shape[-1]
        wav = torch.nn.functional.pad(wav, (pad // 2, pad - pad // 2))
    window = torch.hann_window(n_fft)
    spec = torch.stft(wav, n_fft, hop_length=hop_length, window=window, center=True, pad_mode="reflect",
                      return_complex=True).abs().pow(2) / window.pow(2).sum()
    filters = torch.from_numpy(chroma_filter_bank(sampling_rate=sample_rate, num_frequency_bins=n_fft, tuning=0,
                                                  num_chroma=num_chroma)).float()
    raw = filters @ spec                                   # (chroma, frames)
    best = raw.argmax(dim=0)
    out = torch.zeros(raw.shape[1], num_chroma)
    out[torch.arange(raw.shape[1]), best] = 1.0
    return out.numpy()
