"""The engine: the only code that runs the model.

Our own decode loop over the checkpoint's modules (transformers' `generate()` cannot stream MusicGen):
preallocated KV cache, classifier-free guidance batched with the conditional rows, the codebook delay
pattern, per-row sampling parameters and seeds, and incremental EnCodec decoding with overlap so audio
chunks leave while the model is still generating.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import Cancelled, ValidationError
from .params import GenParams, validate_prompt

# Streaming decode geometry (in codec frames, 50 per second). Measured in tests/test_engine.py: with these,
# concatenated chunks match a whole-sequence decode to well under the asserted tolerance.
CHUNK_FRAMES = 25      # audio leaves every 0.5 s of generated music
CONTEXT_FRAMES = 50    # left context re-decoded so the codec's LSTM and convs settle before the kept part
LOOKAHEAD_FRAMES = 5   # right context: the non-causal convs look a few frames ahead


class EngineFault(RuntimeError):
    """The model misbehaved on this batch (not the request's fault)."""


@dataclass(frozen=True)
class Job:
    prompt: str
    params: GenParams = GenParams()


@dataclass
class Chunk:
    row: int                 # index of the job in the batch
    start: int               # first sample of this chunk within the track
    audio: np.ndarray        # (channels, samples) float32
    final: bool = False
    codes: np.ndarray | None = None   # on the final chunk: (codebooks, frames) int64


@dataclass
class Result:
    audio: np.ndarray        # (channels, samples) float32
    codes: np.ndarray
    seconds: float           # wall time of the whole batch
    extra: dict = field(default_factory=dict)


class Engine:
    def __init__(self, backend, *, max_duration: float = 30.0, chunk_frames: int = CHUNK_FRAMES,
                 context_frames: int = CONTEXT_FRAMES, lookahead_frames: int = LOOKAHEAD_FRAMES):
        self.backend = backend
        self.info = backend.info
        if self.info.melody:
            raise ValidationError("musicgen-melody checkpoints are not supported by this engine yet", field="model")
        self.max_duration = min(max_duration, (self.info.max_frames - self.info.num_codebooks) / self.info.frame_rate)
        self.chunk_frames, self.context_frames, self.lookahead_frames = chunk_frames, context_frames, lookahead_frames
        dec = backend.decoder.model.decoder
        self._dec = dec
        self._heads = backend.decoder.lm_heads
        self._layers = list(dec.layers)
        self._num_heads = self._layers[0].self_attn.num_heads
        self._pad = int(backend.decoder.config.pad_token_id)
        k = self.info.num_codebooks
        stereo = self.info.channels == 2
        self._delays = [c // 2 if stereo else c for c in range(k)]
        self._hop = self.info.sample_rate // self.info.frame_rate
        self._device = backend.torch_device
        self._fuse_projections()

    # ------------------------------------------------------------------ public API
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

    def steps_for(self, duration: float) -> int:
        """Decoder forward passes for one track: frames plus the codebook delay."""
        return self.frames_for(duration) + max(self._delays)

    def validate(self, jobs: list[Job]) -> None:
        if not jobs:
            raise ValidationError("no prompts given", field="prompt")
        for job in jobs:
            validate_prompt(job.prompt)
            job.params.validate(self.max_duration)

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
        """Generate a batch, yielding each row's audio in order as soon as it can be decoded."""
        self.validate(jobs)
        b, k = len(jobs), self.info.num_codebooks
        frames = [self.frames_for(j.params.duration) for j in jobs]
        max_delay = max(self._delays)
        steps = max(frames) + max_delay
        cfg = any(j.params.cfg_coef > 1 for j in jobs)
        rows = 2 * b if cfg else b
        dev = self._device

        hidden, mask = self.backend.encode_text([j.prompt for j in jobs])
        if cfg:  # unconditional rows: null conditioning, as in MusicGen training
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        cross = self._cross_kv(hidden, mask)
        cache = self._alloc_cache(rows, steps)
        pos = self._positions(steps).to(hidden.dtype)

        sampler = _Sampler(jobs, dev)
        seq = torch.full((b, k, steps + 1), self._pad, dtype=torch.long, device=dev)
        delays = torch.tensor(self._delays, device=dev)
        row_frames = torch.tensor(frames, device=dev)
        emitted = [0] * b
        done = [False] * b

        for s in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled()
            tokens = seq[:, :, s]
            if cfg:
                tokens = torch.cat([tokens, tokens])
            x = self._embed(tokens) + pos[s]
            logits = self._forward_step(x[:, None, :], s, cache, cross)
            if cfg:
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + (cond - uncond) * sampler.cfg
            nxt = sampler.sample(logits)
            frame = s - delays                                   # frame index each codebook predicts now
            valid = (frame[None, :] >= 0) & (frame[None, :] < row_frames[:, None])
            seq[:, :, s + 1] = torch.where(valid, nxt, self._pad)
            if progress is not None:
                progress(s + 1, steps)
            complete = s - max_delay + 1                         # frames finished on every codebook
            if complete <= 0:
                continue
            if (complete % self.chunk_frames == 0 or complete >= min(frames)) and not torch.isfinite(logits).all():
                # checked where audio leaves, not every step (a GPU sync); NaN spreads through the KV cache
                raise EngineFault("the model produced non-finite values (NaN/inf)")
            for r in range(b):
                if done[r]:
                    continue
                avail = min(complete, frames[r])
                final = avail == frames[r]
                end = avail if final else avail - self.lookahead_frames
                if not final and end - emitted[r] < self.chunk_frames:
                    continue
                codes = self._codes(seq[r], avail)
                audio = self._decode_window(codes, emitted[r], end)
                yield Chunk(r, emitted[r] * self._hop, audio, final,
                            codes.cpu().numpy() if final else None)
                emitted[r] = end
                done[r] = final

    # ------------------------------------------------------------------ decode loop pieces
    def _fuse_projections(self) -> None:
        """One matmul for q, k, v: the module weights become views of a fused tensor (no extra memory)."""
        self._qkv = []
        for layer in self._layers:
            att = layer.self_attn
            w = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach()
            d = att.q_proj.weight.shape[0]
            att.q_proj.weight.data, att.k_proj.weight.data, att.v_proj.weight.data = w[:d], w[d:2 * d], w[2 * d:]
            bias = None
            if att.q_proj.bias is not None:
                bias = torch.cat([att.q_proj.bias, att.k_proj.bias, att.v_proj.bias]).detach()
            self._qkv.append((w, bias))

    def _alloc_cache(self, rows: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        d = self._dec.config.hidden_size
        h = self._num_heads
        dtype = next(self._dec.parameters()).dtype
        shape = (rows, h, steps, d // h)
        return [(torch.empty(shape, dtype=dtype, device=self._device),
                 torch.empty(shape, dtype=dtype, device=self._device)) for _ in self._layers]

    def _positions(self, steps: int) -> torch.Tensor:
        emb = self._dec.embed_positions
        if steps > emb.weights.shape[0]:
            emb.make_weights(steps, emb.embedding_dim)
        return emb.weights[:steps]

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self._dec.embed_tokens
        x = emb[0](tokens[:, 0])
        for c in range(1, tokens.shape[1]):
            x = x + emb[c](tokens[:, c])
        return x

    def _cross_kv(self, hidden: torch.Tensor, mask: torch.Tensor):
        """Keys/values of the text conditioning, computed once per batch instead of once per step."""
        rows, t, _ = hidden.shape
        h = self._num_heads
        # Additive mask; a row with nothing to attend (the null condition) attends to all of its zero
        # vectors instead, which gives the same zero output without a NaN from an all -inf softmax.
        keep = mask.bool() | ~mask.bool().any(dim=1, keepdim=True)
        bias = torch.zeros(rows, 1, 1, t, dtype=hidden.dtype, device=hidden.device)
        bias.masked_fill_(~keep[:, None, None, :], torch.finfo(hidden.dtype).min)
        out = []
        for layer in self._layers:
            att = layer.encoder_attn
            kk = att.k_proj(hidden).view(rows, t, h, -1).transpose(1, 2)
            vv = att.v_proj(hidden).view(rows, t, h, -1).transpose(1, 2)
            out.append((kk, vv))
        return out, bias

    def _forward_step(self, x: torch.Tensor, s: int, cache, cross) -> torch.Tensor:
        rows, _, d = x.shape
        h = self._num_heads
        cross_kv, cross_bias = cross
        for i, layer in enumerate(self._layers):
            att = layer.self_attn
            y = layer.self_attn_layer_norm(x)
            w, bias = self._qkv[i]
            q, kk, vv = F.linear(y, w, bias).view(rows, 1, 3, h, d // h).unbind(2)
            kc, vc = cache[i]
            kc[:, :, s] = kk[:, 0]
            vc[:, :, s] = vv[:, 0]
            a = F.scaled_dot_product_attention(q.transpose(1, 2), kc[:, :, :s + 1], vc[:, :, :s + 1],
                                               scale=att.scaling)
            x = x + att.out_proj(a.transpose(1, 2).reshape(rows, 1, d))

            catt = layer.encoder_attn
            y = layer.encoder_attn_layer_norm(x)
            q = catt.q_proj(y).view(rows, 1, h, d // h).transpose(1, 2)
            ck, cv = cross_kv[i]
            a = F.scaled_dot_product_attention(q, ck, cv, attn_mask=cross_bias, scale=catt.scaling)
            x = x + catt.out_proj(a.transpose(1, 2).reshape(rows, 1, d))

            y = layer.final_layer_norm(x)
            x = x + layer.fc2(layer.activation_fn(layer.fc1(y)))
        x = self._dec.layer_norm(x)[:, 0]
        return torch.stack([head(x) for head in self._heads], dim=1).float()   # (rows, K, V)

    def _codes(self, row_seq: torch.Tensor, n: int) -> torch.Tensor:
        """Undo the delay pattern: (K, n) codes of the first n frames."""
        return torch.stack([row_seq[c, d + 1:d + 1 + n] for c, d in enumerate(self._delays)])

    def _decode_window(self, codes: torch.Tensor, start: int, end: int) -> np.ndarray:
        """Audio of frames [start, end), decoded with context on both sides and trimmed to the kept part."""
        lo = max(0, start - self.context_frames)
        hi = min(codes.shape[1], end + self.lookahead_frames)
        audio = self.backend.decode_audio(codes[None, :, lo:hi])[0]
        return audio[:, (start - lo) * self._hop:(end - lo) * self._hop].float().cpu().numpy()


class _Sampler:
    """Per-row temperature, top-k, top-p, CFG and seed, vectorised over the batch.

    Sampling is an exponential race (argmax of logit - log E, E ~ Exp(1) from the row's own generator),
    which draws from the same distribution as multinomial sampling but lets every row keep its own
    seeded stream, so a track does not depend on what else shares its batch.
    """

    def __init__(self, jobs: list[Job], device):
        p = [j.params for j in jobs]
        self.cfg = torch.tensor([x.cfg_coef for x in p], device=device)[:, None, None]
        self.temp = torch.tensor([x.temperature for x in p], device=device)[:, None, None]
        self.top_k = torch.tensor([x.top_k for x in p], device=device)
        self.top_p = torch.tensor([x.top_p for x in p], device=device, dtype=torch.float32)
        self.gens = []
        for x in p:
            g = torch.Generator(device=device)
            g.manual_seed(x.seed)
            self.gens.append(g)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        b, k, v = logits.shape
        logits = logits / self.temp
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(v, device=logits.device)
        kk = torch.where(self.top_k > 0, self.top_k, v).clamp(max=v)
        keep = ranks[None, None, :] < kk[:, None, None]
        # top-p (nucleus) takes precedence when set, as in audiocraft
        probs = sorted_logits.softmax(dim=-1)
        keep_p = (probs.cumsum(-1) - probs) < self.top_p[:, None, None]
        keep = torch.where((self.top_p > 0)[:, None, None], keep_p, keep)
        masked = sorted_logits.masked_fill(~keep, float("-inf"))
        noise = torch.stack([torch.empty(k, v, device=logits.device).exponential_(generator=g) for g in self.gens])
        pick = (masked - noise.clamp_min(1e-20).log()).argmax(dim=-1, keepdim=True)
        return order.gather(-1, pick)[..., 0]
