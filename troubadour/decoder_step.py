"""The decoder's forward pass over the checkpoint's modules, for Engine (engine.py): what each step uses looked
up once (the plans), the KV cache, embeddings, and the layers themselves, through the native kernel, a
few-rows matmul layout or PyTorch. A mixin: Engine sets the attributes it reads (`_layers`, `_fused`,
`_gemv`, `_skinny`...)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from .conditioning import cross_keys_values
from .matmul import few_rows_linear
from .panels import PanelLinear


class DecoderStep:
    _qkv = property(lambda self: self._fused["qkv"])

    def _make_plans(self) -> None:
        """What each step uses, looked up once (again after a change of the matmul layout, `_skinny`)."""
        self._plan = [self._layer_plan(i, layer) for i, layer in enumerate(self._layers)]
        self._plan_heads = self._lin_plan(self._fused["heads"])

    def _lin_plan(self, mod) -> Callable[[torch.Tensor], torch.Tensor]:
        """How a step applies one linear: the native kernel on panels, a few-rows layout, or the module."""
        if isinstance(mod, PanelLinear):   # packed (by this engine or an earlier one on the same backend)
            return self._gemv.panels_call(mod) if self._gemv is not None else mod.forward
        if self._skinny:
            return partial(few_rows_linear, weight=mod.weight, bias=mod.bias, onednn=self._onednn, gemv=self._gemv)
        return mod

    def _layer_plan(self, i: int, layer) -> SimpleNamespace:
        """What a step uses of one layer, looked up once: nn.Module attribute access was ~0.4 ms a step."""
        att, catt = layer.self_attn, getattr(layer, "encoder_attn", None)
        # layer norms and GELU as the functions their modules call: a module call costs ~3 us more, 72 a step
        norm = lambda m: m and partial(torch.layer_norm, normalized_shape=m.normalized_shape,  # noqa: E731
                                       weight=m.weight, bias=m.bias, eps=m.eps)
        return SimpleNamespace(
            ln1=norm(layer.self_attn_layer_norm), qkv=self._lin_plan(self._qkv[i]), out=self._lin_plan(att.out_proj),
            scale=att.scaling, ln2=norm(getattr(layer, "encoder_attn_layer_norm", None)),
            cq=catt and self._lin_plan(catt.q_proj), co=catt and self._lin_plan(catt.out_proj),
            cscale=catt and catt.scaling, ln3=norm(layer.final_layer_norm),
            act=getattr(layer.activation_fn, "act", layer.activation_fn),
            fc1=self._lin_plan(layer.fc1), fc2=self._lin_plan(layer.fc2))

    def _lin(self, mod, x: torch.Tensor) -> torch.Tensor:
        return self._lin_plan(mod)(x)

    def _dtype(self) -> torch.dtype:
        return self._dec.layer_norm.weight.dtype

    def _alloc_cache(self, rows: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (rows, self._num_heads, steps, self._dec.config.hidden_size // self._num_heads)
        h = dict(dtype=self._dtype(), device=self._device)
        return [(torch.empty(shape, **h), torch.empty(shape, **h)) for _ in self._layers]

    def _positions(self, steps: int) -> torch.Tensor:
        emb = self._dec.embed_positions
        if steps > emb.weights.shape[0]:
            emb.make_weights(steps, emb.embedding_dim)
        return emb.weights[:steps]

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(rows, K, n) tokens -> (rows, n, D): the sum of the codebooks' embeddings."""
        emb = self._dec.embed_tokens
        x = emb[0](tokens[:, 0])
        for c in range(1, tokens.shape[1]):
            x = x + emb[c](tokens[:, c])
        return x

    def _cross_kv(self, hidden: torch.Tensor, mask: torch.Tensor):
        """Keys/values of the text conditioning, computed once per batch instead of once per step (with each
        row's length where decode steps attend in the native kernel)."""
        return cross_keys_values(self._layers, self._num_heads, hidden, mask, native=self._attend)

    def _forward(self, x: torch.Tensor, start: int, cache, cross, at=None) -> torch.Tensor:
        """Decoder layers over positions [start, start + n); returns logits of the last one (rows, K, V).

        `at`: (position tensor (1,), additive key mask) for the compiled step (compiled.py): the step writes
        the cache at a tensor position and attends over all of it, so no shape changes from step to step."""
        rows, n, d = x.shape
        h = self._num_heads
        cross_kv, cross_bias, lengths = cross if cross is not None else (None, None, None)
        text_lengths = lengths if n == 1 else None   # the native kernel takes decode steps
        end = start + n
        for i, p in enumerate(self._plan):
            y = p.ln1(x)
            q, kk, vv = p.qkv(y).view(rows, n, 3, h, d // h).unbind(2)
            kc, vc = cache[i]
            if at is not None:
                kc.index_copy_(2, at[0], kk.transpose(1, 2))
                vc.index_copy_(2, at[0], vv.transpose(1, 2))
                a = F.scaled_dot_product_attention(q.transpose(1, 2), kc, vc, attn_mask=at[1],
                                                   scale=p.scale).transpose(1, 2).reshape(rows, n, d)
            else:
                kc[:, :, start:end] = kk.transpose(1, 2)
                vc[:, :, start:end] = vv.transpose(1, 2)
                if n == 1 and self._attend:   # a decode step: the native kernel streams the cache
                    a = self._gemv.attend(q, kc, vc, end, p.scale)
                else:   # a prefill starts at 0, so PyTorch's top-left causal mask is the right one
                    a = F.scaled_dot_product_attention(q.transpose(1, 2), kc[:, :, :end], vc[:, :, :end],
                                                       is_causal=n > 1, scale=p.scale)
                    a = a.transpose(1, 2).reshape(rows, n, d)
            x = x + p.out(a)

            if cross is not None:
                q = p.cq(p.ln2(x)).view(rows, n, h, d // h)
                ck, cv = cross_kv[i]
                if text_lengths is not None:   # (SDPA with a mask: ~2x the time for 2 rows, ~2.6x for 8)
                    a = self._gemv.attend(q, ck, cv, ck.shape[2], p.cscale, text_lengths)
                else:
                    a = F.scaled_dot_product_attention(q.transpose(1, 2), ck, cv, attn_mask=cross_bias,
                                                       scale=p.cscale)
                    a = a.transpose(1, 2).reshape(rows, n, d)
                x = x + p.co(a)

            x = x + p.fc2(p.act(p.fc1(p.ln3(x))))
        x = self._dec.layer_norm(x[:, -1])
        return self._plan_heads(x).view(rows, len(self._heads), -1).float()   # (rows, K, V)
