"""Decoder weights stored as column panels, the layout the native kernel reads fastest (gemv.c,
`troubadour_panels`; measured in bench/README.md).

A Linear's (out, in) weight becomes (in / width, out, width): panel b holds columns [b*width, (b+1)*width) of
every output row. A decode step multiplies 1-8 rows by each weight; in the row-major layout a 4096-wide weight
needs 32 KiB of inputs per row pair, all of L1, and the weight stream evicted them (0.5-0.7 of a plain read).
With panels each thread still reads one contiguous run per panel and only a panel's width of inputs is live.

Packing happens in place (no second copy of the weights: laptops) and keeps the model whole: every packed
Linear is replaced by a `PanelLinear` that computes the same function for any input with PyTorch ops, so
transformers' own forward, a second Engine on the same backend, or another precision keep working; the engine
calls the kernel through `run` for the few-row decode steps.
"""

from __future__ import annotations

import torch

MAX_WIDTH = 512   # gemv.c PANEL_MAX: 8 input rows x 512 floats = 16 KiB of L1


def width_for(in_features: int) -> int | None:
    """The widest panel (a multiple of 64, at most MAX_WIDTH) that divides in_features; None if none does."""
    for w in range(MAX_WIDTH, 63, -64):
        if in_features % w == 0:
            return w
    return None


class PanelLinear(torch.nn.Module):
    """y = x @ W^T + b with W held as panels (k, out, width); `panels` may be a view of a wider module's panels
    (the rows of q, k or v inside the fused qkv), so no weight is stored twice."""

    def __init__(self, panels: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.panels = torch.nn.Parameter(panels, requires_grad=False)
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.width = panels.shape[2]
        self.in_features = panels.shape[0] * self.width
        self.out_features = panels.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Any rows, any dtype or device: one matmul per panel, accumulated."""
        x2 = x.reshape(-1, self.in_features)
        p = self.panels.to(x.dtype) if self.panels.dtype != x.dtype else self.panels
        y = x2.new_zeros(x2.shape[0], self.out_features) if self.bias is None else \
            self.bias.to(x.dtype).expand(x2.shape[0], -1).clone()
        for b in range(p.shape[0]):
            y.addmm_(x2[:, b * self.width:(b + 1) * self.width], p[b].t())
        return y.view(*x.shape[:-1], self.out_features)

    def run(self, x: torch.Tensor, gemv) -> torch.Tensor:
        """The native kernel for 1-8 fp32 rows on the CPU, else forward(): one unbound call (tests; the engine
        and the bench bind theirs once per weight, native.Gemv.panels_call)."""
        return (self.forward if gemv is None else gemv.panels_call(self))(x)

    def dense(self) -> torch.Tensor:
        """The (out, in) weight, as a new tensor (benchmarks, tests)."""
        return self.panels.detach().permute(1, 0, 2).reshape(self.out_features, self.in_features)

    def rows(self, start: int, stop: int) -> PanelLinear:
        """Output rows [start, stop) as a PanelLinear sharing this one's memory."""
        bias = None if self.bias is None else self.bias.detach()[start:stop]
        return PanelLinear(self.panels.detach()[:, start:stop], bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, panel={self.width}"


def pack(linear: torch.nn.Linear) -> PanelLinear | None:
    """A PanelLinear equal to `linear` (fp32 CPU weights whose width a panel divides), or None."""
    return pack_weight(linear.weight, linear.bias)


def pack_weight(weight: torch.Tensor, bias: torch.Tensor | None = None) -> PanelLinear | None:
    width = width_for(weight.shape[1])
    if width is None or weight.dtype != torch.float32 or weight.device.type != "cpu":
        return None
    out, k = weight.shape[0], weight.shape[1] // width
    panels = weight.detach().reshape(out, k, width).transpose(0, 1).contiguous()
    return PanelLinear(panels, None if bias is None else bias.detach())


def _get(parent: torch.nn.Module, name: str) -> torch.nn.Module:
    return parent[int(name)] if isinstance(parent, torch.nn.ModuleList) else getattr(parent, name)


def _swap(parent: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    if isinstance(parent, torch.nn.ModuleList):
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def pack_decoder(layers, lm_heads: torch.nn.ModuleList, fused: torch.nn.ModuleDict) -> int:
    """Packs what a decode step multiplies (fused qkv, self-attention out, cross-attention q and out, fc1, fc2,
    the fused heads) and points the model's own modules at the packed memory: q/k/v and each codebook's head
    become row views of the fused panels. The row-major tensors are released as each one is packed, so the
    peak is one weight more than the model. Returns how many weights were packed (0 when run again)."""
    packed = 0

    def fused_views(name: str, i: int | None, originals: list[tuple[torch.nn.Module, str]]):
        nonlocal packed
        holder = fused[name] if i is None else fused[name][i]
        if isinstance(holder, PanelLinear):
            return
        p = pack(holder)
        if p is None:
            return
        if i is None:
            fused[name] = p
        else:
            fused[name][i] = p
        start = 0
        for parent, attr in originals:
            n = _get(parent, attr).out_features
            _swap(parent, attr, p.rows(start, start + n))
            start += n
        packed += 1

    for i, layer in enumerate(layers):
        att = layer.self_attn
        fused_views("qkv", i, [(att, "q_proj"), (att, "k_proj"), (att, "v_proj")])
        owners = [(att, "out_proj"), (layer, "fc1"), (layer, "fc2")]
        catt = getattr(layer, "encoder_attn", None)
        if catt is not None:
            owners += [(catt, "q_proj"), (catt, "out_proj")]
        for parent, attr in owners:
            mod = getattr(parent, attr)
            if isinstance(mod, torch.nn.Linear) and (p := pack(mod)) is not None:
                setattr(parent, attr, p)
                packed += 1
    fused_views("heads", None, [(lm_heads, str(c)) for c in range(len(lm_heads))])
    return packed

