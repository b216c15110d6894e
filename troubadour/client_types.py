"""What the Python client hands back (typed server errors, track headers, tracks, live track streams) and its
book of open requests."""

from __future__ import annotations

import io
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

import msgpack
import xxhash

from . import protocol as P
from .errors import TroubadourError
from .protocol import ProtocolError

if TYPE_CHECKING:
    from .client import Client

PCM = {"pcm_s16le": ("s16le", 2), "pcm_f32le": ("f32le", 4)}


# ---------------------------------------------------------------- errors
class ConnectionLost(TroubadourError):
    """The server stopped answering and the request could not (or may not) be resent."""

    code = "connection_lost"


class Timeout(ConnectionLost):
    code = "timeout"

    def __init__(self, address: str, tries: int):
        super().__init__(f"no answer from {address} after {tries} tries")
        self.address, self.tries = address, tries


class ServerError(TroubadourError):
    """An `error` reply: `code`, `message`, `field` as sent; `retryable` per PROTOCOL.md section 7."""

    retryable = False

    def __init__(self, body: dict, request: str | None = None):
        super().__init__(str(body.get("message", "")), code=str(body.get("code", P.INTERNAL)),
                         field=body.get("field"))
        self.body, self.request, self.id = body, request, body.get("id")


class BadRequestError(ServerError): pass
class ProtocolVersionError(ServerError): pass
class UnknownTypeError(ServerError): pass
class TooLargeError(ServerError): pass
class InvalidParamError(ServerError): pass
class EmptyPromptError(InvalidParamError): pass
class UnknownContextError(ServerError): pass
class ProfileFileError(ServerError): pass
class BusyError(ServerError): retryable = True
class CancelledError(ServerError): pass
class NotFoundError(ServerError): retryable = True
class EngineError(ServerError): pass
class EngineDeadError(EngineError): retryable = True
class ModelError(ServerError): pass
class InternalError(ServerError): pass


ERROR_CLASSES = {
    "bad_request": BadRequestError, "unsupported_version": ProtocolVersionError, "unknown_type": UnknownTypeError,
    "too_large": TooLargeError, "invalid_param": InvalidParamError, "empty_prompt": EmptyPromptError,
    "unknown_context": UnknownContextError, "profile_error": ProfileFileError, "busy": BusyError,
    "cancelled": CancelledError, "not_found": NotFoundError, "engine_error": EngineError,
    "engine_dead": EngineDeadError, "model_error": ModelError, "internal": InternalError,
}


def server_error(body: dict, request: str | None = None) -> ServerError:
    """The typed exception for an `error` body; unknown codes count as internal (section 7)."""
    return ERROR_CLASSES.get(body.get("code"), InternalError)(body, request)


# ---------------------------------------------------------------- tracks
class TrackHeader(dict):
    """The `track` message body; fields also readable as attributes (header.track_id)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Chunk:
    offset: int     # first frame of this piece (for wav/ogg: frames fed to the encoder, see PROTOCOL.md)
    frames: int
    data: memoryview   # read-only view of the received frame, no copy; bytes(data) for a bytes object


@dataclass
class Track:
    header: dict
    audio: bytes                                # all payload bytes, in order
    end: dict = field(default_factory=dict)     # the `end` body when streamed

    track_id = property(lambda self: self.header["track_id"])
    cached = property(lambda self: self.header["cached"])
    sample_rate = property(lambda self: self.header["sample_rate"])
    channels = property(lambda self: self.header["channels"])
    frames = property(lambda self: self.header["frames"])
    format = property(lambda self: self.header["format"])
    sha256 = property(lambda self: self.end.get("sha256") or self.header.get("sha256"))

    def samples(self):
        """float32 array (channels, frames)."""
        if self.format in PCM:
            from .audio import from_pcm
            return from_pcm(self.audio, self.channels, PCM[self.format][0])
        import soundfile as sf
        data, _ = sf.read(io.BytesIO(self.audio), dtype="float32", always_2d=True)
        return data.T.copy()

    @property
    def loop(self) -> tuple[int, int] | None:
        """(loop_start, loop_end) in frames of this audio, end exclusive, for a looping context's track."""
        h = self.header
        return (h["loop_start"], h["loop_end"]) if "loop_start" in h and "loop_end" in h else None

    def save(self, path) -> Path:
        """Write an audio file: WAV or OGG by suffix (WAV otherwise; raw bytes for .raw/.pcm). A looping
        track's loop points go in the file (WAV `smpl` chunk, Ogg LOOPSTART/LOOPLENGTH), as a bake's do."""
        from .audio import _append_smpl, _atomic_write, _tag_ogg_loop, write_audio
        path = Path(path)
        suffix = path.suffix.lower().lstrip(".")
        if suffix in ("raw", "pcm") and self.format in PCM:
            target = self.format
        else:
            target = suffix if suffix in ("wav", "ogg") else self.format if self.format in ("wav", "ogg") else "wav"
        loop = self.loop if target in ("wav", "ogg") else None
        if target == self.format:   # already in the wanted container: keep the server's bytes (no re-encoding)
            def write(f) -> None:
                f.write(self.audio)
                if loop is not None:
                    (_append_smpl if target == "wav" else _tag_ogg_loop)(f, *loop, self.sample_rate)
            return _atomic_write(path, write)
        return write_audio(path, self.samples(), self.sample_rate, target, loop=loop)


