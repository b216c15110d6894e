"""Where a streamed track's chunks start and end: each chunk is decoded with context on both sides.

The codec's LSTM and convolutions need left context to settle and a few frames of lookahead (its convs are
not causal), so a chunk of frames [emitted, end) decodes the window [emitted - context, end + lookahead) and
keeps only its own part. The engine decodes the windows (rows due at the same step in one call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Chunk:
    row: int                 # index of the job in the batch
    start: int               # first sample of this chunk within the track
    audio: np.ndarray        # (channels, samples) float32
    final: bool = False
    codes: np.ndarray | None = None   # on the final chunk: (codebooks, frames) int64


class RowCodes:
    """One track's codes as they arrive, and the windows its chunks decode from."""

    def __init__(self, total: int, codebooks: int, device, hop: int, chunk_frames: int, context_frames: int,
                 lookahead_frames: int):
        self.total, self.hop = total, hop
        self.chunk_frames, self.context_frames, self.lookahead_frames = chunk_frames, context_frames, lookahead_frames
        self.codes = torch.empty((codebooks, total), dtype=torch.long, device=device)
        self.filled = 0
        self.emitted = 0
        self.codec = None   # a backend's stream decoder (codec_stream.py), when it has one

    def push(self, codes: torch.Tensor) -> tuple[int, int, int, bool] | None:
        """Appends new frames; returns the window (lo, hi, end, final) to decode when a chunk is due."""
        n = codes.shape[1]
        self.codes[:, self.filled:self.filled + n] = codes
        self.filled += n
        final = self.filled == self.total
        end = self.filled if final else self.filled - self.lookahead_frames
        if final or end - self.emitted >= self.chunk_frames:
            lo = max(0, self.emitted - self.context_frames)
            return lo, min(self.filled, end + self.lookahead_frames), end, final
        return None

    def decode(self, window, decode_audio) -> Chunk:
        """The due chunk: from the codec's carried state where the row has one, else by decoding the window's
        codes again with `decode_audio` (codes (1, K, n) -> (1, channels, samples))."""
        lo, hi, end, final = window
        if self.codec is not None:   # audio from frame `emitted` on: nothing to trim before it
            audio = self.codec.chunk(self.codes[:, :self.filled], self.emitted, end, final)
            return self._emit(audio, self.emitted, end, final)
        return self._emit(decode_audio(self.codes[None, :, lo:hi])[0], lo, end, final)

    def _emit(self, audio: torch.Tensor, lo: int, end: int, final: bool) -> Chunk:
        """The chunk from audio decoded from frame `lo` on: its frames emitted..end, without the context on
        either side."""
        audio = audio[:, (self.emitted - lo) * self.hop:(end - lo) * self.hop].float().cpu().numpy()
        chunk = Chunk(-1, self.emitted * self.hop, audio, final, self.codes.cpu().numpy() if final else None)
        self.emitted = end
        return chunk
