"""The text conditioning a decode step attends to: cross-attention keys and values, computed once per batch
(not once per step) by engine.py."""

from __future__ import annotations

import torch


def cross_keys_values(layers, heads: int, hidden: torch.Tensor, mask: torch.Tensor, native: bool):
    """(per-layer (keys, values) each (rows, heads, T, d), additive mask (rows, 1, 1, T)), plus each row's
    length (int64) when `native`: the native kernel's attention then takes lengths instead of the mask, and
    the keys/values are laid out position by position."""
    rows, t, _ = hidden.shape
    # Additive mask; a row with nothing to attend (the null condition) attends to all of its zero
    # vectors instead, which gives the same zero output without a NaN from an all -inf softmax.
    keep = mask.bool() | ~mask.bool().any(dim=1, keepdim=True)
    bias = torch.zeros(rows, 1, 1, t, dtype=hidden.dtype, device=hidden.device)
    bias.masked_fill_(~keep[:, None, None, :], torch.finfo(hidden.dtype).min)
    # the null condition's rows (CFG) are zeros: their keys/values are the projections of a zero vector,
    # computed once instead of for every row and token (half the work with CFG)
    live = hidden.flatten(1).any(dim=1)
    some = None if bool(live.all()) else torch.nonzero(live).flatten()

    def proj(mod):
        if some is None:
            return mod(hidden)
        y = mod(hidden.new_zeros(1, 1, hidden.shape[2])).expand(rows, t, -1).clone()
        if len(some):
            y[some] = mod(hidden[some])
        return y

    # lengths only where each row's kept keys are a prefix (text is padded on the right)
    lengths = keep.sum(dim=1)
    native = native and bool((keep == (torch.arange(t, device=keep.device) < lengths[:, None])).all())
    out = []
    for layer in layers:
        att = layer.encoder_attn
        kk = proj(att.k_proj).view(rows, t, heads, -1).transpose(1, 2)
        vv = proj(att.v_proj).view(rows, t, heads, -1).transpose(1, 2)
        out.append((kk.contiguous(), vv.contiguous()) if native else (kk, vv))
    return out, bias, (lengths.to(torch.int64).contiguous() if native else None)