# ---------------------------------------------------------------- requests
class OpenRequest:
    """A request sent and not finished: its replies queue here until read."""

    def __init__(self, rid, msg_type: str, body: dict, resend: bool, internal: bool):
        self.id, self.type, self.body = rid, msg_type, body
        self.resend, self.internal = resend, internal   # internal: replies are not kept (pings, cancels)
        self.open, self.error, self.tries = True, None, 1
        self.seq, self.nbytes = 0, 0
        self.queue: deque = deque()

    def frames(self) -> list:
        return P.encode(self.type, {**self.body, "id": self.id})

    def restart(self) -> None:
        self.seq, self.nbytes = 0, 0
        self.queue.clear()


def message_size(msg: P.Message) -> int:
    return len(msg.payload) if msg.payload is not None else 0


UNREADABLE = object()


def peek_id(frames):
    """The request id of an undecodable message (delimiter first): a valid id, None when its body says nil, or
    UNREADABLE when no id can be read (then the client cannot tell which request lost a message)."""
    try:
        body = msgpack.unpackb(frames[3], raw=False)
    except Exception:
        return UNREADABLE
    if isinstance(body, dict) and "id" in body and body["id"] is None:
        return None
    rid = P.request_id(body)
    return UNREADABLE if rid is None else rid


class TrackStream:
    """A streamed get_track: iterate for a TrackHeader, then Chunks; the `end` message is verified.

    After a reconnect the server restarts the track from the beginning; the bytes already yielded are
    checked against the new stream and skipped, so iteration just continues."""

    def __init__(self, client: Client, req: OpenRequest):
        self._client, self._req = client, req
        self.id = req.id
        self.header: TrackHeader | None = None
        self.end: dict | None = None
        # One running XXH3 per attempt is the only pass over the bytes (SHA-256 cost as much as the transfer
        # itself). Whenever no prefix is being skipped, this attempt's bytes are the yielded ones.
        self._hash, self._bytes, self._frames = xxhash.xxh3_64(), 0, 0      # this attempt
        self._yielded = 0                                                   # all attempts
        self._skip, self._prefix_hash, self._want_prefix = 0, None, None
        self._frame_bytes = None

    def __iter__(self):
        return self

    def __next__(self):
        while self.end is None:
            out = self._handle(self._client._next(self._req))
            if out is not None:
                return out
        raise StopIteration

    def close(self) -> None:
        """Stop the stream (cancels it on the server if still open)."""
        if self._req.open:
            self._client._abandon(self._req, CancelledError({"code": "cancelled", "message": "closed by client"}))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _handle(self, msg: P.Message):
        body = msg.body
        if msg.type == P.CHUNK and self.header is not None and not msg.final:
            return self._chunk(body, msg.payload)
        if msg.type == P.TRACK and not msg.final:
            if self.header is None:
                self.header = TrackHeader(body)
                pcm = PCM.get(body.get("format"))
                # bytes per frame for PCM (chunks must hold whole frames), None for wav/ogg pieces
                self._frame_bytes = pcm[1] * body.get("channels", 1) if pcm else None
                return self.header
            for key in ("track_id", "format", "sample_rate", "channels", "frames"):
                if body.get(key) != self.header.get(key):
                    raise ProtocolError(f"track {key} changed after reconnecting")
            if not self._skip:   # otherwise the yielded bytes (and their hash) did not change
                self._want_prefix = self._hash.hexdigest()
            self._hash, self._bytes, self._frames = xxhash.xxh3_64(), 0, 0
            self._skip, self._prefix_hash = self._yielded, xxhash.xxh3_64()
            return None
        if self.header is None:
            raise ProtocolError(f"get_track stream started with {msg.type}")
        if msg.type == P.END and msg.final:
            if body.get("frames") != self.header.get("frames"):
                raise ProtocolError(f"end.frames {body.get('frames')} != track.frames {self.header.get('frames')}")
            _check_totals({**self.header, **body}, self._bytes, self._hash.hexdigest())
            if self._skip or self._yielded != self._bytes:
                raise ProtocolError("stream ended before the audio received before reconnecting")
            if self._frames != self.header.get("frames"):
                text = f"chunk frames add up to {self._frames}, track.frames is {self.header.get('frames')}"
                if self.header.get("format") in PCM:
                    raise ProtocolError(text)
                self._client._violation(f"get_track {self.id} ({self.header.get('format')}): {text}")
            self.end = body
            return None
        raise ProtocolError(f"unexpected {msg.type} (final={msg.final}) in a get_track stream")

    def _chunk(self, body: dict, data: bytes):
        offset, frames, n = body.get("offset"), body.get("frames"), len(data)
        if body.get("bytes") != n or not n:
            raise ProtocolError(f"chunk says {body.get('bytes')} bytes, carries {n}")
        size = self._frame_bytes
        if size and (n % size or frames != n // size or offset != self._frames):
            raise ProtocolError(f"chunk offset {offset}/frames {frames} do not match its {n} bytes")
        self._frames += frames or 0
        self._hash.update(data)
        self._bytes += n
        if self._skip:
            take = min(self._skip, len(data))
            self._prefix_hash.update(data[:take])
            self._skip -= take
            if not self._skip and self._prefix_hash.hexdigest() != self._want_prefix:
                raise ProtocolError("track audio changed after reconnecting")
            data = data[take:]
            if not data:
                return None
            if size:
                offset, frames = offset + take // size, len(data) // size
        self._yielded += len(data)
        return Chunk(offset, frames, data)


def _check_totals(fields: dict, nbytes: int, digest: str) -> None:
    """Compare a track's `bytes`/`xxh3_64` (and PCM frame count) with what arrived."""
    if fields.get("bytes") != nbytes:
        raise ProtocolError(f"received {nbytes} bytes, server says {fields.get('bytes')}")
    if fields.get("xxh3_64") != digest:
        raise ProtocolError("xxh3_64 hash of the received audio does not match the server's")
    pcm = PCM.get(fields.get("format"))
    if pcm and nbytes != fields.get("frames", -1) * pcm[1] * fields.get("channels", 1):
        raise ProtocolError(f"{nbytes} bytes is not {fields.get('frames')} frames of {fields.get('format')}")


def check_address(address) -> None:
    """A tcp:// address needs a host and a port in 1-65535 (ZeroMQ takes port 99999 and waits forever)."""
    import re

    if isinstance(address, str) and not address.startswith("tcp://") and "://" in address:
        return   # ipc://, inproc://: ZeroMQ checks them
    m = re.fullmatch(r"tcp://(.+):(\d+)", address) if isinstance(address, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 65535:
        raise TroubadourError(f"server address {address!r} is not valid: expected tcp://HOST:PORT with a port "
                              "in 1-65535, e.g. tcp://127.0.0.1:5555", code="invalid_param", field="server")
