"""The decode step through torch.compile; on a CUDA GPU it replays as CUDA graphs (`--compile`).

On a GPU a step at the batch sizes a game uses is a few hundred small kernels, and launching them from
Python costs more than running them. A CUDA graph replays them in one launch, but only if the step's inputs
keep their addresses and its shapes come from a small set. So the step writes its KV cache at a position held
in a tensor and attends over the whole cache it is given, positions not yet written masked; that cache is a
view, a power of two long, of one whole-window buffer all row counts share (a dynamic length: no
recompilation, one graph recorded per length); the text is padded to a power of two and its keys/values
copied into held buffers. Sampling stays outside (each row has its own generator), and so do prefills.
"""

from __future__ import annotations

import logging
import threading

import torch
import torch.nn.functional as F

log = logging.getLogger("troubadour.compiled")

MIN_TEXT = 64   # text padded to a power of two from here: most prompts share one shape, one compilation
# shapes that change make dynamo recompile (the first change of a dimension makes it dynamic); past its
# default limit of 8 it would silently run the step as Python
RECOMPILE_LIMIT = 64
CACHE_ROUND = 128   # whole-window caches are rounded up to this (melody models: the text's length varies)
MIN_CACHE = 256     # shortest cache: the length only matters once attention costs as much as the weights


def mode_for(device: torch.device, same_thread: bool = False) -> str:
    """torch.compile's mode: CUDA graphs ("reduce-overhead") on CUDA where torch can record and replay them in
    the threads that will call the step. The server warms up on its main thread and generates on its engine
    thread, which needs torch's fix of cudagraph trees in Python threads (pytorch#184357, which came with
    `graph_capture_lock`); older torch keeps its graph managers in the main thread's thread-locals, so there
    graphs work only when every call stays on the main thread (`same_thread`: the CLIs). Elsewhere plain
    compilation, which has no such limit."""
    if device.type != "cuda":
        return "default"
    import torch._inductor.cudagraph_trees as trees

    if hasattr(trees, "graph_capture_lock"):
        return "reduce-overhead"
    on_main = threading.current_thread() is threading.main_thread()
    return "reduce-overhead" if same_thread and on_main else "default"


class CompiledStep:
    def __init__(self, engine, same_thread: bool = False):
        self.engine = engine
        dev = engine._device
        self.mode = mode_for(dev, same_thread)
        self._pos = engine._positions(CACHE_ROUND).to(engine._dtype())
        self._index = torch.zeros(1, dtype=torch.long, device=dev)
        self._whole: dict[int, list] = {}                        # whole length -> [(k, v)] per layer
        self._caches: dict[tuple[int, int, int], list] = {}    # (rows, whole, length) -> views of those
        self._cross: dict[tuple, tuple] = {}                     # conditioning shapes -> buffers
        self.failure: str | None = None   # why compiling failed; the plain loop runs from then on
        try:   # (an older torch refuses some Pythons here rather than at the first call)
            for t in (self._pos, self._index):
                torch._dynamo.mark_static_address(t)
            cfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"   # (older name)
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
            self._fn = torch.compile(self._step, mode=self.mode, fullgraph=True)
        except Exception as exc:
            self._failed(exc)

    def _static(self, t: torch.Tensor, dynamic: int | None = None) -> None:
        """Tell dynamo `t` keeps its address (and which dimension's size varies), while compiling works."""
        if self.failure is None:
            torch._dynamo.mark_static_address(t)
            if dynamic is not None:
                torch._dynamo.mark_dynamic(t, dynamic)

    def _failed(self, exc: Exception) -> None:
        self.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        self.engine.matmuls = f"PyTorch (--compile failed: {self.failure})"
        log.warning("--compile failed, running the plain decode loop: %s", self.failure)

    def pad_text(self, hidden: torch.Tensor, mask: torch.Tensor):
        """Zero text positions up to the bucket length, masked out (the null condition's rows stay all zero,
        so their uniform attention over zeros gives the same output)."""
        t = hidden.shape[1]
        size = max(MIN_TEXT, 1 << (t - 1).bit_length())
        if size == t:
            return hidden, mask
        return F.pad(hidden, (0, 0, 0, size - t)), F.pad(mask, (0, size - t))

    def cache(self, rows: int, positions: int, limit: int) -> list:
        """A zeroed KV cache for `rows` rows and at least `positions` of at most `limit` positions.

        The step attends over every position of the cache it is given, so a short track gets a short cache:
        a power of two from MIN_CACHE long, a view of one whole-window buffer that every row count shares
        (one address for the graphs, one cache's memory; a batch larger than any before allocates a larger
        buffer). The length is a dynamic dimension, so new lengths do not recompile. Zeroed because stale
        values past the position are masked, yet a NaN left by a failed batch would poison the masked sum."""
        full = -(-limit // CACHE_ROUND) * CACHE_ROUND
        length = min(full, max(MIN_CACHE, 1 << (positions - 1).bit_length()))
        views = self._caches.get((rows, full, length))
        if views is None:
            whole = self._whole.get(full)
            if whole is None or whole[0][0].shape[0] < rows:
                if full > self._pos.shape[0]:
                    self._pos = self.engine._positions(full).to(self._pos.dtype)
                    self._static(self._pos)
                whole = self._whole[full] = self.engine._alloc_cache(rows, full)
                self._caches = {k: v for k, v in self._caches.items() if k[1] != full}   # views of the old one
            views = [tuple(t[:rows, :, :length] for t in kv) for kv in whole]
            for kv in views:
                for t in kv:
                    self._static(t, dynamic=2)
            self._caches[rows, full, length] = views
        for kv in views:
            for t in kv:
                t.zero_()
        return views

    def conditioning(self, cross):
        """The text's cross-attention keys/values copied into buffers kept per shape: fresh tensors for every
        batch would be inputs the graphs copy on every step (or re-record for)."""
        if cross is None:
            return None
        kv, bias, _ = cross
        key = (bias.shape, kv[0][0].shape)
        held = self._cross.get(key)
        if held is None:
            held = ([tuple(torch.empty_like(t) for t in pair) for pair in kv], torch.empty_like(bias))
            for t in [t for pair in held[0] for t in pair] + [held[1]]:
                self._static(t)
            self._cross[key] = held
        for mine, theirs in zip(held[0], kv):
            for a, b in zip(mine, theirs):
                a.copy_(b)
        held[1].copy_(bias)
        return held[0], held[1], None   # (the compiled step attends with the mask)

    def __call__(self, tokens: torch.Tensor, position: int, cache, cross) -> torch.Tensor | None:
        """Logits (rows, K, V) for one step: tokens (rows, K, 1) at `position` of the cache from `cache()`;
        None once compiling has failed (the engine's plain step then runs on the same cache, rewriting this
        position whatever a failed call left there)."""
        if self.failure is not None:
            return None
        if position >= cache[0][0].shape[2]:
            raise ValueError(f"position {position} is past the cache ({cache[0][0].shape[2]})")
        self._index.fill_(position)
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()   # the previous step's outputs are no longer read
        try:
            return self._fn(tokens, cache, cross)
        except Exception as exc:   # a compiler failure (inductor, triton, a new torch) must not fail tracks
            self._failed(exc)
            return None

    def _step(self, tokens: torch.Tensor, cache, cross) -> torch.Tensor:
        e = self.engine
        x = e._embed(tokens) + self._pos.index_select(0, self._index)
        keys = torch.arange(cache[0][0].shape[2], device=x.device)
        mask = torch.where(keys <= self._index, 0.0, float("-inf")).to(x.dtype)[None, None, None]
        return e._forward(x, 0, cache, cross, at=(self._index, mask))
