"""The sampler: the distribution it draws from, and each row's independence from its batch."""

import numpy as np
import pytest
import torch

from troubadour.params import GenParams
from troubadour.sampling import Sampler

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
DRAWS = 4000   # codebooks of one call: each (codebook, candidate) gets its own noise, so these are 4000 draws


def frequencies(params: GenParams, calls: int = 5, beside: GenParams | None = None) -> np.ndarray:
    """Row 0's picks; `beside`, a second row in the batch (a top-p row makes the batch sort everything)."""
    sampler = Sampler([params] + ([beside] if beside else []), torch.device("cpu"))
    logits = LOGITS.repeat(2 if beside else 1, DRAWS, 1)
    picks = torch.cat([sampler.sample(logits)[0] for _ in range(calls)])
    return np.bincount(picks.numpy(), minlength=len(LOGITS)) / len(picks)


def expected(temperature: float, keep: int) -> np.ndarray:
    p = torch.softmax(LOGITS / temperature, 0).numpy()
    p[keep:] = 0
    return p / p.sum()


@pytest.mark.parametrize("params,keep", [
    (GenParams(top_k=3, temperature=1.0), 3),                  # the top-k candidates alone
    (GenParams(top_k=5, temperature=0.7), 5),
    (GenParams(top_k=0, top_p=0.0, temperature=1.3), 8),       # the whole vocabulary
    (GenParams(top_k=250, temperature=1.0), 8),                # k past the vocabulary
    (GenParams(top_p=0.7, temperature=1.0), 3),                # nucleus: 0.40 + 0.25 < 0.7 <= + 0.15
])
@pytest.mark.parametrize("beside", [None, GenParams(top_p=0.9, seed=5)])
def test_draws_follow_the_kept_softmax(params, keep, beside):
    n = 5 * DRAWS
    want = expected(params.temperature, keep)
    got = frequencies(params, beside=beside)
    sigma = np.sqrt(want * (1 - want) / n) + 1e-9
    assert np.all(np.abs(got - want) < 5 * sigma + 1e-4), (got, want)
    assert got[keep:].sum() == 0


def test_a_row_draws_the_same_whatever_its_batch():
    logits = torch.randn(3, 4, 2048, generator=torch.Generator().manual_seed(0))
    mine = GenParams(top_k=250, seed=11)
    alone = Sampler([mine], torch.device("cpu"))
    others = [GenParams(top_p=0.9, seed=12), GenParams(top_k=0, seed=13)]   # rows that sort everything
    for batch in ([mine] + others, [mine, others[0]], [mine, GenParams(top_k=20, seed=14)]):
        together = Sampler(batch, torch.device("cpu"))
        solo = Sampler([mine], torch.device("cpu"))
        for _ in range(3):
            both = together.sample(logits[:len(batch)])
            assert torch.equal(both[0], solo.sample(logits[:1])[0])
    assert alone.sample(logits[:1]).shape == (1, 4)


def test_subset_keeps_settings_and_streams():
    params = [GenParams(top_k=5, seed=1), GenParams(top_p=0.8, seed=2), GenParams(top_k=9, seed=3)]
    logits = torch.randn(3, 4, 64, generator=torch.Generator().manual_seed(1))
    full, part = Sampler(params, torch.device("cpu")), Sampler(params, torch.device("cpu"))
    full.sample(logits)
    part.sample(logits)
    sub = part.subset([0, 2])   # a later window with the middle row done
    assert torch.equal(sub.sample(logits[[0, 2]]), full.sample(logits)[[0, 2]])


def test_seeds_past_32_bits_draw_their_own_streams_on_the_cpu():
    """mt19937 (the CPU generator) keeps a seed's low 32 bits: 5 and 5 + 2**32 drew the same noise, so they
    made the same track under two cache keys. Seeds below 2**32 keep their streams (the tracks made before)."""
    def draws(seed):
        sampler = Sampler([GenParams(top_k=0, seed=seed)], torch.device("cpu"))
        return torch.cat([sampler.sample(LOGITS.repeat(1, 64, 1))[0] for _ in range(4)])

    seeds = [5, 5 + 2**32, 5 + 3 * 2**40, 2**63 - 2**32 + 5, 2**32, 0]
    picks = [draws(s) for s in seeds]
    for i in range(len(seeds)):
        for j in range(i):
            assert not torch.equal(picks[i], picks[j]), (seeds[i], seeds[j])
    g = torch.Generator().manual_seed(5)   # a small seed seeds the generator as it always did
    want = (LOGITS.repeat(1, 64, 1) - torch.empty(1, 64, 8).exponential_(generator=g)[0].log()).argmax(-1)
    assert torch.equal(draws(5)[:64], want[0])
