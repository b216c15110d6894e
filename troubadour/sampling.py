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
            g.manual_seed(x.seed)
            self.gens.append(g)

    def subset(self, rows: list[int]) -> "Sampler":
        """The same rows' settings and generators (streams continue), for a window with fewer rows."""
        if rows == list(range(len(self.gens))):
            return self
        out = object.__new__(Sampler)
        idx = torch.tensor(rows, device=self.cfg.device)
        out.cfg, out.temp = self.cfg[idx], self.temp[idx]
        out.top_k, out.top_p = self.top_k[idx], self.top_p[idx]
        out.gens = [self.gens[r] for r in rows]
        return out

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        b, k, v = logits.shape
        # extreme but valid settings (cfg 1e300, temperature 1e-300) overflow: keep the order, drop the infinities
        big = torch.finfo(logits.dtype).max / 4
        logits = torch.nan_to_num(logits / self.temp, nan=-big, posinf=big, neginf=-big)
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
