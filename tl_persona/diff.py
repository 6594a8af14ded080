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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_persona.data import PromptsLike, Scope, as_prompt_set, check_scope
from tl_persona.engine import Encoder, StreamResult, stream
from tl_persona.models import ModelAdapter, as_adapter
from tl_persona.provenance import (
    PROVENANCE_KEY,
    atomic_write_bytes,
    guard_overwrite,
    model_identity,
    package_versions,
    read_safetensors,
    sae_identity,
)
from tl_persona.saes import SAEEncoder, check_latents, is_sae, named_saes
from tl_persona.stats import LatentStats, bootstrap_ratio_delta
from tl_persona.validate import BadInput, nonneg_int, not_none

__all__ = [
    "collect",
    "diff_latents",
    "LatentDiff",
    "LatentDiffSet",
    "PerPromptValues",
    "DeltaCI",
    "check_diff_path",
    "load_saved",
    "model_identity",
    "sae_identity",
    "package_versions",
]

Direction = Literal["increase", "decrease"]
RankBy = Literal["delta", "effect_size", "relative_delta"]

FORMAT = "tl_persona.LatentDiff"
SET_FORMAT = "tl_persona.LatentDiffSet"
FORMAT_VERSION = 1
_WRITE_CHUNK = 1 << 20


# =========================================================================== collection
def _encoder(sae: Any, hook_name: str | None, dtype: torch.dtype | None) -> Encoder:
    """An SAE (wrapped in :class:`~tl_persona.saes.SAEEncoder`) or any engine encoder as it is."""
    not_none(sae, "sae", "a SAE-Lens SAE (or an engine Encoder)")
    if isinstance(sae, Encoder) and not is_sae(sae):
        return sae
    return SAEEncoder(sae, hook_name, dtype)


def _encoders(sae: Any, hook_name: str | None, dtype: torch.dtype | None,
              offload_to: torch.device | str | None = None) -> tuple[list[str] | None, list[Encoder]]:
    """One SAE (keys None) or several (:func:`~tl_persona.saes.named_saes`). ``hook_name`` only goes
    with one SAE; ``offload_to`` keeps SAEs where they are until their hook (see SAEEncoder)."""
    def enc(v: Any, h: str | None) -> Encoder:
        if offload_to is not None and is_sae(v):
            return SAEEncoder(v, h, dtype, offload_to=offload_to)
        return _encoder(v, h, dtype)

    named = named_saes(sae)
    if named is None:
        return None, [enc(sae, hook_name)]
    if hook_name is not None:
        raise BadInput("hook_name goes with one SAE; with several, each SAE reads the hook in its own metadata "
                       "(set sae.cfg.metadata.hook_name, or wrap it: SAEEncoder(sae, hook_name=...))")
    return list(named), [enc(v, None) for v in named.values()]


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
    truncate: bool = False,
) -> LatentStats | dict[str, LatentStats]:
    """Stream per-latent statistics of ``sae`` over ``model``'s activations on a token scope.

    Why: the mean (and spread, max, firing rate) of every latent over a prompt set, without ever
    holding ``[N, T, d_sae]``. The forward pass stops right after the SAE's hook point and only the
    positions of ``scope`` (``"prompt"``, ``"response"``, ``"last_prompt"``, ``"all"``; never BOS or
    padding) are encoded. ``dtype`` casts the SAE (a copy) and the activations for the encode;
    statistics are float64. With ``latents_per_prompt`` the result's ``per_prompt`` tracker holds
    those latents' per-prompt sums. When a ``torch.distributed`` process group is initialized (and
    ``distributed`` is not False) each rank takes a shard of the prompts and every rank returns the
    reduced, global statistics. ``sae`` may also be any :class:`~tl_persona.engine.Encoder`, or several
    (a list or a dict by name): one forward pass feeds them all, and a dict of statistics by name
    (hook name for a list) comes back. A prompt longer than the model's context is an error unless
    ``truncate`` (then it is cut, with a warning).
    """
    scope = check_scope(scope)
    adapter = as_adapter(model)
    keys, encs = _encoders(sae, hook_name, dtype)
    for e in encs:
        adapter.check_hook(e.hook_name)
    track = None
    if latents_per_prompt is not None:
        if keys is not None:
            raise BadInput("latents_per_prompt goes with one SAE; call collect once per SAE to track latents")
        track = [check_latents(sae, latents_per_prompt, "latents_per_prompt").tolist()] if is_sae(sae) \
            else [latents_per_prompt]
    tp = as_prompt_set(prompts).tokenize(adapter, truncate=truncate)
    res = stream([adapter], encs, tp, scope, batch_size=batch_size, max_tokens=max_tokens, seed=None,
                 track=track, distributed=distributed)
    for e in range(len(encs)):
        res.stats[0][e].per_prompt = res.trackers[0][e]
    if keys is None:
        return res.stats[0][0]
    return {k: res.stats[0][e] for e, k in enumerate(keys)}  # type: ignore[return-value]


