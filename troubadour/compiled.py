"""The decode step through torch.compile; on a CUDA GPU it replays as CUDA graphs (`--compile`).

On a GPU a step at the batch sizes a game uses is a few hundred small kernels, and launching them from
Python costs more than running them. A CUDA graph replays them in one launch, but only if nothing about the
step changes from one call to the next: shapes and addresses. So the step here writes a KV cache that has the
window's whole length (positions not yet written are masked, not sliced off), reads its position from a
tensor, and sees the text padded to a power-of-two length (melody models, whose text is part of the
sequence, round the cache length up instead); the caches live as long as the engine, one per shape, at
addresses the graphs can keep. Sampling stays outside (each row has its own generator).
Prefills (one per window) run eagerly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_TEXT = 64   # text padded to a power of two from here: most prompts share one shape, one compilation
# one compilation per (rows, text bucket): rows 1-8 (four prompts with their CFG rows) times a few text
# lengths is more than dynamo's default of 8, after which it would silently fall back to eager
RECOMPILE_LIMIT = 64
CACHE_ROUND = 128   # cache lengths are rounded up to this (melody models: the text's length varies)


class CompiledStep:
    def __init__(self, engine):
        self.engine = engine
        dev = engine._device
        self.mode = "reduce-overhead" if dev.type == "cuda" else "default"
        self._pos = engine._positions(CACHE_ROUND).to(engine._dtype())
        self._index = torch.zeros(1, dtype=torch.long, device=dev)
        self._caches: dict[tuple[int, int], list] = {}
        for t in (self._pos, self._index):
            torch._dynamo.mark_static_address(t)
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
        self._fn = torch.compile(self._step, mode=self.mode, dynamic=False, fullgraph=True)

    def pad_text(self, hidden: torch.Tensor, mask: torch.Tensor):
        """Zero text positions up to the bucket length, masked out (the null condition's rows stay all zero,
        so their uniform attention over zeros gives the same output)."""
        t = hidden.shape[1]
        size = max(MIN_TEXT, 1 << (t - 1).bit_length())
        if size == t:
            return hidden, mask
        return F.pad(hidden, (0, 0, 0, size - t)), F.pad(mask, (0, size - t))

    def cache(self, rows: int, positions: int) -> list:
        """A KV cache for `rows` rows and at least `positions` positions, zeroed: stale values past the
        position are masked, but a NaN left by a failed batch would still poison the masked sum (0 * NaN)."""
        length = -(-positions // CACHE_ROUND) * CACHE_ROUND
        cache = self._caches.get((rows, length))
        if cache is None:
            if length > self._pos.shape[0]:
                self._pos = self.engine._positions(length).to(self._pos.dtype)
                torch._dynamo.mark_static_address(self._pos)
            cache = self.engine._alloc_cache(rows, length)
            for kv in cache:
                for t in kv:
                    torch._dynamo.mark_static_address(t)
            self._caches[rows, length] = cache
        for kv in cache:
            for t in kv:
                t.zero_()
        return cache

    def __call__(self, tokens: torch.Tensor, position: int, cache, cross) -> torch.Tensor:
        """Logits (rows, K, V) for one step: tokens (rows, K, 1) at `position` of the cache from `cache()`."""
        if position >= cache[0][0].shape[2]:
            raise ValueError(f"position {position} is past the cache ({cache[0][0].shape[2]})")
        self._index.fill_(position)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()   # the previous step's outputs are no longer read
        return self._fn(tokens, cache, cross)

    def _step(self, tokens: torch.Tensor, cache, cross) -> torch.Tensor:
        e = self.engine
        x = e._embed(tokens) + self._pos.index_select(0, self._index)
        keys = torch.arange(cache[0][0].shape[2], device=x.device)
        mask = torch.where(keys <= self._index, 0.0, float("-inf")).to(x.dtype)[None, None, None]
        return e._forward(x, 0, cache, cross, at=(self._index, mask))
