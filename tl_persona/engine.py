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
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_persona.data import TokenizedPrompts
from tl_persona.models import ModelAdapter, check_width
from tl_persona.provenance import package_versions
from tl_persona.stats import LatentStats, PerPromptTracker, SparseEntries, dist_info, sparse_entries
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
_TRIM_EVERY = 0.05  # seconds between heap trims on the CPU (see trim_heap)


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
    """Where one (model, encoder)'s features go: statistics, tracked per-prompt sums (``track``: the
    tracker's features on the encoder's device; ``slots``: each feature's column among them, -1
    when untracked, for the sparse path), pilot sums (device ids, host ids, sums [B, F], counts);
    everything stays on the encoder's device until the run ends."""

    stats: LatentStats | None = None
    tracker: PerPromptTracker | None = None
    pilot: list[tuple[Tensor, Tensor, Tensor, Tensor]] | None = None
    track: Tensor | None = None
    slots: Tensor | None = None
    sparse: bool | None = None  # whether the features take the sparse path; the first chunk decides


def _sinks(enc: Encoder, stats: LatentStats | None = None, tracker: PerPromptTracker | None = None,
           pilot: list | None = None) -> _Sinks:
    if tracker is None:
        return _Sinks(stats, tracker, pilot)
    track = tracker.latents.to(enc.device)
    slots = None
    if len(set(tracker.latents.tolist())) == len(tracker.latents):  # a feature tracked twice takes the dense path
        slots = torch.full((enc.n_features,), -1, dtype=torch.long)
        slots[tracker.latents] = torch.arange(len(tracker.latents))
        slots = slots.to(enc.device)
    return _Sinks(stats, tracker, pilot, track, slots)


# =========================================================================== batches, prepared ahead
@dataclass(eq=False)
class _Batch:
    """One batch as the device needs it, prepared on the host ahead of the device.

    ``host``: the padded ``tokens`` [B, T], the flat positions ``sel`` [n] (``row * T + pos``) of the
    counted tokens, each one's batch row ``rows`` [n] and the prompt ``ids`` [B], in pinned memory
    when bound for a GPU; ``counts`` [B] (counted tokens per row) stay on the host, like the
    trackers' counts. :meth:`on` copies the tensors to a device once, without waiting for the copy.
    """

    host: dict[str, Tensor]
    counts: Tensor
    copies: dict[torch.device, dict[str, Tensor]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.host["tokens"].shape[0])

    def on(self, device: torch.device) -> dict[str, Tensor]:
        if device.type == "cpu":
            return self.host
        if device not in self.copies:
            self.copies[device] = {k: v.to(device, non_blocking=True) for k, v in self.host.items()}
        return self.copies[device]


def _prepare(tp: TokenizedPrompts, idx: np.ndarray, scope: str, pin: bool) -> _Batch:
    """Pad one batch and find its counted positions, on the host (no device involved)."""
    pb = tp.make_batch(idx, device="cpu")
    mask = pb.mask(scope)
    sel = mask.reshape(-1).nonzero().squeeze(1)
    host = {"tokens": pb.tokens, "sel": sel, "rows": torch.div(sel, mask.shape[1], rounding_mode="floor"),
            "ids": pb.indices}
    if pin:
        host = {k: v.pin_memory() for k, v in host.items()}
    return _Batch(host, mask.sum(1))


