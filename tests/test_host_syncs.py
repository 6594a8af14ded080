"""The diffing loop never waits for the device: no host read of a device value per batch.

On a GPU every ``.item()``, ``.cpu()``, ``.tolist()``, ``bool(t)``/``int(t)``/``float(t)`` and every op
whose output size depends on the data (``nonzero``, boolean-mask indexing, ``bincount``) makes the
host wait until the device has finished all queued work; done per batch, that keeps the GPU idle
while the host prepares the next batch. Here a spy counts such calls made from tl_persona's code while
:func:`tl_persona.engine.stream` runs, on the CPU (CI has no GPU; ``tests/test_cuda.py`` checks the
same on CUDA with ``torch.cuda.set_sync_debug_mode``). Per batch means: the difference between two
runs whose second phase has 25 and 50 batches, divided by 25, so the per-run reads (the pilot's
candidates, the end of the run) cancel out. Deterministic: counts, not times.
"""

from __future__ import annotations

import collections
import copy
import os
import random
import sys

import pytest
import torch

from tl_persona import engine, testing
from tl_persona.data import PromptSet
from tl_persona.directions import Projection
from tl_persona.models import as_adapter
from tl_persona.saes import SAEEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

HOOK = "blocks.1.hook_resid_pre"
PKG = os.path.dirname(engine.__file__)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")
# Host-side preparation of a batch (padding, counted positions) runs before the device sees it,
# on CPU tensors, in a worker thread on CUDA runs: its data-dependent shapes wait for nothing.
HOST_SIDE = {"_prepare"}


def _caller(depth: int):
    f = sys._getframe(depth)
    if f.f_code.co_filename.startswith(PKG) and f.f_code.co_name not in HOST_SIDE:
        return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno} {f.f_code.co_name}"
    return None


def spy_syncs(fn) -> tuple[collections.Counter, collections.Counter]:
    """Run ``fn``; count host reads and data-dependent-shape ops called from tl_persona (by call site)."""
    reads: collections.Counter = collections.Counter()
    shapes: collections.Counter = collections.Counter()
    saved = {n: getattr(torch.Tensor, n) for n in (*READS, "nonzero", "__getitem__")}
    saved_fns = {n: getattr(torch, n) for n in ("nonzero", "bincount", "masked_select", "unique")}

    def read(name):
        orig = saved[name]

        def w(self, *a, **k):
            site = _caller(2)
            if site:
                reads[f"{name} {site}"] += 1
            return orig(self, *a, **k)
        return w

    def shaped(name, orig):
        def w(*a, **k):
            site = _caller(2)
            if site:
                shapes[f"{name} {site}"] += 1
            return orig(*a, **k)
        return w

    def getitem(self, idx):
        if isinstance(idx, torch.Tensor) and idx.dtype == torch.bool:
            site = _caller(2)
            if site:
                shapes[f"bool index {site}"] += 1
        return saved["__getitem__"](self, idx)

    try:
        for n in READS:
            setattr(torch.Tensor, n, read(n))
        torch.Tensor.nonzero = shaped("nonzero", saved["nonzero"])
        torch.Tensor.__getitem__ = getitem
        for n, f in saved_fns.items():
            setattr(torch, n, shaped(n, f))
        fn()
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        for n, f in saved_fns.items():
            setattr(torch, n, f)
    return reads, shapes


@pytest.fixture(scope="module")
def setup(hooked_model):
    ft = copy.deepcopy(hooked_model)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    rng = random.Random(0)
    prompts = [" ".join(f"w{rng.randrange(90)}" for _ in range(rng.randint(3, 12))) for _ in range(264)]
    sae = testing.tiny_sae("topk", d_sae=512, k=4, hook_name=HOOK)  # sparse latents: the CPU's sparse path
    proj = Projection(torch.randn(3, 32, generator=torch.Generator().manual_seed(2)), HOOK)
    return [as_adapter(hooked_model), as_adapter(ft)], prompts, [SAEEncoder(sae), proj]


