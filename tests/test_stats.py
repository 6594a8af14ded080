"""Streaming latent statistics: brute-force equality, merging, per-prompt tracking, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_persona.stats import LatentStats, PerPromptTracker, bootstrap_ratio_delta


def _data(n=300, d=40, seed=0, sparse=False):
    g = torch.Generator().manual_seed(seed)
    if sparse:  # ~1% non-zeros: the sparse path of LatentStats.update
        d = 400
        x = torch.relu(torch.randn(n, d, generator=g) - 2.3)
        x[:, 0] = 1000.0 + torch.randn(n, generator=g)
        x[:, 1] = 0.0
        x[::3, 2] = -torch.rand(n, generator=g)[::3]
        return x
    x = torch.relu(torch.randn(n, d, generator=g) - 0.8)  # ~20% non-zeros: the dense path
    x[:, 0] = 1000.0 + torch.randn(n, generator=g)        # large offset: catches E[x^2]-E[x]^2
    x[:, 1] = 0.0                                         # never fires
    x[:, 2] = -torch.rand(n, generator=g)                 # negative: never "fires", max < 0
    return x


def _check(s: LatentStats, x: torch.Tensor):
    x64 = x.double()
    assert s.n == x.shape[0]
    torch.testing.assert_close(s.mean, x64.mean(0), rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(s.var, x64.var(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s.max, x64.amax(0), rtol=0, atol=0)
    assert torch.equal(s.fire_count, (x > 0).sum(0))
    torch.testing.assert_close(s.freq, (x > 0).double().mean(0))


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("chunks", [[300], [1, 299], [7] * 42 + [6], [100, 0, 200]])
def test_streaming_equals_brute_force(chunks, sparse):
    x = _data(sparse=sparse)
    if sparse:
        assert 0 < float((x[:32] != 0).float().mean()) < 0.05
    s = LatentStats(x.shape[1])
    start = 0
    for c in chunks:
        s.update(x[start : start + c])
        start += c
    _check(s, x)


def test_float32_and_bfloat16_chunks_accumulate_in_float64():
    x = _data()
    s = LatentStats(x.shape[1]).update(x.to(torch.bfloat16))
    xb = x.to(torch.bfloat16)
    torch.testing.assert_close(s.mean, xb.double().mean(0), rtol=1e-6, atol=1e-6)
    assert s.mean.dtype == torch.float64


def test_merge_equals_one_stream():
    x = _data(n=257)
    a, b, c = LatentStats(40), LatentStats(40), LatentStats(40)
    a.update(x[:10])
    b.update(x[10:200])
    c.update(x[200:])
    empty = LatentStats(40)
    merged = LatentStats(40).merge(empty).merge(a).merge(b).merge(c).merge(empty)
    _check(merged, x)
    with pytest.raises(ValueError, match="d_sae"):
        a.merge(LatentStats(3))


def test_state_dict_round_trip_and_errors():
    x = _data()
    s = LatentStats(40).update(x)
    r = LatentStats.from_state_dict(s.state_dict())
    _check(r, x)
    with pytest.raises(ValueError, match=r"\[n, 40\]"):
        s.update(torch.zeros(3, 41))
    with pytest.raises(ValueError, match="positive"):
        LatentStats(0)
    fresh = LatentStats(4)
    assert torch.isnan(fresh.var).all() and torch.isnan(fresh.freq).all() and torch.isinf(fresh.max).all()


@pytest.mark.parametrize("capacity", [None, 6], ids=["lists", "preallocated"])
def test_per_prompt_tracker(capacity):
    t = PerPromptTracker([3, 1], capacity=capacity)
    t.add(torch.tensor([5, 2]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([2, 0]))
    u = PerPromptTracker([3, 1], capacity=capacity)
    u.add(torch.tensor([0]), torch.tensor([[6.0, 9.0]]), torch.tensor([3]))
    t.merge(u)
    assert t.prompt_ids.tolist() == [0, 2, 5]
    assert t.counts.tolist() == [3, 0, 2]
    m = t.means()
    assert m[0].tolist() == [2.0, 3.0] and torch.isnan(m[1]).all() and m[2].tolist() == [0.5, 1.0]
    assert t.column(1) == 1
    assert t.select([1]).tolist() == [[9.0], [4.0], [2.0]] and t.select([]).shape == (3, 0)
    with pytest.raises(KeyError, match="not tracked"):
        t.column(7)
    with pytest.raises(ValueError, match="twice"):
        t.add(torch.tensor([0]), torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        t.prompt_ids
    r = PerPromptTracker.from_state_dict(u.state_dict())
    assert torch.equal(r.sums, u.sums)
    if capacity is not None:
        with pytest.raises(ValueError, match="capacity"):
            u.add(torch.tensor([6]), torch.zeros(1, 2), torch.tensor([1]))


def test_bootstrap_ratio_delta():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 20, size=200)
    a = rng.random(200) * counts
    b = a + counts * (0.5 + 0.1 * rng.standard_normal(200))
    est, lo, hi = bootstrap_ratio_delta(a, b, counts, n_boot=500, confidence=0.95, seed=1)
    assert est == pytest.approx((b - a).sum() / counts.sum())
    assert lo < est < hi and 0.45 < lo and hi < 0.55
    assert bootstrap_ratio_delta(a, b, counts, n_boot=500, confidence=0.95, seed=1) == (est, lo, hi)
    same = bootstrap_ratio_delta(a, a + counts, counts, n_boot=50, confidence=0.9, seed=0)
    assert same == pytest.approx((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ratio_delta(a, b, counts, n_boot=0, confidence=0.95, seed=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ratio_delta(a, b, counts, n_boot=10, confidence=1.5, seed=0)