_DONE = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _prefetched(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, computed by a worker thread up to ``depth`` ahead of the consumer: the host pads and
    pins the next batches while the GPU runs this one. The worker's errors surface here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for it in items:
                if not _put(q, (True, it), stop):
                    return
            _put(q, (True, _DONE), stop)
        except BaseException as e:  # handed to the consumer, raised there
            _put(q, (False, e), stop)

    threading.Thread(target=work, name="tl_persona-prefetch", daemon=True).start()
    try:
        while True:
            ok, it = q.get()
            if not ok:
                raise it
            if it is _DONE:
                return
            yield it
    finally:
        stop.set()


# =========================================================================== the loop
# Device types whose statistics may take the sparse path (SAE latents: work on the non-zeros only).
# Its shapes depend on the data, which on a GPU would make the host wait for the device every chunk;
# there the dense path (a few large, fixed-shape kernels) runs instead.
_SPARSE_DEVICES = ("cpu",)
# Device types for which a worker thread prepares batches ahead. Not on the CPU: there the thread
# would only take a core from the forward pass.
_PREFETCH_DEVICES = ("cuda",)


class _Runner:
    """Runs every model over a list of batches into sinks: the per-batch loop and what it shares.

    Nothing in the loop reads a device value on the host: counted positions and counts come from
    the host-side batch, non-finite activations are flagged on the device and checked once per run
    (:meth:`check_finite`), and whether a model's features of an encoder are sparse is decided
    once per run, from the first chunk, where the sparse path may run at all (:func:`_entries`).
    """

    def __init__(self, models: Sequence[ModelAdapter], encoders: Sequence[Encoder], tp: TokenizedPrompts,
                 scope: str, batch_size: int, max_tokens: int | None, seed: int | None, one_model_at_a_time: bool,
                 device: torch.device | None) -> None:
        self.models, self.encoders, self.tp, self.scope = models, encoders, tp, scope
        self.batch_size, self.max_tokens, self.seed = batch_size, max_tokens, seed
        self.one_model_at_a_time, self.device = one_model_at_a_time, device
        types = {d.type for d in [a.device for a in models] + [e.device for e in encoders] + ([device] if device else [])}
        self.prefetch = bool(types & set(_PREFETCH_DEVICES))  # a worker thread prepares the next batches
        self.pin = "cuda" in types  # in pinned memory, copied without waiting
        self.on_cpu = all(a.device.type == "cpu" for a in models) and (device is None or device.type == "cpu")
        self.finite: dict[tuple[int, str], tuple[str, Tensor]] = {}
        self.trimmed = time.perf_counter()

    def plan(self, idx: np.ndarray) -> list[np.ndarray]:
        if not len(idx):
            return []
        return self.tp.batch_plan(self.batch_size, max_tokens=self.max_tokens, seed=self.seed, indices=idx)

    def batches(self, plan: list[np.ndarray]) -> contextlib.closing[Iterator[_Batch]]:
        """The plan's batches, prepared on the host; closed on exit (a prefetching worker stops too)."""
        items = (_prepare(self.tp, idx, self.scope, self.pin) for idx in plan)
        return contextlib.closing(_prefetched(items) if self.prefetch and plan else items)

    def run(self, plan: list[np.ndarray], sinks: list[list[_Sinks]]) -> None:
        """Every model over ``plan``: batch-major (both models per batch) or model-major."""
        if self.one_model_at_a_time:
            for k, adapter in enumerate(self.models):
                with on_device(adapter, self.device), self.batches(plan) as batches:
                    for b in batches:
                        _run_batch(adapter, self.encoders, b, sinks[k], self)
                        self.trim()
        else:
            with self.batches(plan) as batches:
                for b in batches:
                    for k, adapter in enumerate(self.models):
                        _run_batch(adapter, self.encoders, b, sinks[k], self)
                    self.trim()
        self.check_finite()

    def trim(self) -> None:
        """:func:`trim_heap` after a batch on the CPU, at most every ``_TRIM_EVERY`` seconds (a trim
        costs ~0.1 ms: after every batch of a tiny model that is a few percent of the run)."""
        if self.on_cpu and time.perf_counter() - self.trimmed >= _TRIM_EVERY:
            trim_heap()
            self.trimmed = time.perf_counter()

    def note_finite(self, adapter: ModelAdapter, hook: str, x: Tensor) -> None:
        """Fold "all of ``x`` is finite" into the device-side flag of (model, hook)."""
        ok = torch.isfinite(x).all()
        prev = self.finite.get((id(adapter), hook))
        self.finite[(id(adapter), hook)] = (adapter.name, ok if prev is None else prev[1] & ok)

    def check_finite(self) -> None:
        """Raise when a model produced NaN/inf activations in this run (one host read per model and hook)."""
        flags, self.finite = self.finite, {}
        for (_, hook), (name, ok) in flags.items():
            if not bool(ok):
                raise FloatingPointError(
                    f"model {name!r} produced non-finite activations at {hook!r} (NaN/inf); check the "
                    "model's weights and dtype (float16 overflows are common: try bfloat16 or float32)"
                )



def _entries(f: Tensor, sinks: _Sinks) -> SparseEntries | None:
    """The chunk's non-zero entries when these features take the sparse path, else None; the first
    chunk of the run decides (one host read), and only on a device of ``_SPARSE_DEVICES``."""
    if f.device.type not in _SPARSE_DEVICES:
        return None
    if sinks.sparse is None:
        ent = sparse_entries(f)
        sinks.sparse = ent is not None
        return ent
    return sparse_entries(f, probe=False) if sinks.sparse else None


def _add_tracked(tsum: Tensor, r: Tensor, f: Tensor, ent: SparseEntries | None, sinks: _Sinks) -> None:
    """Add the chunk's tracked features to the per-prompt sums ``tsum`` [B, m] (float64: the two
    models' sums are subtracted later). From the non-zero entries when there are (a scan of the
    non-zeros instead of a gather of every row's m columns), the same additions in the same order."""
    if ent is None or sinks.slots is None:
        tsum.index_add_(0, r, f[:, sinks.track].to(torch.float64))
        return
    slot = sinks.slots[ent.cols]
    keep = slot >= 0
    tsum.view(-1).index_add_(0, r[ent.rows[keep]] * tsum.shape[1] + slot[keep], ent.vals[keep].to(torch.float64))


def _feed(enc: Encoder, x: Tensor, batch: _Batch, sinks: _Sinks) -> None:
    """Encode the counted rows ``x`` chunk by chunk into ``sinks``, on the encoder's device."""
    F = enc.n_features
    dev = enc.device
    b = batch.on(dev)
    tsum = torch.zeros(batch.size, len(sinks.track), dtype=torch.float64, device=dev) if sinks.track is not None else None
    psum = torch.zeros(batch.size, F, dtype=torch.float32, device=dev) if sinks.pilot is not None else None
    step = chunk_rows(F, dev)
    with torch.inference_mode():
        for s in range(0, x.shape[0], step):
            f = enc.encode(x[s : s + step])
            r = b["rows"][s : s + step]
            ent = _entries(f, sinks) if (sinks.stats is not None or psum is not None) else None
            if sinks.stats is not None:
                sinks.stats.update(f, entries=ent, sparse=ent is not None)
            if tsum is not None:
                _add_tracked(tsum, r, f, ent, sinks)
            if psum is not None:
                if ent is None:
                    psum.index_add_(0, r, f.float())
                else:
                    psum.view(-1).index_add_(0, r[ent.rows] * F + ent.cols, ent.vals.float())
            del f
    if sinks.tracker is not None:
        sinks.tracker.write(b["ids"], tsum, batch.counts, batch.host["ids"])
    if sinks.pilot is not None:
        sinks.pilot.append((b["ids"], batch.host["ids"], psum, batch.counts))


def _run_batch(adapter: ModelAdapter, encoders: Sequence[Encoder], batch: _Batch, sinks: Sequence[_Sinks],
               run: _Runner) -> None:
    """One forward of one model up to the deepest hook; each encoder reads its hook's counted rows."""
    hooks = list(dict.fromkeys(e.hook_name for e in encoders))
    b = batch.on(adapter.device)
    acts = adapter.run_to_hooks(b["tokens"], hooks)
    picked = {}
    for h in hooks:
        a = acts[h]
        picked[h] = x = a.reshape(-1, a.shape[-1]).index_select(0, b["sel"])
        run.note_finite(adapter, h, x)
    del acts
    for enc, s in zip(encoders, sinks):
        x = picked[enc.hook_name]
        check_width("SAE" if hasattr(enc, "sae") else type(enc).__name__, enc.d_in, x.shape[-1], enc.hook_name,
                    adapter.name)
        # an encoder may keep its weights elsewhere (e.g. on the CPU) until its hook's rows arrive
        with (enc.attached() if hasattr(enc, "attached") else contextlib.nullcontext()):
            _feed(enc, x, batch, s)


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

    Statistics and per-prompt sums stay on each encoder's device during the run and nothing in the
    per-batch loop waits for the device; values come to the host once per pilot and per run.
    """
    if not encoders:
        raise BadInput("encoders is empty; pass at least one SAE or set of directions")
    if track_top and len(models) != 2:
        raise BadInput(f"track_top needs exactly two models (base, fine-tuned), got {len(models)}")
    n_tokens = scope_tokens_or_raise(tp, scope)
    dev = torch.device(device) if device is not None else None
    rank, world = dist_info() if distributed is not False else (0, 1)
    mine = tp.shard(rank, world)
    run = _Runner(models, encoders, tp, scope, batch_size, max_tokens, seed, one_model_at_a_time, dev)
    stats = [[LatentStats(e.n_features, device=e.device) for e in encoders] for _ in models]
    if track_top <= 0:
        trackers = [[PerPromptTracker(track[e], capacity=len(tp), device=enc.device)
                     if track is not None and track[e] is not None else None for e, enc in enumerate(encoders)]
                    for _ in models]
        plan = run.plan(mine)
        run.run(plan, [[_sinks(enc, stats[k][e], trackers[k][e]) for e, enc in enumerate(encoders)]
                       for k in range(len(models))])
    else:
        trackers, plan = _pilot_then_rest(run, stats, mine, track_top, world)
    _to_host(stats, trackers, world)
    if track_top > 0:
        tracked, second = _top_tracked(run, stats, trackers, plan, track_top, world)
    else:
        tracked, second = _fixed_tracked(trackers), [0] * len(encoders)
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


def _pilot_then_rest(run: _Runner, stats: list[list[LatentStats]], mine: np.ndarray, track_top: int,
                     world: int) -> tuple[list[list[PerPromptTracker]], list[np.ndarray]]:
    """Steps 1-3 of ``track_top``: a seeded pilot keeps every feature's per-prompt sums (bounded:
    ``_PILOT_PROMPTS`` prompts, ``_PILOT_ELEMENTS`` values per model and encoder, on the device);
    its (global) change picks a generous superset of the final top; the rest of the prompts track
    only those candidates. Returns the trackers and the whole batch plan."""
    encoders, K, cap = run.encoders, len(run.models), len(run.tp)
    widest = max(e.n_features for e in encoders)
    n_pilot = min(len(mine), max(1, min(_PILOT_PROMPTS, _PILOT_ELEMENTS // widest)))
    pilot_idx = np.sort(np.random.default_rng(run.seed).choice(mine, size=n_pilot, replace=False))
    plan_pilot, plan_rest = run.plan(pilot_idx), run.plan(np.setdiff1d(mine, pilot_idx))
    pilots: list[list[list[tuple[Tensor, Tensor, Tensor, Tensor]]]] = [[[] for _ in encoders] for _ in range(K)]
    run.run(plan_pilot, [[_sinks(enc, stats[k][e], pilot=pilots[k][e]) for e, enc in enumerate(encoders)]
                         for k in range(K)])
    cands = []
    for e, enc in enumerate(encoders):
        glob = [stats[0][e], stats[1][e]]
        if world > 1:
            glob = [copy.deepcopy(s).reduce_distributed() for s in glob]
        cands.append(_candidates((glob[1].mean - glob[0].mean).cpu(), track_top, enc.n_features, cap))
    # float32 storage: the candidate set is large, and its final top is copied out in float64
    trackers = [[PerPromptTracker(cands[e], capacity=cap, dtype=torch.float32, device=enc.device)
                 for e, enc in enumerate(encoders)] for _ in range(K)]
    for e, enc in enumerate(encoders):
        cols = cands[e].to(enc.device)
        for k in range(K):
            for ids, host_ids, sums, counts in pilots[k][e]:
                trackers[k][e].write(ids, sums.index_select(1, cols), counts, host_ids)
    del pilots
    run.run(plan_rest, [[_sinks(enc, stats[k][e], trackers[k][e]) for e, enc in enumerate(encoders)]
                        for k in range(K)])
    return trackers, plan_pilot + plan_rest


def _to_host(stats: list[list[LatentStats]], trackers: Sequence[Sequence[PerPromptTracker | None]], world: int) -> None:
    """The run's end: per-prompt sums to the host, then the reduction over ranks."""
    for row in trackers:
        for t in row:
            if t is not None:
                t.to("cpu")
                if world > 1:
                    t.gather_distributed()
    for row in stats:
        for s in row:
            if world > 1:
                s.reduce_distributed()


