"""Sampling of the next codes from logits: per-row temperature, top-k, top-p, CFG scale and seed."""

from __future__ import annotations

import torch


class Sampler:
    """Per-row temperature, top-k, top-p, CFG and seed, vectorised over the batch.

    Sampling is an exponential race (argmax of logit - log E, E ~ Exp(1) from the row's own generator),
    which draws from the same distribution as multinomial sampling but lets every row keep its own
    seeded stream, so a track does not depend on what else shares its batch.
    """

    def __init__(self, params: list, device):
        p = params
        self.cfg = torch.tensor([x.cfg_coef for x in p], device=device)[:, None, None]
        self.temp = torch.tensor([x.temperature for x in p], device=device)[:, None, None]
        self.top_k = torch.tensor([x.top_k for x in p], device=device)
        self.top_p = torch.tensor([x.top_p for x in p], device=device, dtype=torch.float32)
        self.gens = []
        for x in p:
            g = torch.Generator(device=device)
            g.manual_seed(generator_seed(x.seed, g.device))
            self.gens.append(g)
        # candidates a row draws noise for: its top k, or the whole vocabulary (top-p, or top-k off); its own
        # count, so a row's random stream does not depend on the rows it is batched with
        self.widths = [x.top_k if x.top_p <= 0 < x.top_k else 0 for x in p]   # 0: the vocabulary
        self.nucleus = any(x.top_p > 0 for x in p)

    def subset(self, rows: list[int]) -> "Sampler":
        """The same rows' settings and generators (streams continue), for a window with fewer rows."""
        if rows == list(range(len(self.gens))):
            return self
        out = object.__new__(Sampler)
        idx = torch.tensor(rows, device=self.cfg.device)
        out.cfg, out.temp = self.cfg[idx], self.temp[idx]
        out.top_k, out.top_p = self.top_k[idx], self.top_p[idx]
        out.gens = [self.gens[r] for r in rows]
        out.widths = [self.widths[r] for r in rows]
        out.nucleus = self.nucleus   # (any subset: the top-p mask applies only to rows with top-p)
        return out

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        b, k, v = logits.shape
        widths = [min(w, v) if w else v for w in self.widths]
        width = max(widths)
        # overflow (bounded settings should not, params.py): keep the order, drop the infinities
        big = torch.finfo(logits.dtype).max / 4
        logits = torch.nan_to_num(logits / self.temp, nan=-big, posinf=big, neginf=-big)
        # only top-k rows: their candidates alone (topk is ~20x cheaper than sorting a 2048-code vocabulary)
        cand, order = logits.topk(width, dim=-1) if width < v else logits.sort(dim=-1, descending=True)
        if self.nucleus:   # top-p takes precedence over top-k where set, as in audiocraft (its rows make width v)
            probs = cand.softmax(dim=-1)
            drop = (probs.cumsum(-1) - probs) >= self.top_p[:, None, None]
            cand = cand.masked_fill(drop & (self.top_p > 0)[:, None, None], float("-inf"))
        # a row's top k: noise only for its first k candidates, +inf (never picked) past them
        noise = torch.full((b, k, width), float("inf"), device=logits.device)
        for r, (g, w) in enumerate(zip(self.gens, widths)):
            noise[r, :, :w] = torch.empty(k, w, device=logits.device).exponential_(generator=g)
        pick = (cand - noise.clamp_min(1e-20).log()).argmax(dim=-1, keepdim=True)
        return order.gather(-1, pick)[..., 0]


def generator_seed(seed: int, device) -> int:
    """The seed a row's generator gets. The CPU generator (mt19937) keeps only a seed's low 32 bits, so 5 and
    5 + 2**32 made the same track; seeds from 2**32 up are mixed down to 32 bits (splitmix64) instead, and the
    smaller ones, most seeds in use, keep the tracks they always made. Other devices take all 64 bits."""
    if seed < 1 << 32 or torch.device(device).type != "cpu":
        return seed
    mask = (1 << 64) - 1
    z = (seed + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & 0xFFFFFFFF