def _check_pair(a: ModelAdapter, b: ModelAdapter, enc: Encoder) -> str:
    """Clear errors when two models cannot be diffed with one encoder; returns the hook name."""
    ta, tb = getattr(a.model, "tokenizer", None), getattr(b.model, "tokenizer", None)
    if ta is not None and tb is not None and ta is not tb:  # without both, the prompts are token ids
        va, vb = ta.get_vocab(), tb.get_vocab()
        if va != vb:
            diff = sorted(set(va.items()) ^ set(vb.items()))[:3]
            raise BadInput(
                f"base {a.name!r} and fine-tuned {b.name!r} have different tokenizers (vocabulary sizes "
                f"{len(va)} and {len(vb)}; differing entries e.g. {diff}); diffing encodes both on the same "
                "tokens, so use a fine-tune of the same base model (and its tokenizer)"
            )
        for attr in ("bos_token_id", "pad_token_id"):
            if getattr(ta, attr, None) != getattr(tb, attr, None):
                raise BadInput(
                    f"base and fine-tuned tokenizers differ in {attr} ({getattr(ta, attr, None)} vs "
                    f"{getattr(tb, attr, None)}); attach the same tokenizer to both models"
                )
    va_n, vb_n = getattr(a.model.cfg, "d_vocab", None), getattr(b.model.cfg, "d_vocab", None)
    if va_n is not None and vb_n is not None and va_n != vb_n:
        raise BadInput(f"base {a.name!r} has d_vocab={va_n} but fine-tuned {b.name!r} has d_vocab={vb_n}; the same "
                       "token ids must mean the same tokens in both models: use a fine-tune of the same base model")
    if a.d_model != b.d_model:
        raise BadInput(
            f"base {a.name!r} has d_model={a.d_model} but fine-tuned {b.name!r} has d_model={b.d_model}; "
            "the two models must have the same width to share one SAE"
        )
    hook = a.check_hook(enc.hook_name)
    b.check_hook(hook)
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
    confidence: float
    n_prompts: int

    def __str__(self) -> str:
        return (f"latent {self.latent}: delta {self.delta:+.4g} [{self.lo:+.4g}, {self.hi:+.4g}] "
                f"({100 * self.confidence:.0f}% CI, {self.n_prompts} prompts)")


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
    one_model_at_a_time: bool = False,
    device: torch.device | str | None = None,
    truncate: bool = False,
    offload_saes_to: torch.device | str | None = None,
) -> "LatentDiff | LatentDiffSet":
    """Rank SAE latents by the change of their mean activation from ``base`` to ``finetuned``.

    Why: the paper's model-diffing instrument. Both models see the same tokens (checked: same
    tokenizer, same width; the SAE must fit both at its hook), are run on each batch only up to the
    SAE's hook point, and only the positions of ``scope`` are encoded (``"response"``: the answer's
    tokens, needs prompt + response pairs; ``"prompt"``, ``"last_prompt"``: where the answer starts,
    ``"all"``). Per-prompt sums are kept for the top ``per_prompt_top`` latents in each direction
    (for :meth:`LatentDiff.bootstrap_ci`; latents that did not change are in neither direction);
    0 skips them. ``seed`` draws the pilot sample that picks the per-prompt candidates and orders
    the batches; it is recorded with the result. ``dtype`` casts the SAE for the encode. Sharded
    over ranks when a process group is initialized. ``one_model_at_a_time`` runs the base model over
    all prompts, then the fine-tuned one (each moved to ``device`` for its own pass, when given), for
    two models that do not fit on the device together: the result is the same. ``sae`` may also be
    any :class:`~tl_persona.engine.Encoder` (e.g. :class:`~tl_persona.directions.Projection`), or
    several SAEs at several layers (a list, or a dict by name): each batch then runs both models once,
    up to the deepest hook, every SAE encodes its own hook's scope positions, and a
    :class:`LatentDiffSet` of per-SAE diffs comes back (each equal to its single-SAE call). A prompt
    longer than the model's context is an error unless ``truncate`` (then it is cut, with a warning).
    ``offload_saes_to`` (e.g. ``"cuda"`` with the SAEs on the CPU) moves each SAE to that device only
    for its own encode of each batch: many wide SAEs then need the device memory of one.
    """
    scope = check_scope(scope)
    per_prompt_top = nonneg_int(per_prompt_top, "per_prompt_top", fix="0 keeps no per-prompt values")
    a0, a1 = as_adapter(base), as_adapter(finetuned)
    keys, encs = _encoders(sae, hook_name, dtype, offload_saes_to)
    hooks = [_check_pair(a0, a1, e) for e in encs]
    ps = as_prompt_set(prompts)
    tp = ps.tokenize(a0, truncate=truncate)
    res = stream([a0, a1], encs, tp, scope, batch_size=batch_size, max_tokens=max_tokens, seed=seed,
                 track_top=per_prompt_top, distributed=distributed, one_model_at_a_time=one_model_at_a_time,
                 device=device)
    ids = (model_identity(a0), model_identity(a1))
    diffs = [_to_diff(res, e, enc, h, ids, ps, per_prompt_top) for e, (enc, h) in enumerate(zip(encs, hooks))]
    if keys is None:
        return diffs[0]
    return LatentDiffSet(dict(zip(keys, diffs)))  # type: ignore[return-value]


