"""Matmuls for the decode step's shape: a few rows (prompts and their CFG rows) times every weight.

That shape is memory-bound, yet F.linear (x @ W^T through MKL) reaches about a third of the memory bandwidth
on the CPU. Measured per step (bench/README.md, "Where a small-shaped step goes"): the native kernel
(native.py, gemv.c) reads the weights at nearly full speed for 1-2 rows and beats oneDNN up to 8 (the engine
runs it on weights packed as panels, panels.py; here on row-major weights no panel width divides); without it
W @ x^T is the best PyTorch has for 1-2 rows, oneDNN's linear on the same dense weights for 3-32 (no packed
copy, so no extra memory); past that the work is compute-bound and F.linear is fine.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ValidationError

GEMV_ROWS = 2
NATIVE_ROWS = 8
ONEDNN_ROWS = 32


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    onednn: bool, gemv=None) -> torch.Tensor:
    """F.linear(x, weight, bias) for fp32 CPU tensors, in the layout that is fastest for x's row count.
    gemv: native.kernel(), or None."""
    rows = x.numel() // x.shape[-1]
    x2 = x.reshape(rows, x.shape[-1])
    if rows <= NATIVE_ROWS and gemv is not None and weight.is_contiguous():
        y = gemv(x2.contiguous(), weight, bias)
    elif rows <= GEMV_ROWS:
        y = torch.mm(weight, x2.t())
        # numpy transposes this (N, 2) result 5x faster than Tensor.contiguous (measured)
        y = torch.from_numpy(np.ascontiguousarray(y.detach().numpy().T)) if rows > 1 else y.view(1, -1)
        if bias is not None:
            y += bias
    elif onednn and rows <= ONEDNN_ROWS:
        y = torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "none", [None], "")
    else:
        return F.linear(x, weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def onednn_linear_works() -> bool:
    """oneDNN's linear is an internal op of PyTorch's CPU builds (Inductor uses it): use it only where it
    exists and agrees with F.linear."""
    try:
        x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
        y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [None], "")
        return torch.backends.mkldnn.is_available() and torch.allclose(y, F.linear(x, w, b), atol=1e-5)
    except (RuntimeError, AttributeError, TypeError):
        return False


def align_parameters(module: torch.nn.Module, alignment: int = 64) -> int:
    """Moves parameters that do not start on a cache line into fresh (aligned) memory; returns how many.
    Checkpoints loaded from safetensors leave most tensors 8 bytes off a cache line, which made every vector
    load of the native kernel straddle two lines: 1.3x its time on aligned copies of the same weights."""
    moved = 0
    for p in module.parameters():
        if p.device.type == "cpu" and p.data_ptr() % alignment:
            p.data = p.data.clone()
            moved += 1
    return moved


def fuse_linears(mods: list[torch.nn.Linear]) -> torch.nn.Linear:
    """Linears that read the same input, as one whose output is theirs concatenated."""
    w = torch.cat([m.weight for m in mods]).detach()
    fused = torch.nn.Linear(w.shape[1], w.shape[0], bias=mods[0].bias is not None, device="meta")
    fused.weight = torch.nn.Parameter(w, requires_grad=False)
    if mods[0].bias is not None:
        fused.bias = torch.nn.Parameter(torch.cat([m.bias for m in mods]).detach(), requires_grad=False)
    start = 0
    for m in mods:   # no extra memory: the originals now view the fused tensor
        n = m.weight.shape[0]
        m.weight.data = w[start:start + n]
        start += n
    return fused


def fuse_projections(layers, heads) -> torch.nn.ModuleDict:
    """One matmul for each layer's q, k, v and one for the codebooks' heads, held as nn.Linears so the
    precision options cover them; the original modules' weights become views of the fused tensors."""
    qkv = torch.nn.ModuleList(fuse_linears([x.self_attn.q_proj, x.self_attn.k_proj, x.self_attn.v_proj])
                              for x in layers)
    return torch.nn.ModuleDict({"qkv": qkv, "heads": fuse_linears(list(heads))})


def set_precision(modules: list[torch.nn.Module], device: torch.device, precision: str | None) -> str | None:
    """The decoder's speed options (the text encoder and codec stay as loaded); returns the precision set, or
    None for the weights as loaded. Their quality cost (codes and SNR against fp32) is measured in bench/."""
    if precision in ("auto", "fp32") or precision is None:
        return None
    if precision == "bf16":
        for module in modules:
            module.to(torch.bfloat16)
    elif precision == "int8":
        if device.type != "cpu":
            raise ValidationError("int8 dynamic quantization runs on the CPU only", field="precision")
        import warnings

        # PyTorch marks its eager quantization deprecated (still there in 2.13); the server's start-up line says
        # int8 instead of three warnings about it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            from torch.ao.quantization import quantize_dynamic

            for module in modules:
                quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    else:
        raise ValidationError(f"precision must be fp32, bf16 or int8, got {precision!r}", field="precision")
    return precision
