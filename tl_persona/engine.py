"""The streaming statistics engine: models x encoders x prompts -> per-feature statistics.

Every diffing instrument in tl_persona is this one loop with a different *encoder*: an SAE (its
latents), a set of directions (projections, persona vectors), several SAEs at several layers. The
engine owns everything around the encoder, once:

* batching prompts of similar length, the token scope (:mod:`tl_persona.tokens`), BOS and padding;
* one forward pass per batch and model, stopped right after the deepest hook any encoder reads;
* encoding only the counted positions, in chunks of bounded size (no ``[N, T, features]`` tensor);
* streaming float64 statistics (:class:`~tl_persona.stats.LatentStats`) per model and encoder;
* per-prompt values for a few features: fixed ones, or the top changes between two models found by
  a seeded pilot (with an exact second pass in the rare case the pilot missed one);
* sharding over ``torch.distributed`` ranks and the exact reduction;
* running the models together on each batch, or one model over all prompts at a time (each moved
  to the device only for its own pass), with identical results either way.

An encoder is anything with the small :class:`Encoder` protocol; :class:`tl_persona.saes.SAEEncoder`
and :class:`tl_persona.directions.Projection` are the two that ship.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_persona.data import PromptBatch, TokenizedPrompts
from tl_persona.models import ModelAdapter, check_width
from tl_persona.provenance import package_versions
from tl_persona.stats import LatentStats, PerPromptTracker, dist_info, sparse_entries
from tl_persona.validate import BadInput

__all__ = ["Encoder", "Tracked", "StreamResult", "stream", "chunk_rows", "trim_heap", "scope_tokens_or_raise", "on_device"]

# Feature values materialized at once (rows x features). On CPU a small chunk (16 MiB in float32) keeps
# the C heap from fragmenting under buffers of varying size, which would let the peak memory creep up
# with the number of batches; on CUDA, PyTorch's caching allocator handles that and big chunks run faster.
_CHUNK_ELEMENTS = 2**22
_CHUNK_ELEMENTS_CUDA = 2**26
_PILOT_PROMPTS = 64  # prompts in the pilot that picks the per-prompt candidates (at least one batch)
_PILOT_ELEMENTS = 2**24  # and at most this many per-prompt values (prompts x features) per model
_CANDIDATES = (8, 256)  # pilot candidates per direction: at least max(8 * top, top + 256) ...
# ... and as many more as this many per-prompt values allow (prompts x candidates, per model and
# encoder; 32 MiB in float32). A 64-prompt pilot of a long run is noisy: at 1,449 prompts and 24,576
# latents, 512 candidates per direction missed 8 of the final top 64 and forced the exact second
# pass (a second forward over every prompt, doubling the run); the budget makes that rare, and
# bounds the memory whatever the number of prompts (it narrows to the minimum as prompts grow).
_TRACK_ELEMENTS = 2**23


@runtime_checkable
class Encoder(Protocol):
    """What the engine needs of an encoder: where it reads, how wide it is, and ``encode``.

    ``hook_name``: the hook point whose activation it reads; ``d_in``: that activation's width;
    ``n_features``: the width of its output; ``device``: where ``encode`` runs (activations are
    moved there); ``encode(x [n, d_in]) -> [n, n_features]``; ``identity()``: a JSON-ready dict
    for provenance. Optionally ``attached()``: a context manager the engine enters around each
    batch's encode (an SAE kept on the CPU moves to the device there, and back).
    """

    hook_name: str
    d_in: int
    n_features: int
    device: torch.device

    def encode(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n f"]: ...

    def identity(self) -> dict[str, Any]: ...


# =========================================================================== small tools
_LIBC: Any = None


def trim_heap() -> None:
    """Hand freed C-heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere).

    Why: a CPU forward pass allocates and frees many buffers whose sizes change from batch to
    batch; glibc keeps the freed ones, fragmented, and the process's peak memory then creeps up with
    the number of batches although nothing is kept. Trimming after each batch keeps the peak flat.
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def chunk_rows(n_features: int, device: torch.device) -> int:
    """Rows to encode at once so that one chunk of features stays within the memory budget."""
    budget = _CHUNK_ELEMENTS_CUDA if device.type == "cuda" else _CHUNK_ELEMENTS
    return max(1, budget // max(1, n_features))


def scope_tokens_or_raise(tp: TokenizedPrompts, scope: str) -> int:
    """The number of tokens ``scope`` selects over all prompts; an error with the fix when none."""
    total = int(tp.scope_counts(scope).sum())
    if total == 0:
        hint = {
            "response": "the prompts have no responses; pass prompt + response pairs (a conversation ending "
            "with the assistant's message, or (prompt, response)) or use scope='prompt'/'last_prompt'",
        }.get(scope, "every prompt is only a BOS token; pass longer prompts")
        raise BadInput(f"scope={scope!r} selects no token: {hint}")
    return total


@contextlib.contextmanager
def on_device(adapter: ModelAdapter, device: torch.device | None) -> Iterator[None]:
    """Move the model to ``device`` for the body and back to where it was afterwards."""
    if device is None or adapter.device == device:
        yield
        return
    home = adapter.device
    adapter.model.to(device)
    try:
        yield
    finally:
        adapter.model.to(home)
        if device.type == "cuda":
            torch.cuda.empty_cache()


# =========================================================================== results
@dataclass(frozen=True, eq=False)
class Tracked:
    """Per-prompt sums of a few features in every model: ``features`` [m], ``prompt_ids`` [n],
    ``counts`` [n] counted tokens, ``sums[k]`` [n, m] for model ``k``."""

    features: Int[Tensor, " m"]
    prompt_ids: Int[Tensor, " n"]
    counts: Int[Tensor, " n"]
    sums: tuple[Float[Tensor, "n m"], ...]


@dataclass
class StreamResult:
    """What :func:`stream` returns: ``stats[k][e]`` for model ``k`` and encoder ``e``; ``tracked[e]``
    (or None); ``n_tokens`` counted per model; ``second_pass[e]`` latents the pilot missed; ``meta``
    the run's provenance (prompts, scope, seed, batch size, world size, versions)."""

    stats: list[list[LatentStats]]
    tracked: list[Tracked | None]
    n_tokens: int
    second_pass: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    trackers: list[list[PerPromptTracker | None]] = field(default_factory=list)


@dataclass
class _Sinks:
    """Where one (model, encoder)'s features go: statistics, tracked per-prompt sums, pilot sums."""

    stats: LatentStats | None = None
    tracker: PerPromptTracker | None = None
    pilot: list[tuple[Tensor, Tensor, Tensor]] | None = None  # (prompt ids, sums [B, F], counts)


# =========================================================================== the loop
def _feed(enc: Encoder, x: Tensor, rows: Tensor, B: int, counts: Tensor, ids: Tensor, sinks: _Sinks) -> None:
    """Encode the selected rows ``x`` (batch row of each in ``rows``) chunk by chunk into ``sinks``."""
    F = enc.n_features
    dev = enc.device
    track = sinks.tracker.latents.to(dev) if sinks.tracker is not None else None
    tsum = torch.zeros(B, len(track), dtype=torch.float64, device=dev) if track is not None else None
    psum = torch.zeros(B, F, dtype=torch.float32, device=dev) if sinks.pilot is not None else None
    if x.shape[0]:
        rows = rows.to(dev)
        step = chunk_rows(F, dev)
        with torch.inference_mode():
            for s in range(0, x.shape[0], step):
                f = enc.encode(x[s : s + step])
                r = rows[s : s + step]
                ent = sparse_entries(f) if (sinks.stats is not None or psum is not None) else None
                if sinks.stats is not None:
                    sinks.stats.update(f, entries=ent)
                if tsum is not None:
                    tsum.index_add_(0, r, f[:, track].to(torch.float64))
                if psum is not None:
                    if ent is None:
                        psum.index_add_(0, r, f.float())
                    else:
                        psum.view(-1).index_add_(0, r[ent.rows] * F + ent.cols, ent.vals.float())
                del f
    if sinks.tracker is not None:
        sinks.tracker.add(ids, tsum.cpu(), counts)
    if sinks.pilot is not None:
        sinks.pilot.append((ids, psum.cpu(), counts))


def _run_batch(adapter: ModelAdapter, encoders: Sequence[Encoder], pb: PromptBatch, mask: Bool[Tensor, "batch pos"],
               sinks: Sequence[_Sinks]) -> None:
    """One forward of one model up to the deepest hook; each encoder reads its hook's masked rows."""
    hooks = list(dict.fromkeys(e.hook_name for e in encoders))
    acts = adapter.run_to_hooks(pb.tokens.to(adapter.device), hooks)
    m = mask.to(adapter.device)
    rows = m.nonzero()[:, 0]
    counts = m.sum(1).cpu()
    picked = {}
    for h in hooks:
        a = acts[h]
        x = a[m]
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(
                f"model {adapter.name!r} produced non-finite activations at {h!r} (NaN/inf); check the "
                "model's weights and dtype (float16 overflows are common: try bfloat16 or float32)"
            )
        picked[h] = x
    del acts
    for enc, s in zip(encoders, sinks):
        x = picked[enc.hook_name]
        check_width("SAE" if hasattr(enc, "sae") else type(enc).__name__, enc.d_in, x.shape[-1], enc.hook_name,
                    adapter.name)
        # an encoder may keep its weights elsewhere (e.g. on the CPU) until its hook's rows arrive
        with (enc.attached() if hasattr(enc, "attached") else contextlib.nullcontext()):
            _feed(enc, x, rows, m.shape[0], counts, pb.indices, s)


def _select_top(delta: Tensor, k: int) -> list[int]:
    """The ``k`` largest increases (delta > 0) and the ``k`` largest decreases (delta < 0), ties by
    index. A feature that did not change is in neither tail."""
    if k <= 0:
        return []
    d = delta.detach().cpu()
    out: set[int] = set()
    for sign in (1.0, -1.0):
        v = sign * d
        idx = (v > 0).nonzero().squeeze(1)
        order = torch.sort(v[idx], descending=True, stable=True).indices[:k]
        out.update(idx[order].tolist())
    return sorted(out)


def _candidates(pilot_delta: Tensor, top: int, F: int, capacity: int) -> Tensor:
    """A generous superset of the final top changes, from the pilot: its own top, then the budget
    filled with the latents the pilot saw change least, or never saw fire. ``capacity``: prompts
    whose per-prompt values the candidates will hold (sets the budget, see ``_TRACK_ELEMENTS``)."""
    n_cand = min(F, max(_CANDIDATES[0] * top, top + _CANDIDATES[1], _TRACK_ELEMENTS // (2 * max(capacity, 1))))
    chosen = _select_top(pilot_delta, n_cand)
    room = min(F, 2 * n_cand) - len(chosen)
    if room > 0:
        rest = torch.ones(F, dtype=torch.bool)
        rest[chosen] = False
        idx = rest.nonzero().squeeze(1)
        order = torch.sort(pilot_delta[idx].abs(), descending=True, stable=True).indices[:room]
        chosen = sorted(chosen + idx[order].tolist())
    return torch.tensor(chosen, dtype=torch.long)


def stream(
    models: Sequence[ModelAdapter],
    encoders: Sequence[Encoder],
    tp: TokenizedPrompts,
    scope: str,
    *,
    batch_size: int = 16,
    max_tokens: int | None = None,
    seed: int | None = 0,
    track: Sequence[Sequence[int] | None] | None = None,
    track_top: int = 0,
    distributed: bool | None = None,
    one_model_at_a_time: bool = False,
    device: torch.device | str | None = None,
) -> StreamResult:
    """Stream per-feature statistics of every encoder over every model's activations on ``tp``.

    ``scope`` is a checked token selection. Per-prompt sums are kept either for fixed features
    (``track[e]``: a list per encoder, or None) or, with two models and ``track_top > 0``, for the
    ``track_top`` largest increases and decreases of each encoder's mean from model 0 to model 1
    (picked by a seeded pilot; exact). ``seed`` draws the pilot and orders the batches (None: by
    length). With ``one_model_at_a_time`` each model runs over all prompts before the next (and is
    moved to ``device`` for its pass only); the statistics are identical to the joint run's, since
    every model sees the same batches in the same order either way. Sharded over the ranks of an
    initialized process group unless ``distributed`` is False; every rank returns the global result.
    """
    if not encoders:
        raise BadInput("encoders is empty; pass at least one SAE or set of directions")
    if track_top and len(models) != 2:
        raise BadInput(f"track_top needs exactly two models (base, fine-tuned), got {len(models)}")
    n_tokens = scope_tokens_or_raise(tp, scope)
    dev = torch.device(device) if device is not None else None
    rank, world = dist_info() if distributed is not False else (0, 1)
    mine = tp.shard(rank, world)
    E, K = len(encoders), len(models)
    stats = [[LatentStats(e.n_features, device=e.device) for e in encoders] for _ in models]
    on_cpu = all(a.device.type == "cpu" for a in models) and (dev is None or dev.type == "cpu")

    def plan_of(idx: np.ndarray) -> list[np.ndarray]:
        return tp.batch_plan(batch_size, max_tokens=max_tokens, seed=seed, indices=idx) if len(idx) else []

    def run(batches: list[np.ndarray], sinks: list[list[_Sinks]]) -> None:
        """Every model over ``batches``: batch-major (both models per batch) or model-major."""
        masks: dict[int, tuple[PromptBatch, Tensor]] = {}

        def batch(i: int) -> tuple[PromptBatch, Tensor]:
            if i not in masks:
                pb = tp.make_batch(batches[i])
                masks[i] = (pb, pb.mask(scope))
            return masks[i]

        if one_model_at_a_time:
            for k, adapter in enumerate(models):
                with on_device(adapter, dev):
                    for i in range(len(batches)):
                        pb, mask = batch(i)
                        _run_batch(adapter, encoders, pb, mask, sinks[k])
                        if on_cpu:
                            trim_heap()
            return
        for i in range(len(batches)):
            pb, mask = batch(i)
            for k, adapter in enumerate(models):
                _run_batch(adapter, encoders, pb, mask, sinks[k])
            del masks[i]
            if on_cpu:
                trim_heap()

    cap = len(tp)
    tracked: list[Tracked | None] = [None] * E
    second = [0] * E
    if track_top <= 0:
        trackers = [[PerPromptTracker(track[e], capacity=cap) if track is not None and track[e] is not None else None
                     for e in range(E)] for _ in models]
        plan = plan_of(mine)
        run(plan, [[_Sinks(stats=stats[k][e], tracker=trackers[k][e]) for e in range(E)] for k in range(K)])
    else:
        # 1) pilot: a seeded random sample of the prompts, keeping every feature's per-prompt sums
        #    (bounded: _PILOT_PROMPTS prompts, _PILOT_ELEMENTS values per model and encoder).
        widest = max(e.n_features for e in encoders)
        n_pilot = min(len(mine), max(1, min(_PILOT_PROMPTS, _PILOT_ELEMENTS // widest)))
        pilot_idx = np.sort(np.random.default_rng(seed).choice(mine, size=n_pilot, replace=False))
        plan_pilot, plan_rest = plan_of(pilot_idx), plan_of(np.setdiff1d(mine, pilot_idx))
        plan = plan_pilot + plan_rest
        pilots: list[list[list[tuple[Tensor, Tensor, Tensor]]]] = [[[] for _ in range(E)] for _ in models]
        run(plan_pilot, [[_Sinks(stats=stats[k][e], pilot=pilots[k][e]) for e in range(E)] for k in range(K)])
        # 2) candidates from the pilot's (global) change: a generous superset of the final top.
        trackers = []
        cands = []
        for e, enc in enumerate(encoders):
            glob = [stats[0][e], stats[1][e]]
            if world > 1:
                glob = [copy.deepcopy(s).reduce_distributed() for s in glob]
            cands.append(_candidates((glob[1].mean - glob[0].mean).cpu(), track_top, enc.n_features, cap))
        # float32 storage: the candidate set is large, and its final top is copied out in float64
        trackers = [[PerPromptTracker(cands[e], capacity=cap, dtype=torch.float32) for e in range(E)] for _ in models]
        for k in range(K):
            for e in range(E):
                for ids, sums, counts in pilots[k][e]:
                    trackers[k][e].add(ids, sums[:, cands[e]].to(torch.float64), counts)
        del pilots
        # 3) the rest of the prompts, tracking only the candidates.
        run(plan_rest, [[_Sinks(stats=stats[k][e], tracker=trackers[k][e]) for e in range(E)] for k in range(K)])
    for row in stats:
        for s in row:
            if world > 1:
                s.reduce_distributed()
    for k in range(K):
        for e in range(E):
            if trackers[k][e] is not None and world > 1:
                trackers[k][e].gather_distributed()
    if track_top > 0:
        finals = [_select_top(stats[1][e].mean.cpu() - stats[0][e].mean.cpu(), track_top) for e in range(E)]
        extra_need = []
        for e in range(E):
            have = set(trackers[0][e].latents.tolist())
            extra_need.append([j for j in finals[e] if j not in have])
            second[e] = len(extra_need[-1])
        extra = None
        if any(extra_need):
            # 4) rare: a final top feature was not among the pilot's candidates -> exact second pass.
            extra = [[PerPromptTracker(extra_need[e], capacity=cap) if extra_need[e] else None for e in range(E)]
                     for _ in models]
            run(plan, [[_Sinks(tracker=extra[k][e]) for e in range(E)] for k in range(K)])
            for row in extra:
                for t in row:
                    if t is not None and world > 1:
                        t.gather_distributed()
        for e in range(E):
            missing = extra_need[e]
            found = [j for j in finals[e] if j not in set(missing)]
            parts = [(found, [trackers[k][e] for k in range(K)])]
            if missing:
                assert extra is not None
                parts.append((missing, [extra[k][e] for k in range(K)]))
            lat = torch.tensor([j for js, _ in parts for j in js], dtype=torch.long)
            order = torch.argsort(lat)
            sums = tuple(torch.cat([trs[k].select(js) for js, trs in parts], 1)[:, order].contiguous()
                         for k in range(K))
            t0 = trackers[0][e]
            tracked[e] = Tracked(lat[order], t0.prompt_ids.clone(), t0.counts.clone(), sums)
    else:
        for e in range(E):
            if trackers[0][e] is not None:
                t0 = trackers[0][e]
                tracked[e] = Tracked(t0.latents.clone(), t0.prompt_ids.clone(), t0.counts.clone(),
                                     tuple(trackers[k][e].sums for k in range(K)))
    meta = {
        "scope": scope,
        "seed": seed,
        "batch_size": batch_size,
        "world_size": world,
        "one_model_at_a_time": bool(one_model_at_a_time),
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return StreamResult(stats, tracked, n_tokens, second, meta, trackers)

