"""Model diffing: streaming SAE latent statistics of two model states, ranked both ways.

The instrument of Wang et al. (2025): encode the residual stream of a base and a fine-tuned model
with one SAE over a prompt set, average every latent over a token scope, and rank latents by the
change of their mean activation. :func:`collect` does one model; :func:`diff_latents` does both in one
pass over the prompts and returns a :class:`LatentDiff`.

How it stays fast and small:

* the forward pass stops right after the SAE's hook point (nothing downstream is computed);
* only the counted positions (the scope) are encoded, in chunks of bounded size, so no
  ``[N, T, d_sae]`` tensor ever exists (not even for one batch);
* statistics stream into float64 accumulators (:class:`~tl_persona.stats.LatentStats`): memory is
  independent of the number of prompts;
* prompts of similar length share a batch; both models run on each batch before the next;
* with a ``torch.distributed`` process group, each rank takes a shard of the prompts and the
  accumulators are reduced exactly.

Per-prompt values (for bootstrap intervals) are kept for the top ``per_prompt_top`` latents in each
direction only. They come out of the same single pass: after a pilot on a seeded random sample of
the prompts, a generous candidate set is tracked, and only if a final top latent fell outside it are the prompts
run a second time for the missing latents (recorded in ``meta["per_prompt_second_pass"]``).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_persona.data import PromptBatch, PromptsLike, Scope, TokenizedPrompts, as_prompt_set, check_scope
from tl_persona.models import ModelAdapter, as_adapter
from tl_persona.report import atomic_write_bytes
from tl_persona.saes import check_latents, d_in, d_sae, sae_hook_name
from tl_persona.stats import LatentStats, PerPromptTracker, bootstrap_ratio_delta, dist_info, sparse_entries

__all__ = [
    "collect",
    "diff_latents",
    "LatentDiff",
    "PerPromptValues",
    "DeltaCI",
    "model_identity",
    "sae_identity",
    "package_versions",
]

Direction = Literal["increase", "decrease"]
RankBy = Literal["delta", "effect_size", "relative_delta"]

FORMAT = "tl_persona.LatentDiff"
FORMAT_VERSION = 1
_META_KEY = "tl_persona"
# Latent values materialized at once (rows x d_sae). On CPU a small chunk (16 MiB in float32) keeps the
# C heap from fragmenting under buffers of varying size, which would let the peak memory creep up with
# the number of batches; on CUDA, PyTorch's caching allocator handles that and big chunks run faster.
_CHUNK_ELEMENTS = 2**22
_CHUNK_ELEMENTS_CUDA = 2**26
_PILOT_PROMPTS = 64  # prompts in the pilot that picks the per-prompt candidates (at least one batch)
_PILOT_ELEMENTS = 2**24  # and at most this many per-prompt values (prompts x d_sae) per model
_WRITE_CHUNK = 1 << 20
_CANDIDATES = (8, 256)  # pilot candidates per direction: max(8 * per_prompt_top, per_prompt_top + 256)


# =========================================================================== provenance
def model_identity(model: Any) -> dict[str, Any]:
    """A cheap identity of a model for provenance: name, class, shape facts and a weight hash.

    The hash covers every parameter's name, shape and dtype, all values of small tensors (biases,
    norms) and 8 evenly spaced runs of 512 values of large ones: any fine-tune (which moves all
    weights) or edit of a small tensor changes it, while only a few KiB per tensor are read. An
    edit confined to a few entries of a large matrix can escape it: it identifies, it does not
    checksum.
    """
    adapter = as_adapter(model)
    h = hashlib.sha256()
    n = 0
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            n += p.numel()
            h.update(f"{name}:{tuple(p.shape)}:{str(p.dtype)}".encode())
            h.update(_tensor_digest(p))
    cfg = adapter.model.cfg
    return {
        "name": adapter.name,
        "class": type(adapter.model).__name__,
        "n_layers": adapter.n_layers,
        "d_model": adapter.d_model,
        "d_vocab": int(getattr(cfg, "d_vocab", 0) or 0),
        "n_params": int(n),
        "weight_hash": h.hexdigest()[:16],
    }


def _tensor_digest(t: Tensor, slices: int = 8, width: int = 512) -> bytes:
    """Bytes identifying a tensor's values: all of a small tensor, else ``slices`` evenly spaced
    contiguous runs of ``width`` elements (reads a few KiB, whatever the tensor's size)."""
    flat = t.detach().reshape(-1)
    if flat.numel() <= slices * width:
        part = flat
    else:
        starts = torch.linspace(0, flat.numel() - width, slices).long().tolist()
        part = torch.cat([flat[s : s + width] for s in starts])
    return part.float().cpu().numpy().tobytes()


def sae_identity(sae: Any, hook_name: str | None = None) -> dict[str, Any]:
    """Provenance of an SAE: architecture, sizes, hook, SAE-Lens metadata (release/id when loaded
    from a release) and a hash of its weights (see :func:`model_identity`)."""
    meta: dict[str, Any] = {}
    raw = getattr(getattr(sae, "cfg", None), "metadata", None)
    if raw is not None:
        items = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
        for k, v in items.items():
            try:
                json.dumps(v)
                meta[str(k)] = v
            except TypeError:
                meta[str(k)] = repr(v)
    arch = sae.cfg.architecture() if hasattr(sae.cfg, "architecture") else type(sae).__name__
    h = hashlib.sha256()
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        t = getattr(sae, name, None)
        if isinstance(t, Tensor):
            h.update(name.encode() + _tensor_digest(t))
    return {
        "class": type(sae).__name__,
        "architecture": str(arch),
        "d_in": d_in(sae),
        "d_sae": d_sae(sae),
        "hook_name": sae_hook_name(sae, hook_name),
        "dtype": str(sae.W_dec.dtype).removeprefix("torch."),
        "metadata": meta,
        "weight_hash": h.hexdigest()[:16],
    }


def package_versions() -> dict[str, str]:
    """Versions of Python and of the packages a diff depends on."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("tl-persona", "torch", "transformer-lens", "sae-lens", "safetensors", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            if pkg == "tl-persona":
                import tl_persona

                out[pkg] = tl_persona.__version__
    return out


# =========================================================================== collection engine
def _sae_for(sae: Any, dtype: torch.dtype | None) -> Any:
    """The SAE to encode with: ``sae`` itself, or a copy cast to ``dtype`` (costs one copy)."""
    if dtype is None or sae.W_dec.dtype == dtype:
        return sae
    return copy.deepcopy(sae).to(dtype=dtype)


_LIBC: Any = None


def _trim_heap() -> None:
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


def _chunk_rows(n_latents: int, device: torch.device) -> int:
    budget = _CHUNK_ELEMENTS_CUDA if device.type == "cuda" else _CHUNK_ELEMENTS
    return max(1, budget // max(1, n_latents))


@dataclass
class _Sinks:
    """Where one model's latents go: statistics, tracked per-prompt sums, pilot per-prompt sums."""

    stats: LatentStats | None = None
    tracker: PerPromptTracker | None = None
    pilot: list[tuple[Tensor, Tensor, Tensor]] | None = None  # (prompt ids, sums [B, d_sae], counts)


def _run_batch(
    adapter: ModelAdapter,
    sae: Any,
    pb: PromptBatch,
    mask: Bool[Tensor, "batch pos"],
    hook: str,
    sinks: _Sinks,
) -> None:
    """Forward one batch up to ``hook``, encode the masked positions chunk by chunk, feed the sinks."""
    acts = adapter.run_to_hook(pb.tokens.to(adapter.device), hook)
    _check_width(adapter, sae, hook, acts.shape[-1])
    m = mask.to(acts.device)
    x = acts[m]
    del acts
    if not bool(torch.isfinite(x).all()):
        raise FloatingPointError(
            f"model {adapter.name!r} produced non-finite activations at {hook!r} (NaN/inf); check the "
            "model's weights and dtype (float16 overflows are common: try bfloat16 or float32)"
        )
    p = sae.W_dec
    B, D = m.shape[0], d_sae(sae)
    track = sinks.tracker.latents.to(p.device) if sinks.tracker is not None else None
    tsum = torch.zeros(B, len(track), dtype=torch.float64, device=p.device) if track is not None else None
    psum = torch.zeros(B, D, dtype=torch.float32, device=p.device) if sinks.pilot is not None else None
    if x.shape[0]:
        rows = m.nonzero()[:, 0].to(p.device)
        x = x.to(device=p.device, dtype=p.dtype)
        step = _chunk_rows(D, p.device)
        with torch.inference_mode():
            for s in range(0, x.shape[0], step):
                f = sae.encode(x[s : s + step])
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
                        psum.view(-1).index_add_(0, r[ent.rows] * D + ent.cols, ent.vals.float())
                del f
    counts = m.sum(1).cpu()
    if sinks.tracker is not None:
        sinks.tracker.add(pb.indices, tsum.cpu(), counts)
    if sinks.pilot is not None:
        sinks.pilot.append((pb.indices, psum.cpu(), counts))


def _check_hook(adapter: ModelAdapter, sae: Any, hook_name: str | None) -> str:
    """The SAE's hook name, checked to exist on the model (its width is checked on the first batch,
    which saves :func:`~tl_persona.saes.check_sae`'s extra forward pass)."""
    return adapter.check_hook(sae_hook_name(sae, hook_name))


def _check_width(adapter: ModelAdapter, sae: Any, hook: str, width: int) -> None:
    if width != d_in(sae):
        raise ValueError(
            f"SAE d_in={d_in(sae)} does not match the activation width {width} at {hook!r} of model "
            f"{adapter.name!r}; use an SAE trained on this model and hook point"
        )


def _scope_tokens_or_raise(tp: TokenizedPrompts, scope: Scope) -> int:
    total = int(tp.scope_counts(scope).sum())
    if total == 0:
        hint = {
            "response": "the prompts have no responses; pass prompt + response pairs (a conversation ending "
            "with the assistant's message, or (prompt, response)) or use scope='prompt'/'last_prompt'",
        }.get(scope, "every prompt is only a BOS token; pass longer prompts")
        raise ValueError(f"scope={scope!r} selects no token: {hint}")
    return total


def _prepare(
    model: Any, sae: Any, prompts: PromptsLike, scope: str, hook_name: str | None
) -> tuple[ModelAdapter, str, Any, TokenizedPrompts]:
    check_scope(scope)
    adapter = as_adapter(model)
    hook = _check_hook(adapter, sae, hook_name)
    ps = as_prompt_set(prompts)
    tp = ps.tokenize(adapter)
    return adapter, hook, ps, tp


def _shard(distributed: bool | None) -> tuple[int, int]:
    rank, world = dist_info()
    if distributed is False:
        return 0, 1
    return rank, world


def collect(
    model: Any,
    sae: Any,
    prompts: PromptsLike,
    *,
    scope: Scope = "all",
    batch_size: int = 16,
    hook_name: str | None = None,
    dtype: torch.dtype | None = None,
    latents_per_prompt: Sequence[int] | Int[Tensor, " m"] | None = None,
    max_tokens: int | None = None,
    distributed: bool | None = None,
) -> LatentStats:
    """Stream per-latent statistics of ``sae`` over ``model``'s activations on a token scope.

    Why: the mean (and spread, max, firing rate) of every latent over a prompt set, without ever
    holding ``[N, T, d_sae]``. The forward pass stops right after the SAE's hook point and only the
    positions of ``scope`` (``"prompt"``, ``"response"``, ``"last_prompt"``, ``"all"``; never BOS or
    padding) are encoded. ``dtype`` casts the SAE (a copy) and the activations for the encode;
    statistics are float64. With ``latents_per_prompt`` the result's ``per_prompt`` tracker holds
    those latents' per-prompt sums. When a ``torch.distributed`` process group is initialized (and
    ``distributed`` is not False) each rank takes a shard of the prompts and every rank returns the
    reduced, global statistics.
    """
    adapter, hook, ps, tp = _prepare(model, sae, prompts, scope, hook_name)
    _scope_tokens_or_raise(tp, scope)
    enc = _sae_for(sae, dtype)
    rank, world = _shard(distributed)
    stats = LatentStats(d_sae(sae), device=enc.W_dec.device)
    tracker = (PerPromptTracker(check_latents(sae, latents_per_prompt), capacity=len(ps))
               if latents_per_prompt is not None else None)
    sinks = _Sinks(stats=stats, tracker=tracker)
    for idx in tp.batch_plan(batch_size, max_tokens=max_tokens, indices=tp.shard(rank, world)):
        pb = tp.make_batch(idx)
        _run_batch(adapter, enc, pb, pb.mask(scope), hook, sinks)
        if adapter.device.type == "cpu":
            _trim_heap()
    if world > 1:
        stats.reduce_distributed()
        if tracker is not None:
            tracker.gather_distributed()
    stats.per_prompt = tracker
    return stats


def _check_pair(a: ModelAdapter, b: ModelAdapter, sae: Any, hook_name: str | None) -> str:
    """Clear errors when two models cannot be diffed with one SAE; returns the hook name."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta is not tb:
        va, vb = ta.get_vocab(), tb.get_vocab()
        if va != vb:
            diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
            raise ValueError(
                f"base {a.name!r} and fine-tuned {b.name!r} have different tokenizers (vocabulary sizes "
                f"{len(va)} and {len(vb)}; differing entries e.g. {diff}); diffing encodes both on the same "
                "tokens, so use a fine-tune of the same base model (and its tokenizer)"
            )
        for attr in ("bos_token_id", "pad_token_id"):
            if getattr(ta, attr, None) != getattr(tb, attr, None):
                raise ValueError(
                    f"base and fine-tuned tokenizers differ in {attr} ({getattr(ta, attr, None)} vs "
                    f"{getattr(tb, attr, None)}); attach the same tokenizer to both models"
                )
    if a.d_model != b.d_model:
        raise ValueError(
            f"base {a.name!r} has d_model={a.d_model} but fine-tuned {b.name!r} has d_model={b.d_model}; "
            "the two models must have the same width to share one SAE"
        )
    hook = _check_hook(a, sae, hook_name)
    _check_hook(b, sae, hook)
    return hook


@dataclass(frozen=True, eq=False)
class PerPromptValues:
    """Per-prompt activation sums of a few latents in both models, for intervals over prompts.

    ``latents`` [m]; ``prompt_ids`` [n] (indices into the prompt set); ``counts`` [n] counted tokens
    per prompt; ``base_sums`` / ``finetuned_sums`` [n, m] activation sums per prompt and latent.
    """

    latents: Int[Tensor, " m"]
    prompt_ids: Int[Tensor, " n"]
    counts: Int[Tensor, " n"]
    base_sums: Float[Tensor, "n m"]
    finetuned_sums: Float[Tensor, "n m"]

    def column(self, latent: int) -> int:
        """Column of ``latent``; KeyError when it has no per-prompt values."""
        hits = (self.latents == int(latent)).nonzero()
        if len(hits) == 0:
            raise KeyError(
                f"latent {latent} has no per-prompt values (kept for the top latents only: "
                f"{self.latents[:8].tolist()}...); rerun diff_latents with a larger per_prompt_top, or "
                "collect(..., latents_per_prompt=[latent]) for each model"
            )
        return int(hits[0])

    def means(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt mean activation of ``latent`` in (base, fine-tuned); NaN for prompts without tokens."""
        j = self.column(latent)
        c = self.counts.numpy().astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            b = np.where(c > 0, self.base_sums[:, j].numpy() / c, np.nan)
            f = np.where(c > 0, self.finetuned_sums[:, j].numpy() / c, np.nan)
        return b, f


@dataclass(frozen=True)
class DeltaCI:
    """A latent's mean-activation change with a percentile-bootstrap interval over prompts."""

    latent: int
    delta: float
    lo: float
    hi: float
    alpha: float
    n_prompts: int

    def __str__(self) -> str:
        return (f"latent {self.latent}: delta {self.delta:+.4g} [{self.lo:+.4g}, {self.hi:+.4g}] "
                f"({100 * (1 - self.alpha):.0f}% CI, {self.n_prompts} prompts)")


def _select_top(delta: Tensor, k: int) -> list[int]:
    """The ``k`` largest increases (delta > 0) and the ``k`` largest decreases (delta < 0), ties by
    index. A latent that did not change is in neither tail."""
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


def diff_latents(
    base: Any,
    finetuned: Any,
    sae: Any,
    prompts: PromptsLike,
    *,
    scope: Scope = "response",
    batch_size: int = 16,
    hook_name: str | None = None,
    per_prompt_top: int = 64,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    max_tokens: int | None = None,
    distributed: bool | None = None,
) -> "LatentDiff":
    """Rank SAE latents by the change of their mean activation from ``base`` to ``finetuned``.

    Why: the paper's model-diffing instrument. Both models see the same tokens (checked: same
    tokenizer, same width; the SAE must fit both at its hook), are run on each batch only up to the
    SAE's hook point, and only the positions of ``scope`` are encoded (``"response"``: the answer's
    tokens, needs prompt + response pairs; ``"prompt"``, ``"last_prompt"``: where the answer starts,
    ``"all"``). Per-prompt sums are kept for the top ``per_prompt_top`` latents in each direction
    (for :meth:`LatentDiff.bootstrap_ci`; latents that did not change are in neither direction);
    0 skips them. ``seed`` draws the pilot sample that picks
    the per-prompt candidates and orders the batches; it is recorded with the result.
    ``dtype`` casts the SAE for the encode. Sharded over ranks when a process group is initialized.
    """
    check_scope(scope)
    if not isinstance(per_prompt_top, int) or per_prompt_top < 0:
        raise ValueError(f"per_prompt_top must be a non-negative integer, got {per_prompt_top!r}")
    a0, a1 = as_adapter(base), as_adapter(finetuned)
    hook = _check_pair(a0, a1, sae, hook_name)
    ps = as_prompt_set(prompts)
    tp = ps.tokenize(a0)
    n_tokens = _scope_tokens_or_raise(tp, scope)
    enc = _sae_for(sae, dtype)
    D = d_sae(sae)
    rank, world = _shard(distributed)
    mine = tp.shard(rank, world)
    dev = enc.W_dec.device
    stats = [LatentStats(D, device=dev), LatentStats(D, device=dev)]
    adapters = (a0, a1)
    on_cpu = all(a.device.type == "cpu" for a in adapters)

    def plan_of(idx: np.ndarray) -> list[np.ndarray]:
        return tp.batch_plan(batch_size, max_tokens=max_tokens, seed=seed, indices=idx) if len(idx) else []

    def run(batches: Iterable[np.ndarray], sinks: Sequence[_Sinks]) -> None:
        for idx in batches:
            pb = tp.make_batch(idx)
            mask = pb.mask(scope)
            for adapter, s in zip(adapters, sinks):
                _run_batch(adapter, enc, pb, mask, hook, s)
            if on_cpu:
                _trim_heap()

    trackers: list[PerPromptTracker] | None = None
    second_pass = 0
    if per_prompt_top == 0:
        plan = plan_of(mine)
        run(plan, [_Sinks(stats=s) for s in stats])
    else:
        # 1) pilot: a random sample of the prompts (seeded), keeping every latent's per-prompt sums
        #    (bounded: _PILOT_PROMPTS prompts, _PILOT_ELEMENTS values).
        n_pilot = min(len(mine), max(1, min(_PILOT_PROMPTS, _PILOT_ELEMENTS // D)))
        pilot_idx = np.sort(np.random.default_rng(seed).choice(mine, size=n_pilot, replace=False))
        plan_pilot, plan_rest = plan_of(pilot_idx), plan_of(np.setdiff1d(mine, pilot_idx))
        plan = plan_pilot + plan_rest
        pilots: list[list[tuple[Tensor, Tensor, Tensor]]] = [[], []]
        run(plan_pilot, [_Sinks(stats=s, pilot=p) for s, p in zip(stats, pilots)])
        # 2) candidates from the pilot's (global) delta: a generous superset of the final top.
        glob = stats
        if world > 1:
            glob = [copy.deepcopy(s).reduce_distributed() for s in stats]
        n_cand = min(D, max(_CANDIDATES[0] * per_prompt_top, per_prompt_top + _CANDIDATES[1]))
        pilot_delta = (glob[1].mean - glob[0].mean).cpu()
        del glob
        chosen = _select_top(pilot_delta, n_cand)
        room = min(D, 2 * n_cand) - len(chosen)
        if room > 0:  # fill the budget: latents the pilot saw change least, or never saw fire
            rest = torch.ones(D, dtype=torch.bool)
            rest[chosen] = False
            idx = rest.nonzero().squeeze(1)
            order = torch.sort(pilot_delta[idx].abs(), descending=True, stable=True).indices[:room]
            chosen = sorted(chosen + idx[order].tolist())
        cands = torch.tensor(chosen, dtype=torch.long)
        # float32 storage: the candidate set is large, and its final top is copied out in float64
        trackers = [PerPromptTracker(cands, capacity=len(ps), dtype=torch.float32) for _ in range(2)]
        for tr, pil in zip(trackers, pilots):
            for ids, sums, counts in pil:
                tr.add(ids, sums[:, cands].to(torch.float64), counts)
        del pilots
        # 3) the rest of the prompts, tracking only the candidates.
        run(plan_rest, [_Sinks(stats=s, tracker=t) for s, t in zip(stats, trackers)])
    if world > 1:
        for s in stats:
            s.reduce_distributed()
    per_prompt: PerPromptValues | None = None
    if trackers is not None:
        if world > 1:
            for t in trackers:
                t.gather_distributed()
        final = _select_top(stats[1].mean.cpu() - stats[0].mean.cpu(), per_prompt_top)
        have = set(trackers[0].latents.tolist())
        missing = [j for j in final if j not in have]
        found = [j for j in final if j in have]
        sources = [(found, trackers)]
        if missing:
            # 4) rare: a final top latent was not among the pilot's candidates -> exact second pass.
            second_pass = len(missing)
            extra = [PerPromptTracker(missing, capacity=len(ps)) for _ in range(2)]
            run(plan, [_Sinks(tracker=t) for t in extra])
            if world > 1:
                for t in extra:
                    t.gather_distributed()
            sources.append((missing, extra))
        lat = torch.tensor([j for js, _ in sources for j in js], dtype=torch.long)
        base_sums = torch.cat([trs[0].select(js) for js, trs in sources], 1)
        ft_sums = torch.cat([trs[1].select(js) for js, trs in sources], 1)
        order = torch.argsort(lat)
        per_prompt = PerPromptValues(
            latents=lat[order], prompt_ids=trackers[0].prompt_ids.clone(), counts=trackers[0].counts.clone(),
            base_sums=base_sums[:, order].contiguous(), finetuned_sums=ft_sums[:, order].contiguous(),
        )
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base": model_identity(a0),
        "finetuned": model_identity(a1),
        "sae": sae_identity(sae, hook),
        "hook_name": hook,
        "scope": scope,
        "prompts": {"hash": ps.content_hash, "n": len(ps), "source": ps.source, "n_tokens": n_tokens},
        "seed": seed,
        "batch_size": batch_size,
        "dtype": str(enc.W_dec.dtype).removeprefix("torch."),
        "per_prompt_top": per_prompt_top,
        "per_prompt_second_pass": second_pass,
        "world_size": world,
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return LatentDiff(stats[0].to("cpu"), stats[1].to("cpu"), per_prompt, meta)


# =========================================================================== result
@dataclass(frozen=True, eq=False)
class LatentDiff:
    """Per-latent statistics of a base and a fine-tuned model on the same tokens, and their change.

    ``base`` / ``finetuned`` hold the streamed statistics; ``per_prompt`` the per-prompt sums of the
    top latents (or None); ``meta`` the provenance (models, SAE, hook, prompt-set hash, scope, seed,
    versions). Derived per-latent values are float64 ``[d_sae]`` tensors; :meth:`to_pandas` puts them
    in one table.
    """

    base: LatentStats
    finetuned: LatentStats
    per_prompt: PerPromptValues | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", {"format": FORMAT, "version": FORMAT_VERSION, **dict(self.meta)})
        if self.base.d_sae != self.finetuned.d_sae:
            raise ValueError(f"base and finetuned statistics have different d_sae ({self.base.d_sae}, {self.finetuned.d_sae})")

    # ---------------------------------------------------------------- values
    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.base.d_sae

    @property
    def n_tokens(self) -> int:
        """Tokens averaged over (per model)."""
        return self.base.n

    @property
    def base_mean(self) -> Float[Tensor, " d_sae"]:
        """Mean activation per latent in the base model."""
        return self.base.mean

    @property
    def finetuned_mean(self) -> Float[Tensor, " d_sae"]:
        """Mean activation per latent in the fine-tuned model."""
        return self.finetuned.mean

    @property
    def delta(self) -> Float[Tensor, " d_sae"]:
        """Fine-tuned minus base mean activation: the ranking statistic of the paper."""
        return self.finetuned.mean - self.base.mean

    @property
    def relative_delta(self) -> Float[Tensor, " d_sae"]:
        """``delta / |base mean|`` (inf where the latent never fired in the base model, NaN for 0/0)."""
        return self.delta / self.base.mean.abs()

    @property
    def effect_size(self) -> Float[Tensor, " d_sae"]:
        """Standardized change: ``delta`` over the pooled token-level standard deviation (Cohen's d).

        0 where neither model's latent varies and nothing changed; +-inf where it changed but does
        not vary."""
        nb, nf = self.base.n, self.finetuned.n
        pooled = ((self.base.m2 + self.finetuned.m2) / max(nb + nf - 2, 1)).sqrt()
        d = self.delta
        out = d / pooled
        return torch.where((pooled == 0) & (d == 0), torch.zeros_like(d), out)

    @property
    def base_freq(self) -> Float[Tensor, " d_sae"]:
        """Firing frequency (share of tokens with activation > 0) in the base model."""
        return self.base.freq

    @property
    def finetuned_freq(self) -> Float[Tensor, " d_sae"]:
        """Firing frequency in the fine-tuned model."""
        return self.finetuned.freq

    @property
    def base_max(self) -> Float[Tensor, " d_sae"]:
        """Largest activation per latent in the base model."""
        return self.base.max

    @property
    def finetuned_max(self) -> Float[Tensor, " d_sae"]:
        """Largest activation per latent in the fine-tuned model."""
        return self.finetuned.max

    # ---------------------------------------------------------------- ranking
    def _key(self, by: RankBy) -> Tensor:
        if by == "delta":
            return self.delta
        if by == "effect_size":
            return self.effect_size
        if by == "relative_delta":
            return self.relative_delta
        raise ValueError(f"by={by!r} is not one of 'delta', 'effect_size', 'relative_delta'")

    def rank(self, direction: Direction = "increase", by: RankBy = "delta") -> Int[Tensor, " d_sae"]:
        """All latents ordered by ``by`` (default the mean change), largest increase (or decrease)
        first; NaN last, ties by latent index."""
        if direction not in ("increase", "decrease"):
            raise ValueError(f"direction={direction!r} is not 'increase' or 'decrease'")
        raw = self._key(by)
        key = -raw if direction == "decrease" else raw.clone()
        nan = torch.isnan(key)
        key[nan] = -torch.inf
        order = torch.sort(key, descending=True, stable=True).indices
        return torch.cat([order[~nan[order]], order[nan[order]]])

    def to_pandas(self) -> Any:
        """Every latent as a row of a ``pandas.DataFrame`` indexed by latent id."""
        import pandas as pd

        cols = {
            "base_mean": self.base_mean, "finetuned_mean": self.finetuned_mean, "delta": self.delta,
            "relative_delta": self.relative_delta, "effect_size": self.effect_size,
            "base_freq": self.base_freq, "finetuned_freq": self.finetuned_freq,
            "base_max": self.base_max, "finetuned_max": self.finetuned_max,
            "base_std": self.base.std, "finetuned_std": self.finetuned.std,
        }
        df = pd.DataFrame({k: v.cpu().numpy() for k, v in cols.items()})
        df.index.name = "latent"
        return df

    def top(self, k: int = 20, direction: Direction = "increase", by: RankBy = "delta") -> Any:
        """The ``k`` first latents of :meth:`rank` as a ``pandas.DataFrame`` (index: latent id)."""
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        order = self.rank(direction, by)[:k].numpy()
        df = self.to_pandas().iloc[order]
        return df

    # ---------------------------------------------------------------- per prompt
    def bootstrap_ci(self, latent: int, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> DeltaCI:
        """Percentile-bootstrap interval of ``latent``'s delta, resampling prompts.

        The statistic is the same token-pooled mean change as :attr:`delta` (recomputed on each
        resample), so the interval matches the point estimate. Needs the latent's per-prompt values
        (kept for the top ``per_prompt_top`` latents in each direction).
        """
        pp = self._per_prompt()
        j = pp.column(latent)
        est, lo, hi = bootstrap_ratio_delta(
            pp.base_sums[:, j].numpy(), pp.finetuned_sums[:, j].numpy(), pp.counts.numpy(),
            n_boot=n_boot, alpha=alpha, seed=seed,
        )
        return DeltaCI(int(latent), est, lo, hi, float(alpha), int((pp.counts > 0).sum()))

    def per_prompt_means(self, latent: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-prompt mean activation of ``latent`` in (base, fine-tuned), in prompt order."""
        return self._per_prompt().means(latent)

    def auroc(self, latent: int) -> float:
        """How well ``latent``'s per-prompt mean separates fine-tuned (positive) from base prompts
        (tie-aware AUROC from :func:`tl_persona.evals.metrics.auroc`; 0.5 = no separation)."""
        from tl_persona.evals.metrics import auroc

        b, f = self.per_prompt_means(latent)
        b, f = b[~np.isnan(b)], f[~np.isnan(f)]
        return auroc(np.concatenate([f, b]), np.concatenate([np.ones(len(f), bool), np.zeros(len(b), bool)]))

    def _per_prompt(self) -> PerPromptValues:
        if self.per_prompt is None:
            raise ValueError("this diff kept no per-prompt values; rerun diff_latents with per_prompt_top > 0")
        return self.per_prompt

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the diff to one ``.safetensors`` file (tensors + JSON provenance in its header).

        The file is written to a temporary file in the same folder and renamed over ``path``, so an
        interrupted write never leaves a partial file at ``path``. Returns the path.
        """
        from safetensors.torch import save as st_save

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        tensors: dict[str, Tensor] = {}
        for pre, s in (("base", self.base), ("finetuned", self.finetuned)):
            for k, v in s.state_dict().items():
                tensors[f"{pre}.{k}"] = v
        if self.per_prompt is not None:
            pp = self.per_prompt
            for k in ("latents", "prompt_ids", "counts", "base_sums", "finetuned_sums"):
                tensors[f"per_prompt.{k}"] = getattr(pp, k).detach().cpu().contiguous()
        data = st_save(tensors, metadata={_META_KEY: json.dumps(self.meta, sort_keys=True, default=str)})
        atomic_write_bytes(path, data, chunk=_WRITE_CHUNK)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentDiff":
        """Read a diff written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists() and path.with_name(path.name + ".safetensors").exists():
            path = path.with_name(path.name + ".safetensors")
        if not path.exists():
            raise FileNotFoundError(f"no saved LatentDiff at {str(path)!r}")
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        if _META_KEY not in header:
            raise ValueError(f"{str(path)!r} is a safetensors file but not a saved LatentDiff (no provenance header)")
        meta = json.loads(header[_META_KEY])
        if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} holds format {meta.get('format')!r} v{meta.get('version')}; this tl_persona reads "
                f"{FORMAT} up to v{FORMAT_VERSION} (upgrade tl_persona)"
            )

        def stats(pre: str) -> LatentStats:
            return LatentStats.from_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(pre + ".")})

        pp = None
        if "per_prompt.latents" in tensors:
            pp = PerPromptValues(*(tensors[f"per_prompt.{k}"] for k in
                                   ("latents", "prompt_ids", "counts", "base_sums", "finetuned_sums")))
        return cls(stats("base"), stats("finetuned"), pp, meta)

    def __repr__(self) -> str:
        m = self.meta
        return (f"LatentDiff(d_sae={self.d_sae}, n_tokens={self.n_tokens}, scope={m.get('scope')!r}, "
                f"hook={m.get('hook_name')!r}, base={m.get('base', {}).get('name')!r}, "
                f"finetuned={m.get('finetuned', {}).get('name')!r})")
