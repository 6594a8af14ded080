"""Streaming, mergeable per-latent statistics, reducible across ``torch.distributed`` ranks.

Model diffing needs, for every SAE latent, its mean activation (and spread, max and firing rate) over
millions of tokens. :class:`LatentStats` consumes ``[n, d_sae]`` chunks and keeps only ``O(d_sae)``
float64 state, so memory does not grow with the number of prompts. Chunks are combined with the
parallel-variance formula of Chan, Golub and LeVeque (exact up to float rounding, stable where the
textbook ``E[x^2] - E[x]^2`` is not); the same formula merges accumulators of different workers and
ranks.

:class:`PerPromptTracker` keeps per-prompt sums for a *few* selected latents: what a bootstrap
confidence interval over prompts needs, and nothing for the other latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_persona.validate import BadInput

__all__ = ["LatentStats", "PerPromptTracker", "SparseEntries", "sparse_entries", "bootstrap_ratio_delta", "dist_info"]

_F64 = torch.float64
_SPARSE_DENSITY = 0.05  # chunks with fewer non-zeros than this share take the sparse path


def dist_info(group: Any = None) -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, or ``(0, 1)`` when none is initialized."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _comm_device(group: Any = None) -> torch.device:
    """Device for collective tensors: CUDA for NCCL, CPU otherwise (gloo)."""
    import torch.distributed as dist

    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class SparseEntries:
    """The non-zero entries of a ``[n, d]`` chunk: row and column indices and values."""

    rows: Int[Tensor, " nnz"]
    cols: Int[Tensor, " nnz"]
    vals: Float[Tensor, " nnz"]


def sparse_entries(f: Float[Tensor, "n d"], probe: bool = True) -> SparseEntries | None:
    """The non-zero entries of ``f`` when it is sparse (under 5% non-zeros in its first rows), else None.

    Why: SAE latents are mostly zero; statistics from the non-zeros alone skip most of the work.
    ``probe=False`` skips the density check (a host read of a count) and always extracts the entries:
    for a caller that decided once, e.g. the engine per encoder and run.
    """
    if not f.is_floating_point() or f.ndim != 2 or f.shape[0] == 0:
        return None
    if probe and int(torch.count_nonzero(f[:32])) >= _SPARSE_DENSITY * f[:32].numel():
        return None
    d = f.shape[1]
    flat = f.reshape(-1)
    idx = flat.nonzero().squeeze(1)
    return SparseEntries(torch.div(idx, d, rounding_mode="floor"), idx % d, flat[idx])


class LatentStats:
    """Per-latent count, mean, variance, max and firing count over a stream of activation chunks.

    Why: averaging SAE latents over a data set must not hold the ``[N, T, d_sae]`` activations.
    State is ``d_sae`` float64 values per statistic; every token (row of a chunk) counts once.

    ``n`` is the number of tokens seen; ``mean``, ``var`` (unbiased, ``ddof=1``), ``std``, ``max``
    and ``fire_count`` (tokens with activation ``> 0``) are ``[d_sae]`` tensors; ``freq`` is
    ``fire_count / n``. ``per_prompt`` is an optional :class:`PerPromptTracker` filled by
    :func:`tl_persona.diff.collect` when asked for per-prompt values.
    """

    def __init__(self, d_sae: int, device: torch.device | str | None = None) -> None:
        if not isinstance(d_sae, int) or d_sae < 1:
            raise BadInput(f"d_sae must be a positive integer, got {d_sae!r}")
        self.d_sae = d_sae
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.n = 0
        self._mean = torch.zeros(d_sae, dtype=_F64, device=dev)
        self._m2 = torch.zeros(d_sae, dtype=_F64, device=dev)
        self._max = torch.full((d_sae,), -torch.inf, dtype=_F64, device=dev)
        self._fire = torch.zeros(d_sae, dtype=torch.int64, device=dev)
        self.per_prompt: PerPromptTracker | None = None

    # ---------------------------------------------------------------- update
    def update(self, f: Float[Tensor, "n d_sae"], entries: "SparseEntries | None" = None, *,
               sparse: bool | None = None) -> "LatentStats":
        """Add a chunk of ``n`` tokens' latent activations (any float dtype; accumulated in float64).

        ``entries`` may pass the chunk's non-zero entries when the caller already extracted them
        (:func:`sparse_entries`), to avoid a second scan. ``sparse=False`` takes the dense path
        without looking (no host read, no data-dependent shape: nothing waits for a GPU), ``True`` the
        sparse one; None (default) decides from the chunk. Both paths give the same statistics up to
        float rounding.
        """
        if f.ndim != 2 or f.shape[1] != self.d_sae:
            raise BadInput(f"expected a [n, {self.d_sae}] chunk of latent activations, got shape {tuple(f.shape)}")
        nb = int(f.shape[0])
        if nb == 0:
            return self
        f = f.detach()
        if f.device != self._mean.device:
            self.to(f.device)
        if entries is None and sparse is not False:
            entries = sparse_entries(f, probe=sparse is None)
        if entries is not None:
            mean_b, m2_b, mx, fire = self._chunk_sparse(nb, entries)
        else:
            mean_b, m2_b, mx, fire = self._chunk_dense(f)
        self._merge_moments(nb, mean_b, m2_b.clamp_min_(0.0))
        torch.maximum(self._max, mx, out=self._max)
        self._fire += fire
        return self

    def _chunk_dense(self, f: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Moments of a dense chunk, shifted by the running mean (or the first row) so that float32
        sums lose nothing to a large common offset; the shifted formulas are exact in exact math.
        float32 is enough within a chunk (bounded rows, shifted values); float64 is kept for the
        running state, where millions of tokens add up."""
        nb = f.shape[0]
        if f.dtype not in (torch.float32, torch.float64):
            f = f.float()  # half-precision sums would lose the digits we keep float64 for
        shift = (self._mean if self.n else f[0].to(_F64)).to(f.dtype)
        c = f - shift
        s1 = c.sum(0).to(_F64)
        c.square_()
        s2 = c.sum(0).to(_F64)
        del c
        mean_b = shift.to(_F64) + s1 / nb
        m2_b = s2 - s1.square() / nb
        fire = (f > 0).sum(0)  # an exact count in one pass
        return mean_b, m2_b, f.amax(0).to(_F64), fire

    def _chunk_sparse(self, nb: int, e: "SparseEntries") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Moments of a mostly-zero chunk (SAE latents) from its non-zero entries only."""
        d = self.d_sae
        dev = e.vals.device
        v = e.vals.to(_F64)
        col = e.cols
        nz = torch.bincount(col, minlength=d)
        s1 = torch.zeros(d, dtype=_F64, device=dev).index_add_(0, col, v)
        mean_b = s1 / nb
        dv = v - mean_b[col]
        m2_b = torch.zeros(d, dtype=_F64, device=dev).index_add_(0, col, dv * dv)
        m2_b += (nb - nz).to(_F64) * mean_b.square()  # the zeros' squared deviations
        mx = torch.full((d,), -torch.inf, dtype=_F64, device=dev).scatter_reduce_(0, col, v, "amax")
        mx = torch.where(nz < nb, mx.clamp_min(0.0), mx)  # a zero is an activation too
        fire = torch.bincount(col[v > 0], minlength=d)
        return mean_b, m2_b, mx, fire

    def _merge_moments(self, nb: int, mean_b: Tensor, m2_b: Tensor) -> None:
        na = self.n
        n = na + nb
        delta = mean_b - self._mean
        self._mean += delta * (nb / n)
        self._m2 += m2_b + delta.square() * (na * nb / n)
        self.n = n

    def merge(self, other: "LatentStats") -> "LatentStats":
        """Fold ``other`` (statistics of other tokens) into this accumulator, in place; returns self."""
        if not isinstance(other, LatentStats) or other.d_sae != self.d_sae:
            raise BadInput(f"can only merge LatentStats with d_sae={self.d_sae}")
        if other.n == 0:
            return self
        dev = self._mean.device
        self._merge_moments(other.n, other._mean.to(dev), other._m2.to(dev))
        torch.maximum(self._max, other._max.to(dev), out=self._max)
        self._fire += other._fire.to(dev)
        return self

    def reduce_distributed(self, group: Any = None) -> "LatentStats":
        """Combine the accumulators of all ranks of ``group`` into each rank's (in place); returns self.

        A no-op without an initialized process group. Two ``all_reduce`` rounds: token counts, sums
        and firing counts (SUM) and maxima (MAX) first; then each rank's squared deviations from the
        global mean (``m2_r + n_r (mean_r - mean)^2``, the Chan merge written as a sum), so the result
        equals single-process accumulation up to float rounding.
        """
        import torch.distributed as dist

        rank, world = dist_info(group)
        if world == 1:
            return self
        dev = _comm_device(group)
        d = self.d_sae
        packed = torch.cat(
            [torch.tensor([float(self.n)], dtype=_F64), (self._mean * self.n).cpu(), self._fire.to(_F64).cpu()]
        ).to(dev)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        mx = self._max.clone().to(dev)
        dist.all_reduce(mx, op=dist.ReduceOp.MAX, group=group)
        n = int(round(float(packed[0])))
        mean = packed[1 : 1 + d] / max(n, 1)
        dev_local = self._mean.device
        m2_part = (self._m2.to(dev) + self.n * (self._mean.to(dev) - mean).square()) if self.n else torch.zeros_like(mean)
        dist.all_reduce(m2_part, op=dist.ReduceOp.SUM, group=group)
        self.n = n
        self._mean = mean.to(dev_local)
        self._m2 = m2_part.to(dev_local)
        self._max = mx.to(dev_local)
        self._fire = packed[1 + d :].round().to(torch.int64).to(dev_local)
        return self

    # ---------------------------------------------------------------- results
    @property
    def mean(self) -> Float[Tensor, " d_sae"]:
        """Mean activation per latent over all tokens seen (0 before any token)."""
        return self._mean.clone()

    @property
    def m2(self) -> Float[Tensor, " d_sae"]:
        """Sum of squared deviations from the mean per latent (Welford's M2)."""
        return self._m2.clone()

    @property
    def var(self) -> Float[Tensor, " d_sae"]:
        """Unbiased variance per latent (NaN with fewer than 2 tokens)."""
        if self.n < 2:
            return torch.full_like(self._m2, float("nan"))
        return self._m2 / (self.n - 1)

    @property
    def std(self) -> Float[Tensor, " d_sae"]:
        """Unbiased standard deviation per latent."""
        return self.var.sqrt()

    @property
    def max(self) -> Float[Tensor, " d_sae"]:
        """Largest activation per latent (-inf before any token)."""
        return self._max.clone()

    @property
    def fire_count(self) -> Int[Tensor, " d_sae"]:
        """Number of tokens on which each latent was > 0."""
        return self._fire.clone()

    @property
    def freq(self) -> Float[Tensor, " d_sae"]:
        """Firing frequency per latent: share of tokens with activation > 0 (NaN before any token)."""
        if self.n == 0:
            return torch.full_like(self._mean, float("nan"))
        return self._fire.to(_F64) / self.n

    def to(self, device: torch.device | str) -> "LatentStats":
        """Move the state to ``device`` (in place); returns self."""
        self._mean, self._m2, self._max, self._fire = (
            t.to(device) for t in (self._mean, self._m2, self._max, self._fire)
        )
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """A copy of the state as CPU tensors (for saving): ``n``, ``mean``, ``m2``, ``max``, ``fire_count``."""
        return {
            "n": torch.tensor([self.n], dtype=torch.int64),
            "mean": self._mean.detach().cpu().clone(),
            "m2": self._m2.detach().cpu().clone(),
            "max": self._max.detach().cpu().clone(),
            "fire_count": self._fire.detach().cpu().clone(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "LatentStats":
        """Rebuild an accumulator from :meth:`state_dict`."""
        s = cls(int(state["mean"].shape[0]))
        s.n = int(state["n"].reshape(-1)[0])
        s._mean = state["mean"].to(_F64).clone()
        s._m2 = state["m2"].to(_F64).clone()
        s._max = state["max"].to(_F64).clone()
        s._fire = state["fire_count"].to(torch.int64).clone()
        return s

    def __repr__(self) -> str:
        return f"LatentStats(d_sae={self.d_sae}, n={self.n})"


class PerPromptTracker:
    """Per-prompt activation sums and token counts for a few selected latents.

    Why: a confidence interval over prompts (bootstrap) needs each prompt's value, but keeping them
    for every latent would make memory grow with ``prompts x d_sae``. Here memory is
    ``prompts x len(latents)``. ``means()`` gives the per-prompt means (NaN for a prompt with no
    counted token).

    With ``capacity`` (the number of prompts, when known) the storage is allocated once and rows are
    written in place: no small long-lived allocation per batch, which would otherwise pin the C heap
    between the large transient buffers of a forward pass and let the process's peak memory creep
    up with the number of batches. ``dtype`` is the storage type of the sums (float64; float32
    halves the memory for large candidate sets at ~1e-7 relative precision). ``device`` (with
    ``capacity``) keeps the sums there, e.g. on the GPU that computes them, so that :meth:`write`
    never waits for it; the counts, known on the host, stay there. Read the results after
    :meth:`to` ``("cpu")``.
    """

    def __init__(
        self,
        latents: Int[Tensor, " m"] | Sequence[int],
        capacity: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.latents = torch.as_tensor(latents, dtype=torch.long).flatten().cpu()
        self.capacity = capacity
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if capacity is None and self.device.type != "cpu":
            raise BadInput("a PerPromptTracker on a device needs a capacity (its storage is allocated once)")
        self._reset()

    def _reset(self) -> None:
        self._ids: list[Tensor] = []
        self._sums: list[Tensor] = []
        self._counts: list[Tensor] = []
        if self.capacity is not None:
            self._buf_sums = torch.zeros(self.capacity, len(self.latents), dtype=self.dtype, device=self.device)
            self._buf_counts = torch.full((self.capacity,), -1, dtype=torch.int64)

    def to(self, device: torch.device | str) -> "PerPromptTracker":
        """Move the stored sums to ``device`` (in place); returns self."""
        self.device = torch.device(device)
        if self.capacity is not None:
            self._buf_sums = self._buf_sums.to(self.device)
        return self

    def write(self, ids: Int[Tensor, " batch"], sums: Float[Tensor, "batch m"], counts: Int[Tensor, " batch"],
              host_ids: Int[Tensor, " batch"] | None = None) -> None:
        """Record a batch like :meth:`add`, without its checks and without any host read: the
        caller guarantees unseen prompt ids within the capacity (the engine's per-batch path).
        ``ids`` on the sums' device, ``host_ids`` (default ``ids``) and ``counts`` on the CPU."""
        self._buf_sums.index_copy_(0, ids, sums.detach().to(self._buf_sums.dtype))
        self._buf_counts[ids if host_ids is None else host_ids] = counts

    def add(
        self,
        prompt_ids: Int[Tensor, " batch"],
        sums: Float[Tensor, "batch m"],
        counts: Int[Tensor, " batch"],
    ) -> None:
        """Record the latents' activation sums and counted tokens for a batch of prompts."""
        if sums.ndim != 2 or sums.shape[1] != len(self.latents) or sums.shape[0] != len(prompt_ids):
            raise BadInput(
                f"sums must be [batch={len(prompt_ids)}, m={len(self.latents)}], got {tuple(sums.shape)}"
            )
        ids = torch.as_tensor(prompt_ids, dtype=torch.long).cpu()
        if self.capacity is not None:
            if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.capacity):
                raise BadInput(f"prompt ids must lie in [0, {self.capacity}) for this tracker's capacity")
            if bool((self._buf_counts[ids] >= 0).any()) or len(torch.unique(ids)) != len(ids):
                raise BadInput("a prompt was recorded twice in a PerPromptTracker; each prompt must be added once")
            self.write(ids.to(self.device), sums.to(self.device), torch.as_tensor(counts, dtype=torch.int64).cpu(), ids)
            return
        self._ids.append(ids)
        self._sums.append(sums.detach().to(self.dtype).cpu())
        self._counts.append(torch.as_tensor(counts, dtype=torch.int64).cpu())

    def _cat(self) -> tuple[Tensor, Tensor, Tensor]:
        m = len(self.latents)
        if self.capacity is not None:
            ids = (self._buf_counts >= 0).nonzero().squeeze(1)
            return ids, self._buf_sums[ids].to(_F64), self._buf_counts[ids]
        if not self._ids:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, m, dtype=_F64), torch.zeros(0, dtype=torch.int64)
        ids, sums, counts = torch.cat(self._ids), torch.cat(self._sums).to(_F64), torch.cat(self._counts)
        order = torch.argsort(ids, stable=True)
        ids, sums, counts = ids[order], sums[order], counts[order]
        if len(ids) > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise BadInput("a prompt was recorded twice in a PerPromptTracker; each prompt must be added once")
        self._ids, self._sums, self._counts = [ids], [sums], [counts]
        return ids, sums, counts

    @property
    def prompt_ids(self) -> Int[Tensor, " n"]:
        """Indices of the recorded prompts, ascending."""
        return self._cat()[0]

    @property
    def sums(self) -> Float[Tensor, "n m"]:
        """Activation sums per recorded prompt (rows follow :attr:`prompt_ids`) and latent."""
        return self._cat()[1]

    @property
    def counts(self) -> Int[Tensor, " n"]:
        """Counted tokens per recorded prompt."""
        return self._cat()[2]

    def means(self) -> Float[Tensor, "n m"]:
        """Per-prompt mean activation of each tracked latent (NaN where a prompt has no counted token)."""
        _, sums, counts = self._cat()
        c = counts.to(_F64)[:, None]
        return torch.where(c > 0, sums / c.clamp_min(1), torch.full_like(sums, float("nan")))

    def select(self, latents: Sequence[int]) -> Float[Tensor, "n k"]:
        """Sums of just these tracked ``latents`` (float64, rows follow :attr:`prompt_ids`), without
        copying the other columns."""
        cols = torch.tensor([self.column(j) for j in latents], dtype=torch.long)
        if self.capacity is not None:
            ids = (self._buf_counts >= 0).nonzero().squeeze(1)
            return self._buf_sums[ids][:, cols].to(_F64) if len(cols) else torch.zeros(len(ids), 0, dtype=_F64)
        return self._cat()[1][:, cols]

    def column(self, latent: int) -> int:
        """Column of ``latent`` in :attr:`sums` (KeyError when it is not tracked)."""
        hits = (self.latents == int(latent)).nonzero()
        if len(hits) == 0:
            raise KeyError(f"latent {latent} is not tracked (tracked: {self.latents[:10].tolist()}...)")
        return int(hits[0])

    def merge(self, other: "PerPromptTracker") -> "PerPromptTracker":
        """Add the prompts recorded by ``other`` (same latents, other prompts), in place; returns self."""
        if not torch.equal(self.latents, other.latents):
            raise BadInput("can only merge PerPromptTrackers of the same latents")
        ids, sums, counts = other._cat()
        if len(ids):
            self.add(ids, sums, counts)
        self._cat()
        return self

    def gather_distributed(self, group: Any = None) -> "PerPromptTracker":
        """Collect every rank's prompts into each rank's tracker (all_gather), in place; returns self.

        A no-op without an initialized process group.
        """
        import torch.distributed as dist

        rank, world = dist_info(group)
        if world == 1:
            return self
        dev = _comm_device(group)
        ids, sums, counts = self._cat()
        m = len(self.latents)
        size = torch.tensor([len(ids)], dtype=torch.int64, device=dev)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        n_max = int(max(int(s) for s in sizes))
        packed = torch.zeros(n_max, m + 2, dtype=_F64)
        packed[: len(ids), 0] = ids.to(_F64)
        packed[: len(ids), 1] = counts.to(_F64)
        packed[: len(ids), 2:] = sums
        packed = packed.to(dev)
        parts = [torch.zeros_like(packed) for _ in range(world)]
        dist.all_gather(parts, packed, group=group)
        self._reset()
        for p, s in zip(parts, sizes):
            p = p[: int(s)].cpu()
            self.add(p[:, 0].round().to(torch.long), p[:, 2:], p[:, 1].round().to(torch.int64))
        self._cat()
        return self

    def state_dict(self) -> dict[str, Tensor]:
        """The state as CPU tensors: ``latents``, ``prompt_ids``, ``sums``, ``counts``."""
        ids, sums, counts = self._cat()
        return {"latents": self.latents.clone(), "prompt_ids": ids.clone(), "sums": sums.clone(), "counts": counts.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> "PerPromptTracker":
        """Rebuild a tracker from :meth:`state_dict`."""
        t = cls(state["latents"])  # list storage: capacity and dtype are not part of the state
        if len(state["prompt_ids"]):
            t.add(state["prompt_ids"], state["sums"], state["counts"])
        return t


def bootstrap_ratio_delta(
    sums_a: np.ndarray,
    sums_b: np.ndarray,
    counts: np.ndarray,
    *,
    n_boot: int,
    confidence: float = 0.95,
    seed: int,
) -> tuple[float, float, float]:
    """Token-pooled mean difference ``(sum b - sum a) / tokens`` and its percentile-bootstrap interval.

    Prompts are resampled with replacement (multinomial weights), and for each resample the pooled
    delta is recomputed, so the interval is for the same statistic as the point estimate.
    Returns ``(estimate, lo, hi)`` of the central ``confidence`` interval (e.g. 0.95).
    """
    if not isinstance(n_boot, int) or n_boot < 1:
        raise BadInput(f"n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise BadInput(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    alpha = 1.0 - confidence
    keep = counts > 0
    d = (sums_b - sums_a)[keep].astype(np.float64)
    c = counts[keep].astype(np.float64)
    if c.size == 0:
        raise BadInput("no prompt has a counted token; nothing to bootstrap")
    est = float(d.sum() / c.sum())
    rng = np.random.default_rng(seed)
    n = c.size
    out = np.empty(n_boot)
    step = max(1, int(2**22 // max(n, 1)))
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64)
        out[s : s + b] = (w @ d) / np.maximum(w @ c, 1e-300)
    lo, hi = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return est, float(lo), float(hi)
