"""Turn native model audio into what one listener asked for: rate, sample format, container.

A `Delivery` is fed the track's native chunks in order and returns payload pieces. The same chunk boundaries
are used for live and cached tracks (CHUNK_SAMPLES), so a cached replay produces the same bytes as the live
stream did.
"""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
import soundfile as sf
import soxr
import xxhash

from .audio import ogg_serial, pcm_f32le, pcm_s16le, restamp_ogg

PCM_FORMATS = ("pcm_s16le", "pcm_f32le")
FILE_FORMATS = ("wav", "ogg")
FORMATS = PCM_FORMATS + FILE_FORMATS
MAX_PIECE_BYTES = 1 << 20


def split_native(audio: np.ndarray, chunk_samples: int):
    """Cut a whole native track at the same boundaries the engine streams at."""
    n = audio.shape[1]
    for start in range(0, n, chunk_samples):
        yield start, audio[:, start:start + chunk_samples], start + chunk_samples >= n


class Delivery:
    def __init__(self, native_rate: int, channels: int, native_frames: int, fmt: str = "pcm_s16le",
                 rate: int | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.native_rate = native_rate
        self.rate = rate or native_rate
        self.channels = channels
        self.frames = int(round(native_frames * self.rate / native_rate))
        self._resampler = None   # made on first use: a memo replay never resamples
        self._out_frames = 0
        self._pending: list[np.ndarray] = []   # ogg only: encoded at the end
        self._header_sent = False
        self.bytes = 0
        self.sha = hashlib.sha256()
        self.xxh = xxhash.xxh3_64()

    @property
    def frame_bytes(self) -> int:
        """Bytes of one delivered PCM frame (an upper bound for OGG)."""
        return self.channels * (4 if self.fmt == "pcm_f32le" else 2)

    def max_bytes(self) -> int:
        """Upper bound of the payload size (OGG is smaller than 16-bit PCM)."""
        return self.frames * self.frame_bytes + 44

    def header(self) -> dict:
        return {"sample_rate": self.rate, "channels": self.channels, "frames": self.frames, "format": self.fmt}

    def feed(self, audio: np.ndarray, last: bool) -> list[tuple[int, int, bytes]]:
        """Native (channels, n) audio in; [(offset_frames, frames, payload)] out."""
        audio = self._resample(audio, last)
        offset = self._out_frames
        self._out_frames += audio.shape[1]
        pieces: list[tuple[int, int, bytes]] = []
        if self.fmt == "ogg":
            self._pending.append(audio)
            if last:
                # the encoder needs the whole track; its frames are reported on the first piece
                data = _ogg_bytes(np.concatenate(self._pending, axis=1), self.rate)
                for i in range(0, len(data), MAX_PIECE_BYTES):
                    pieces.append((0, self._out_frames, data[i:i + MAX_PIECE_BYTES]) if i == 0 else
                                  (self._out_frames, 0, data[i:i + MAX_PIECE_BYTES]))
        else:
            if self.fmt == "wav" and not self._header_sent:
                pieces.append((0, 0, _wav_header(self.rate, self.channels, self.frames)))
            self._header_sent = True
            if audio.shape[1]:
                data = pcm_f32le(audio) if self.fmt == "pcm_f32le" else pcm_s16le(audio)
                pieces.append((offset, audio.shape[1], data))
        for _, _, data in pieces:
            self.bytes += len(data)
            self.sha.update(data)
            self.xxh.update(data)
        return pieces

    def digests(self) -> dict:
        """Hashes of all payload bytes so far: sha256 names the content, xxh3_64 is the quick transfer check."""
        return {"sha256": self.sha.hexdigest(), "xxh3_64": self.xxh.hexdigest()}

    def _resample(self, audio: np.ndarray, last: bool) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if self.rate != self.native_rate and self._resampler is None:
            self._resampler = soxr.ResampleStream(self.native_rate, self.rate, self.channels, dtype="float32",
                                                  quality="HQ")
        if self._resampler is not None:
            out = self._resampler.resample_chunk(np.ascontiguousarray(audio.T), last=last)
            audio = np.asarray(out, dtype=np.float32).reshape(-1, self.channels).T
        # the promised frame count is exact: trim or pad the resampler's last few samples
        room = self.frames - self._out_frames
        if audio.shape[1] > room:
            audio = audio[:, :room]
        if last and audio.shape[1] < room:
            audio = np.pad(audio, ((0, 0), (0, room - audio.shape[1])))
        return audio


def _wav_header(rate: int, channels: int, frames: int) -> bytes:
    """44-byte PCM16 WAV header with sizes known up front, so a WAV can be streamed."""
    data = frames * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) +
            b"data" + struct.pack("<I", data))


def _ogg_bytes(audio: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=audio.shape[0], format="OGG", subtype="VORBIS") as f:
        frames = audio.T
        for i in range(0, len(frames), 65536):   # one huge write crashes libvorbis
            f.write(frames[i:i + 65536])
    return restamp_ogg(buf.getvalue(), ogg_serial(audio))