def _per_batch(models, prompts, encs, **kw):
    """Per-batch counts (difference of 25 and 50 batches after the 64-prompt pilot), and the first run's.
    Both models run every batch: a count of 2 per batch is one per model and batch."""
    runs = []
    for n in (64 + 100, 64 + 200):
        tp = PromptSet.from_list(prompts[:n]).tokenize(models[0])
        runs.append(spy_syncs(lambda: engine.stream(models, encs, tp, "all", batch_size=4, seed=0, **kw)))
    (r1, s1), (r2, s2) = runs
    per_batch = lambda a, b: {k: (b[k] - a[k]) / 25 for k in set(a) | set(b) if b[k] != a[k]}  # noqa: E731
    return per_batch(r1, r2), per_batch(s1, s2), r1


@pytest.mark.parametrize("kw", [dict(track_top=3), dict(track=[[0, 5, 9], [1]])], ids=["top", "fixed"])
def test_no_host_read_per_batch(setup, kw):
    models, prompts, encs = setup
    models = models if "track_top" in kw else models[:1]
    reads, _, _ = _per_batch(models, prompts, encs, **kw)
    # what remains is per run: the first chunk of each CPU encoder (sparse or not), the pilot's
    # candidates, the non-finite check at the end of each phase, the final top (on host copies)
    assert reads == {}, f"host reads per batch: {reads}"


def test_device_path_has_no_data_dependent_shape_and_gives_the_same_numbers(setup, monkeypatch):
    """The path a GPU runs (dense statistics: fixed-shape kernels only), exercised on the CPU."""
    models, prompts, encs = setup
    tp = PromptSet.from_list(prompts).tokenize(models[0])
    ref = engine.stream(models, encs, tp, "all", batch_size=4, seed=0, track_top=3)
    monkeypatch.setattr(engine, "_SPARSE_DEVICES", ())
    reads, shapes, _ = _per_batch(models, prompts, encs, track_top=3)
    assert reads == {} and shapes == {}, (reads, shapes)
    dense = engine.stream(models, encs, tp, "all", batch_size=4, seed=0, track_top=3)
    for k in range(2):
        for e in range(2):
            a, b = ref.stats[k][e], dense.stats[k][e]
            assert a.n == b.n
            torch.testing.assert_close(b.mean, a.mean, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(b.var, a.var, rtol=1e-5, atol=1e-7)
            assert torch.equal(b.max, a.max) and torch.equal(b.fire_count, a.fire_count)
    for e in range(2):
        assert torch.equal(ref.tracked[e].features, dense.tracked[e].features)
        for k in range(2):  # per-prompt sums do not depend on the statistics' path
            assert torch.equal(ref.tracked[e].sums[k], dense.tracked[e].sums[k])


def test_batches_prepared_by_a_worker_thread_give_the_same_result(setup, monkeypatch):
    """The prefetching path CUDA runs take (a worker thread pads the next batches), on the CPU."""
    models, prompts, encs = setup
    tp = PromptSet.from_list(prompts[:120]).tokenize(models[0])
    ref = engine.stream(models, encs, tp, "all", batch_size=4, seed=0, track_top=3)
    monkeypatch.setattr(engine, "_PREFETCH_DEVICES", ("cpu",))
    got = engine.stream(models, encs, tp, "all", batch_size=4, seed=0, track_top=3)
    for k in range(2):
        for e in range(2):
            assert torch.equal(got.stats[k][e].mean, ref.stats[k][e].mean)
            assert torch.equal(got.tracked[e].sums[k], ref.tracked[e].sums[k])


def test_prefetching_passes_errors_on_and_stops_its_worker():
    import threading

    def items():
        yield 1
        yield 2
        raise KeyError("in the worker")

    it = engine._prefetched(items())
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(KeyError, match="in the worker"):
        next(it)
    before = threading.active_count()
    it = engine._prefetched(iter(range(10**6)), depth=2)
    assert next(it) == 0
    it.close()  # the consumer stops early: the worker must not stay blocked on a full queue
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.02)
    assert threading.active_count() <= before