def _to_diff(res: StreamResult, e: int, enc: Encoder, hook: str, ids: tuple[dict[str, Any], dict[str, Any]], ps: Any,
             per_prompt_top: int) -> "LatentDiff":
    """The engine's result for encoder ``e`` as a :class:`LatentDiff` with its provenance."""
    t = res.tracked[e]
    pp = None
    if t is not None:
        pp = PerPromptValues(t.features, t.prompt_ids, t.counts, t.sums[0], t.sums[1])
    ident = enc.identity()
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "base": ids[0],
        "finetuned": ids[1],
        "sae": ident,
        "hook_name": hook,
        "prompts": {"hash": ps.content_hash, "n": len(ps), "source": ps.source, "n_tokens": res.n_tokens},
        "dtype": str(getattr(enc, "dtype", "")).removeprefix("torch."),
        "per_prompt_top": per_prompt_top,
        "per_prompt_second_pass": res.second_pass[e] if res.second_pass else 0,
        **res.meta,
    }
    return LatentDiff(res.stats[0][e].to("cpu"), res.stats[1][e].to("cpu"), pp, meta)


# =========================================================================== files
_PP_FIELDS = ("latents", "prompt_ids", "counts", "base_sums", "finetuned_sums")


def _is_saved_diff(path: Path) -> bool:
    """A saved LatentDiff or LatentDiffSet (either may replace the other)."""
    header, _ = read_safetensors(path, tensors=False)
    return PROVENANCE_KEY in header and FORMAT in header[PROVENANCE_KEY]


def load_saved(path: str | os.PathLike, fmt: str) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    """Path, provenance and tensors of a file saved in the safetensors-with-provenance format ``fmt``
    (a diff, a diff set, an attribution), with clear errors for any other file."""
    path = Path(path)
    if not path.exists() and path.with_name(path.name + ".safetensors").exists():
        path = path.with_name(path.name + ".safetensors")
    if not path.exists():
        raise FileNotFoundError(f"no saved {fmt.split('.')[-1]} at {str(path)!r}")
    header, tensors = read_safetensors(path)
    if PROVENANCE_KEY not in header:
        raise BadInput(f"{str(path)!r} is a safetensors file but not a saved {fmt.split('.')[-1]} (no provenance header)")
    meta = json.loads(header[PROVENANCE_KEY])
    if meta.get("format") != fmt or int(meta.get("version", 0)) > FORMAT_VERSION:
        hint = {FORMAT: "LatentDiff.load", SET_FORMAT: "LatentDiffSet.load",
                "tl_persona.Attribution": "tl_persona.attribution.Attribution.load"}.get(meta.get("format"), "")
        raise BadInput(
            f"{str(path)!r} holds format {meta.get('format')!r} v{meta.get('version')}; this reads {fmt} up to "
            f"v{FORMAT_VERSION}" + (f" (read it with {hint})" if hint else " (upgrade tl_persona)")
        )
    return path, meta, tensors


