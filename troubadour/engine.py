"""The engine: the only code that runs the model (with decoder_step.py, its forward pass).

Our own decode loop over the checkpoint's modules (transformers' `generate()` cannot stream MusicGen):
preallocated KV cache, classifier-free guidance batched with the conditional rows, the codebook delay
pattern, per-row sampling parameters and seeds, and incremental EnCodec decoding (the codec's state kept per
track, codec_stream.py) so audio chunks leave while the model is still generating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from .errors import Cancelled, EngineFault, ValidationError
from .decoder_step import DecoderStep
from .geometry import CHUNK_FRAMES, Geometry
from .params import MAX_DURATION, GenParams, validate_prompt
from .chroma import chroma_features
from .chunking import Chunk, RowCodes
from . import native
from .matmul import align_parameters, fuse_projections, onednn_linear_works, set_precision
from .panels import pack_decoder
from .sampling import Sampler

# Streaming decode geometry (in codec frames, 50 per second; the chunk size is in geometry.py). Measured in
# tests/test_engine.py: with these, concatenated chunks match a whole-sequence decode to well under the
# asserted tolerance.
CONTEXT_FRAMES = 50    # left context re-decoded so the codec's LSTM settles (where its state cannot be kept)
LOOKAHEAD_FRAMES = 5   # right context: the non-causal convs look a few frames ahead
WINDOW_S = 30.0        # MusicGen was trained on 30 s; longer tracks continue window by window
CONTINUATION_S = 10.0  # codes of the previous window a continuation is conditioned on


@dataclass(frozen=True, eq=False)
class Job:
    prompt: str
    params: GenParams = GenParams()
    melody: np.ndarray | None = None   # (channels, samples) at the model's rate: a theme to follow (melody models)


@dataclass
class Result:
    audio: np.ndarray        # (channels, samples) float32
    codes: np.ndarray
    seconds: float           # wall time of the whole batch
    extra: dict = field(default_factory=dict)


class Engine(Geometry, DecoderStep):
    def __init__(self, backend, *, max_duration: float = MAX_DURATION, chunk_frames: int = CHUNK_FRAMES,
                 context_frames: int = CONTEXT_FRAMES, lookahead_frames: int = LOOKAHEAD_FRAMES,
                 window_s: float = WINDOW_S, continuation_s: float = CONTINUATION_S, precision: str = "auto",
                 native_kernel: bool = True, compile_step: bool = False, same_thread: bool = False):
        # same_thread: every call comes from the thread that builds the engine (the CLIs, not the server), which
        # lets --compile record CUDA graphs on a torch without graph_capture_lock (compiled.mode_for)
        super().__init__(backend.info, max_duration, chunk_frames)
        self.backend = backend
        fr = self.info.frame_rate
        positions = self.info.max_frames - self.info.num_codebooks - 1   # the decoder's positional window
        self.window_frames = min(int(window_s * fr), positions)
        self.continuation_frames = min(int(continuation_s * fr), self.window_frames // 2)
        self.context_frames, self.lookahead_frames = context_frames, lookahead_frames
        dec = backend.decoder.model.decoder
        self._dec = dec
        self._heads = backend.decoder.lm_heads
        self._layers = list(dec.layers)
        self._num_heads = self._layers[0].self_attn.num_heads
        self._pad = int(backend.decoder.config.pad_token_id)
        k = self.info.num_codebooks
        stereo = self.info.channels == 2
        self._delays = [c // 2 if stereo else c for c in range(k)]
        self._device = backend.torch_device
        if compile_step and precision == "int8":
            raise ValidationError("--compile does not combine with --precision int8 (torch.compile cannot trace "
                                  "dynamically quantized linears)", field="precision")
        # fused once per backend: a second Engine on it (tests, the bench) finds the model's q/k/v and heads
        # already views of these, possibly packed as panels
        self._fused = getattr(backend, "fused_projections", None) or fuse_projections(self._layers, self._heads)
        backend.fused_projections = self._fused
        self.precision = set_precision([backend.decoder, self._fused], self._device, precision) or \
            ("fp32" if self._device.type == "cpu" else str(self.info.dtype))
        # (tiny test checkpoints: below ~256 wide the per-call overhead outweighs the layout)
        self._skinny = (self._device.type == "cpu" and self._dtype() == torch.float32 and self.precision == "fp32"
                        and self._dec.config.hidden_size >= 256 and not compile_step)
        self._onednn = self._skinny and onednn_linear_works()
        self._gemv = native.kernel() if self._skinny and native_kernel else None
        head = self._dec.config.hidden_size // self._num_heads
        self._attend = self._gemv is not None and head % 16 == 0 and head <= 256   # what the C kernel takes
        # which decode-step matmuls run (the server's start-up line)
        self.matmuls = "PyTorch dynamic int8" if self.precision == "int8" else "PyTorch"
        if self._skinny:
            self.matmuls = "native kernel" if self._gemv else \
                f"PyTorch ({native.why_not() if native_kernel else 'native kernel off'})"
            align_parameters(backend.decoder)
            if self._gemv is not None:
                pack_decoder(self._layers, self._heads, self._fused)
        self._make_plans()
        self._compiled = None
        if compile_step:
            from .compiled import CompiledStep, mode_for

            self.matmuls = "torch.compile (" + mode_for(self._device, same_thread) + (
                ", ~0.2x the native kernel's speed on CPUs (bench/README.md); meant for CUDA)"
                if self._device.type == "cpu" else ")")
            self._compiled = CompiledStep(self, same_thread)   # (which says so in `matmuls` if compiling fails)

    # ------------------------------------------------------------------ public API
    @property
    def compiled(self) -> bool:
        """Whether the decode step runs through torch.compile (`--compile`)."""
        return self._compiled is not None

    def steps_for(self, duration: float) -> int:
        """Decoder forward passes for one track (a prefill counts as one): frames plus the codebook delay,
        per window."""
        frames, delay = self.frames_for(duration), max(self._delays)
        steps = min(frames, self.window_frames) + delay
        frames -= min(frames, self.window_frames)
        while frames > 0:
            n = min(self.window_frames - self.continuation_frames, frames)
            steps += n + delay
            frames -= n
        return steps

    def batch_groups(self, prompts: list[str]) -> list[list[int]]:
        """Rows that can share a batch and still come out as they would alone: all of them, except on melody
        models, whose text sits in the decoder's sequence padded to the batch's longest prompt (the padding
        shifts and changes the other rows): there only prompts of one token length go together."""
        if not self.info.melody or len(prompts) < 2:
            return [list(range(len(prompts)))]
        groups: dict = {}
        for row, n in enumerate(self.backend.text_lengths(prompts)):
            groups.setdefault(n, []).append(row)
        return list(groups.values())

    def validate(self, jobs: list[Job]) -> None:
        if not jobs:
            raise ValidationError("no prompts given", field="prompt")
        for job in jobs:
            validate_prompt(job.prompt)
            job.params.validate(self.max_duration)
            if job.melody is not None and not self.info.melody:
                raise ValidationError(f"model {self.info.model_id} cannot follow a melody (theme): use a "
                                      "musicgen-melody checkpoint", field="theme")

    def generate(self, jobs: list[Job], **kwargs) -> list[Result]:
        """Whole tracks for a batch (the streamed chunks concatenated)."""
        t0 = time.perf_counter()
        parts: list[list[np.ndarray]] = [[] for _ in jobs]
        codes: list[np.ndarray | None] = [None] * len(jobs)
        for chunk in self.stream(jobs, **kwargs):
            parts[chunk.row].append(chunk.audio)
            if chunk.final:
                codes[chunk.row] = chunk.codes
        took = time.perf_counter() - t0
        return [Result(np.concatenate(p, axis=1), c, took) for p, c in zip(parts, codes)]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Whole-sequence EnCodec decode of (codebooks, frames) codes -> (channels, samples)."""
        t = torch.as_tensor(codes, device=self._device)[None]
        return self.backend.decode_audio(t)[0].float().cpu().numpy()

    @torch.inference_mode()
    def stream(self, jobs: list[Job], *, progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> Iterator[Chunk]:
        """Generate a batch, yielding each row's audio in order as soon as it can be decoded.

        Tracks longer than the model window continue window by window from the last CONTINUATION_S seconds
        of their own codes; the codes form one sequence, so the audio has no seams.
        """
        self.validate(jobs)
        groups = self.batch_groups([j.prompt for j in jobs])
        if len(groups) > 1:
            yield from self._stream_groups(jobs, groups, progress, should_stop)
        else:
            yield from self._stream_batch(jobs, progress, should_stop)

    def _stream_batch(self, jobs: list[Job], progress, should_stop) -> Iterator[Chunk]:
        """stream() of rows that share one batch."""
        b = len(jobs)
        frames = [self.frames_for(j.params.duration) for j in jobs]
        total = self.steps_for(max(j.params.duration for j in jobs))
        cfg = any(j.params.cfg_coef > 1 for j in jobs)
        hidden, mask = self.backend.encode_text([j.prompt for j in jobs])
        if self._compiled is not None and not self.info.melody:   # (melody models: the text is in the sequence)
            hidden, mask = self._compiled.pad_text(hidden, mask)
        chroma = [None if j.melody is None else chroma_features(j.melody, self.sample_rate) for j in jobs]
        sampler = Sampler([j.params for j in jobs], self._device)
        decoders = [RowCodes(n, self.info.num_codebooks, self._device, self._hop, self.chunk_frames,
                             self.context_frames, self.lookahead_frames) for n in frames]
        for row in decoders:   # the codec's state carried chunk to chunk, where the backend can
            row.codec = self.backend.stream_decoder(self.lookahead_frames, self._gemv)
        state = {"done": 0}

        def tick() -> None:
            if should_stop is not None and should_stop():
                raise Cancelled()
            state["done"] += 1
            if progress is not None:
                progress(state["done"], total)

        first = True
        while True:
            active = [r for r in range(b) if decoders[r].filled < frames[r]]
            if not active:
                return
            keep = 0 if first else self.continuation_frames
            new = [min(self.window_frames - keep, frames[r] - decoders[r].filled) for r in active]
            prefix = None if first else torch.stack([decoders[r].codes[:, decoders[r].filled - keep:
                                                                       decoders[r].filled] for r in active])
            idx = torch.tensor(active, device=self._device)
            h, m = hidden[idx], mask[idx]
            rows_chroma = [chroma[r] for r in active]
            if cfg:   # unconditional rows: null conditioning, as in MusicGen training
                h, m = torch.cat([h, torch.zeros_like(h)]), torch.cat([m, torch.zeros_like(m)])
                rows_chroma += [None] * len(active)
            h = h.to(self._dtype())   # the decoder may run in another precision than the text encoder
            if self.info.melody:
                cond = (None, self.backend.melody_prefix(h, rows_chroma).to(self._dtype()))
            else:
                cond = (self._cross_kv(h, m), None)
            for ready in self._segment(cond, cfg, sampler.subset(active), prefix, new, tick):
                windows = [(active[i], decoders[active[i]].push(codes)) for i, codes in ready]
                yield from self._decode_windows(decoders, [(r, w) for r, w in windows if w is not None])
            first = False

    def _stream_groups(self, jobs, groups, progress, should_stop) -> Iterator[Chunk]:
        """stream() over rows that cannot share a batch: one group after the other, progress counted over all."""
        totals = [self.steps_for(max(jobs[r].params.duration for r in g)) for g in groups]
        done, whole = 0, sum(totals)
        for rows, steps in zip(groups, totals):
            inner = None if progress is None else (lambda d, _t, base=done: progress(base + d, whole))
            for chunk in self._stream_batch([jobs[r] for r in rows], inner, should_stop):
                chunk.row = rows[chunk.row]
                yield chunk
            done += steps

    def _decode_windows(self, decoders, windows) -> Iterator[Chunk]:
        """The due chunks, one EnCodec call per row: a batched call rounds differently (~1e-7, measured), and
        a track's bytes must not depend on what it was batched with (cache, bake vs server)."""
        for r, w in windows:
            chunk = decoders[r].decode(w, self.backend.decode_audio)
            chunk.row = r
            yield chunk

    def _segment(self, cond, cfg: bool, sampler, prefix, new: list[int], tick):
        """One window of the decode loop. Yields, per step, [(row, codes (K, n))] for the rows whose frames
        completed on every codebook.

        `cond` is (cross-attention keys/values, None) or, for melody models, (None, conditioning embeddings
        prepended to the sequence). With a prefix (B, K, p) of known codes, the conditioning and positions
        0..p go through in one forward pass (prefill) and the delayed codebooks keep taking prefix codes
        until they pass it (teacher forcing).
        """
        cross, lead = cond
        b, k = len(new), self.info.num_codebooks
        p = 0 if prefix is None else prefix.shape[2]
        off = 0 if lead is None else lead.shape[1]        # sequence positions taken by the conditioning
        max_delay = max(self._delays)
        steps = p + max(new) + max_delay
        dev = self._device
        rows = b * (2 if cfg else 1)
        dtype = self._dtype()
        compiled = self._compiled
        if compiled is not None:
            cache = compiled.cache(rows, off + steps, off + self.window_frames + max_delay)
            cross = compiled.conditioning(cross)
        else:
            cache = self._alloc_cache(rows, off + steps)
        pos = self._positions(off + steps).to(dtype)
        delays = torch.tensor(self._delays, device=dev)
        limit = torch.tensor(new, device=dev) + p
        seq = torch.full((b, k, steps + 1), self._pad, dtype=torch.long, device=dev)
        if prefix is not None:
            for c, d in enumerate(self._delays):
                seq[:, c, d + 1:d + 1 + p] = prefix[:, c]
        known = seq.clone()   # prefix codes at their delayed positions; pad elsewhere
        out = [0] * b          # frames yielded per row (after the prefix)
        s = 0
        while s < steps:
            tick()
            if s == 0:   # first pass: conditioning prefix (melody) and known positions 0..p at once
                tokens = seq[:, :, :p + 1]
                s = p
            else:
                tokens = seq[:, :, s:s + 1]
            if cfg:
                tokens = torch.cat([tokens, tokens])
            n = tokens.shape[2]
            raw = None
            if compiled is not None and n == 1 and not (s == p and off):   # (not the melody prefill)
                raw = compiled(tokens, off + s, cache, cross)              # None if compiling failed
            if raw is None:
                x = self._embed(tokens) + pos[off + s - n + 1:off + s + 1]
                start = off + s - n + 1
                if s == p and off:
                    x = torch.cat([lead + pos[:off], x], dim=1)
                    start = 0
                raw = self._forward(x, start, cache, cross)
            logits = raw
            if cfg:
                cond, uncond = raw[:b], raw[b:]
                logits = uncond + (cond - uncond) * sampler.cfg
            nxt = sampler.sample(logits)
            frame = s - delays                                    # frame each codebook predicts now
            valid = (frame[None, :] >= 0) & (frame[None, :] < limit[:, None])
            forced = frame[None, :] < p
            seq[:, :, s + 1] = torch.where(forced, known[:, :, s + 1], torch.where(valid, nxt, self._pad))
            s += 1
            complete = s - max_delay - p                          # new frames finished on every codebook
            if complete <= 0:
                continue
            # checked where audio leaves, not every step (a GPU sync); NaN spreads through the KV cache. A row's
            # last frames leave at its end, whatever the chunk size (a 0.3 s track has no whole chunk)
            leaving = complete % self.chunk_frames == 0 or any(out[r] < new[r] <= complete for r in range(b))
            if leaving and not torch.isfinite(raw).all():
                raise EngineFault("the model produced non-finite values (NaN/inf)")
            ready = []
            for r in range(b):
                upto = min(complete, new[r])
                if upto > out[r]:
                    ready.append((r, torch.stack([seq[r, c, d + 1 + p + out[r]:d + 1 + p + upto]
                                                  for c, d in enumerate(self._delays)])))
                    out[r] = upto
            if ready:
                yield ready