def _fixed_tracked(trackers: list[list[PerPromptTracker | None]]) -> list[Tracked | None]:
    out: list[Tracked | None] = []
    for e, t0 in enumerate(trackers[0]):
        out.append(None if t0 is None else Tracked(t0.latents.clone(), t0.prompt_ids.clone(), t0.counts.clone(),
                                                   tuple(row[e].sums for row in trackers)))  # type: ignore[union-attr]
    return out


def _top_tracked(run: _Runner, stats: list[list[LatentStats]], trackers: list[list[PerPromptTracker]],
                 plan: list[np.ndarray], track_top: int, world: int) -> tuple[list[Tracked | None], list[int]]:
    """Step 4 of ``track_top``: the final top changes' per-prompt sums, from the candidates' trackers,
    and, in the rare case the pilot missed one, from an exact second pass over every prompt."""
    E, K, cap = len(run.encoders), len(run.models), len(run.tp)
    finals = [_select_top(stats[1][e].mean.cpu() - stats[0][e].mean.cpu(), track_top) for e in range(E)]
    extra_need = []
    for e in range(E):
        have = set(trackers[0][e].latents.tolist())
        extra_need.append([j for j in finals[e] if j not in have])
    extra = None
    if any(extra_need):
        extra = [[PerPromptTracker(extra_need[e], capacity=cap, device=enc.device) if extra_need[e] else None
                  for e, enc in enumerate(run.encoders)] for _ in range(K)]
        run.run(plan, [[_sinks(enc, tracker=extra[k][e]) for e, enc in enumerate(run.encoders)] for k in range(K)])
        _to_host([], extra, world)
    tracked: list[Tracked | None] = []
    for e in range(E):
        missing = extra_need[e]
        found = [j for j in finals[e] if j not in set(missing)]
        parts = [(found, [trackers[k][e] for k in range(K)])]
        if missing:
            assert extra is not None
            parts.append((missing, [extra[k][e] for k in range(K)]))  # type: ignore[misc]
        lat = torch.tensor([j for js, _ in parts for j in js], dtype=torch.long)
        order = torch.argsort(lat)
        sums = tuple(torch.cat([trs[k].select(js) for js, trs in parts], 1)[:, order].contiguous() for k in range(K))
        t0 = trackers[0][e]
        tracked.append(Tracked(lat[order], t0.prompt_ids.clone(), t0.counts.clone(), sums))
    return tracked, [len(m) for m in extra_need]