def check_diff_path(path: str | os.PathLike, *, overwrite: bool = False, option: str = "overwrite=True") -> Path:
    """The ``.safetensors`` path a diff will be saved to, checked before any compute: an existing
    file there must be a saved diff (or ``overwrite`` given)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return guard_overwrite(p, what="saved LatentDiff", is_ours=_is_saved_diff, overwrite=overwrite, option=option)


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
            raise BadInput(f"base and finetuned statistics have different d_sae ({self.base.d_sae}, {self.finetuned.d_sae})")

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
        raise BadInput(f"by={by!r} is not one of 'delta', 'effect_size', 'relative_delta'")

    def rank(self, direction: Direction = "increase", by: RankBy = "delta") -> Int[Tensor, " d_sae"]:
        """All latents ordered by ``by`` (default the mean change), largest increase (or decrease)
        first; NaN last, ties by latent index."""
        if direction not in ("increase", "decrease"):
            raise BadInput(f"direction={direction!r} is not 'increase' or 'decrease'")
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
            raise BadInput(f"k must be a positive integer, got {k!r}")
        order = self.rank(direction, by)[:k].numpy()
        df = self.to_pandas().iloc[order]
        return df

    # ---------------------------------------------------------------- per prompt
    def bootstrap_ci(self, latent: int, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> DeltaCI:
        """Percentile-bootstrap interval of ``latent``'s delta, resampling prompts.

        The statistic is the same token-pooled mean change as :attr:`delta` (recomputed on each
        resample), so the interval matches the point estimate. Needs the latent's per-prompt values
        (kept for the top ``per_prompt_top`` latents in each direction).
        """
        pp = self._per_prompt()
        j = pp.column(latent)
        est, lo, hi = bootstrap_ratio_delta(
            pp.base_sums[:, j].numpy(), pp.finetuned_sums[:, j].numpy(), pp.counts.numpy(),
            n_boot=n_boot, confidence=confidence, seed=seed,
        )
        return DeltaCI(int(latent), est, lo, hi, float(confidence), int((pp.counts > 0).sum()))

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
            raise BadInput("this diff kept no per-prompt values; rerun diff_latents with per_prompt_top > 0")
        return self.per_prompt

    # ---------------------------------------------------------------- persistence
    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Every tensor of the diff by name (what :meth:`save` writes), names prefixed by ``prefix``."""
        out: dict[str, Tensor] = {}
        for pre, s in (("base", self.base), ("finetuned", self.finetuned)):
            for k, v in s.state_dict().items():
                out[f"{prefix}{pre}.{k}"] = v
        if self.per_prompt is not None:
            pp = self.per_prompt
            for k in _PP_FIELDS:
                out[f"{prefix}per_prompt.{k}"] = getattr(pp, k).detach().cpu().contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], meta: dict[str, Any], prefix: str = "") -> "LatentDiff":
        """The diff whose :meth:`tensors` (with ``prefix``) and provenance are given."""
        def stats(pre: str) -> LatentStats:
            head = f"{prefix}{pre}."
            return LatentStats.from_state_dict({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})

        pp = None
        if f"{prefix}per_prompt.latents" in tensors:
            pp = PerPromptValues(*(tensors[f"{prefix}per_prompt.{k}"] for k in _PP_FIELDS))
        return cls(stats("base"), stats("finetuned"), pp, meta)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the diff to one ``.safetensors`` file (tensors + JSON provenance in its header).

        The file is written to a temporary file in the same folder and renamed over ``path``, so an
        interrupted write never leaves a partial file at ``path``. An existing file is replaced only
        if it is a saved diff (or with ``overwrite=True``): an SAE's weights at a mistyped path stay.
        Returns the path.
        """
        from safetensors.torch import save as st_save

        path = check_diff_path(path, overwrite=overwrite)
        data = st_save(self.tensors(), metadata={PROVENANCE_KEY: json.dumps(self.meta, sort_keys=True, default=str)})
        atomic_write_bytes(path, data, chunk=_WRITE_CHUNK)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentDiff":
        """Read a diff written by :meth:`save`; a truncated file, a file of another kind or a folder
        is refused with a message naming the path."""
        path, meta, tensors = load_saved(path, FORMAT)
        return cls.from_tensors(tensors, meta)

    def __repr__(self) -> str:
        m = self.meta
        return (f"LatentDiff(d_sae={self.d_sae}, n_tokens={self.n_tokens}, scope={m.get('scope')!r}, "
                f"hook={m.get('hook_name')!r}, base={m.get('base', {}).get('name')!r}, "
                f"finetuned={m.get('finetuned', {}).get('name')!r})")


# =========================================================================== several SAEs
class LatentDiffSet(Mapping[str, LatentDiff]):
    """Diffs of one base / fine-tuned pair with several SAEs (one per layer, say), keyed by name.

    A read-only mapping ``name -> LatentDiff`` (names are hook names for a list of SAEs, or the keys
    given), with the cross-layer views the paper's readers ask for: :meth:`table` (the top latents of
    every SAE side by side, with intervals), :meth:`layer_profile` (the strongest increase per layer)
    and :meth:`plot_layer_profile`; :meth:`save` / :meth:`load` keep the whole set in one file.
    """

    def __init__(self, diffs: Mapping[str, LatentDiff]) -> None:
        if not diffs:
            raise BadInput("a LatentDiffSet needs at least one diff")
        self._diffs = dict(diffs)

    def __getitem__(self, key: str) -> LatentDiff:
        if key not in self._diffs:
            raise KeyError(f"no diff named {key!r}; have {list(self._diffs)}")
        return self._diffs[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._diffs)

    def __len__(self) -> int:
        return len(self._diffs)

    def layer(self, key: str) -> int | None:
        """The block index of the diff's hook (``blocks.6.hook_resid_post`` -> 6), or None."""
        from tl_persona.models import hook_layer

        return hook_layer(str(self[key].meta.get("hook_name", "")))

    def table(self, k: int = 10, direction: Direction = "increase", *, by: RankBy = "delta", n_boot: int = 1000,
              seed: int = 0) -> Any:
        """The top ``k`` latents of every SAE in one ``pandas.DataFrame``: name, hook, layer, rank,
        latent, delta with its bootstrap interval (NaN when the latent has no per-prompt values),
        effect size and both means."""
        import pandas as pd

        rows = []
        for key, d in self.items():
            top = d.top(k, direction, by)
            for r, (latent, row) in enumerate(top.iterrows(), start=1):
                lo = hi = float("nan")
                if d.per_prompt is not None and int(latent) in set(d.per_prompt.latents.tolist()):
                    ci = d.bootstrap_ci(int(latent), n_boot=n_boot, seed=seed)
                    lo, hi = ci.lo, ci.hi
                rows.append({"sae": key, "hook": d.meta.get("hook_name"), "layer": self.layer(key), "rank": r,
                             "latent": int(latent), "delta": float(row["delta"]), "delta_lo": lo, "delta_hi": hi,
                             "effect_size": float(row["effect_size"]), "base_mean": float(row["base_mean"]),
                             "finetuned_mean": float(row["finetuned_mean"])})
        return pd.DataFrame(rows)

    def layer_profile(self, *, by: RankBy = "delta", n_boot: int = 1000, seed: int = 0) -> Any:
        """One row per SAE, in layer order: its strongest increase (latent, delta, interval, effect size)."""
        t = self.table(1, "increase", by=by, n_boot=n_boot, seed=seed)
        return t.sort_values(["layer", "sae"], na_position="last").reset_index(drop=True)

    def plot_layer_profile(self, *, n_boot: int = 1000, seed: int = 0) -> Any:
        """A matplotlib figure: the strongest increase per layer with its 95% interval."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        prof = self.layer_profile(n_boot=n_boot, seed=seed)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        x = [la if la is not None and la == la else i for i, la in enumerate(prof["layer"])]
        err = [(prof["delta"] - prof["delta_lo"]).clip(lower=0).fillna(0), (prof["delta_hi"] - prof["delta"]).clip(lower=0).fillna(0)]
        ax.errorbar(x, prof["delta"], yerr=err, fmt="o-", capsize=4)
        for xi, (_, r) in zip(x, prof.iterrows()):
            ax.annotate(f"{r['latent']}", (xi, r["delta"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel("largest mean increase")
        ax.set_title("Strongest latent increase per layer (95% CI over prompts)")
        fig.tight_layout()
        return fig

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the whole set to one ``.safetensors`` file, atomically (as :meth:`LatentDiff.save`)."""
        from safetensors.torch import save as st_save

        path = check_diff_path(path, overwrite=overwrite)
        tensors: dict[str, Tensor] = {}
        for i, d in enumerate(self.values()):
            tensors.update(d.tensors(prefix=f"{i}/"))
        meta = {"format": SET_FORMAT, "version": FORMAT_VERSION, "keys": list(self),
                "metas": [d.meta for d in self.values()]}
        data = st_save(tensors, metadata={PROVENANCE_KEY: json.dumps(meta, sort_keys=True, default=str)})
        atomic_write_bytes(path, data, chunk=_WRITE_CHUNK)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentDiffSet":
        """Read a set written by :meth:`save` (clear errors for other files, as :meth:`LatentDiff.load`)."""
        path, meta, tensors = load_saved(path, SET_FORMAT)
        return cls({k: LatentDiff.from_tensors(tensors, m, prefix=f"{i}/")
                    for i, (k, m) in enumerate(zip(meta["keys"], meta["metas"]))})

    def __repr__(self) -> str:
        return f"LatentDiffSet({', '.join(f'{k!r}: d_sae={d.d_sae}' for k, d in self.items())})"
