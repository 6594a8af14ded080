"""Data screening before training: score each training sample on the base model, rank, and score sets.

Chen et al. (2025) flag training data that will push a trait before any training: a sample whose
response moves the base model's activations along the trait's vector will, once trained on, move
the model along it. :func:`screen` scores every ``(prompt, response)`` sample on the *base* model,
over the response tokens, without training:

* ``latent``: the mean activation of an SAE latent (e.g. the toxic-persona latent);
* ``projection``: the mean projection on a persona vector (:mod:`tl_persona.vectors`);
* ``projection_difference``: ``projection`` minus the projection of the base model's *own* sampled
  response to the same prompt: how much the sample's answer departs from what the model would say.

One streamed forward pass per batch feeds both the SAE and the vector (:func:`tl_persona.engine.stream`).
:class:`Screening` ranks samples, gives a dataset its score (the mean over its samples), an AUROC and
an ROC curve against known labels, and :func:`plot_roc` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
from jaxtyping import Float

from tl_persona.data import PromptItem, PromptsLike, PromptSet, as_prompt_set
from tl_persona.directions import Projection
from tl_persona.engine import stream
from tl_persona.models import as_adapter
from tl_persona.saes import SAEEncoder, check_latents, sae_hook_name
from tl_persona.validate import BadInput, nonneg_int, positive_int

__all__ = ["Screening", "ScoreKind", "screen", "instruments", "base_responses", "dataset_scores", "roc_curve", "plot_roc"]

ScoreKind = Literal["latent", "projection", "projection_difference"]
_KINDS = ("latent", "projection", "projection_difference")


@dataclass(eq=False)
class Screening:
    """Per-sample scores of a training set on the base model (arrays of length ``n``, NaN where a
    score was not asked for). ``labels`` (optional, True = a sample known to be bad) enables
    :meth:`auroc` and :func:`plot_roc`; ``base_responses`` are the model's own answers used by the
    projection difference; ``meta`` records what was scored and how."""

    latent: Float[np.ndarray, " n"]
    projection: Float[np.ndarray, " n"]
    base_projection: Float[np.ndarray, " n"]
    n_tokens: np.ndarray
    labels: np.ndarray | None = None
    base_responses: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.latent)

    @property
    def projection_difference(self) -> Float[np.ndarray, " n"]:
        """The sample's response projection minus that of the base model's own response."""
        return self.projection - self.base_projection

    def score(self, by: ScoreKind = "projection_difference") -> Float[np.ndarray, " n"]:
        """One kind of score per sample (an error when that kind was not computed)."""
        if by not in _KINDS:
            raise BadInput(f"by={by!r} must be one of {', '.join(map(repr, _KINDS))}")
        s = getattr(self, by)
        if np.isnan(s).all():
            need = {"latent": "sae= and latent=", "projection": "vector=",
                    "projection_difference": "vector= and base responses (base_responses='sample' or a list)"}[by]
            raise BadInput(f"no {by!r} scores in this screening; call screen(...) with {need}")
        return s

    def rank(self, by: ScoreKind = "projection_difference", k: int | None = None) -> np.ndarray:
        """Sample indices from the most to the least suspicious (highest score first; ties by index)."""
        order = np.argsort(-np.nan_to_num(self.score(by), nan=-np.inf), kind="stable")
        return order if k is None else order[: positive_int(k, "k")]

    def dataset_score(self, by: ScoreKind = "projection_difference") -> float:
        """The dataset's score: the mean of its samples' scores (NaN samples left out)."""
        return float(np.nanmean(self.score(by)))

    def auroc(self, by: ScoreKind = "projection_difference", labels: Sequence[bool] | np.ndarray | None = None) -> float:
        """AUROC of the score for telling the labelled-bad samples from the others (ties count one half)."""
        from tl_persona.evals.metrics import auroc

        y = self._labels(labels)
        return auroc(np.nan_to_num(self.score(by)), y)

    def auroc_ci(self, by: ScoreKind = "projection_difference", *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
        """The AUROC and its percentile-bootstrap interval ``(auroc, lo, hi)``: bad and good samples
        resampled separately (their numbers stay fixed)."""
        from tl_persona.evals.metrics import auroc

        y = self._labels(None)
        s = np.nan_to_num(self.score(by))
        rng = np.random.default_rng(seed)
        pos, neg = s[y], s[~y]
        boots = [auroc(np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))],
                       np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]) for _ in range(positive_int(n_boot, "n_boot"))]
        a = (1 - confidence) / 2
        lo, hi = np.quantile(boots, [a, 1 - a])
        return auroc(s, y), float(lo), float(hi)

    def _labels(self, labels: Any) -> np.ndarray:
        y = self.labels if labels is None else np.asarray(labels, dtype=bool)
        if y is None:
            raise BadInput("no labels; pass labels=[True for a bad sample, ...] (here or to screen)")
        if len(y) != len(self):
            raise BadInput(f"{len(y)} labels for {len(self)} samples; pass one label per sample")
        return np.asarray(y, dtype=bool)

    def to_pandas(self) -> Any:
        """One row per sample: the three scores, counted response tokens and the label if known."""
        import pandas as pd

        df = pd.DataFrame({"latent": self.latent, "projection": self.projection,
                           "base_projection": self.base_projection,
                           "projection_difference": self.projection_difference, "n_tokens": self.n_tokens})
        if self.labels is not None:
            df["label"] = self.labels
        return df

    def to_rows(self) -> list[dict[str, Any]]:
        """The table of :meth:`to_pandas` as JSON-ready dicts (NaN stays NaN)."""
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                for r in self.to_pandas().to_dict(orient="records")]


def _prompt_of(it: PromptItem) -> Any:
    return list(it.prompt) if it.is_chat else [{"role": "user", "content": it.prompt}]


def base_responses(model: Any, samples: PromptsLike, *, n: int = 1, max_new_tokens: int = 32,
                   temperature: float = 1.0, seed: int = 0, batch_size: int = 64) -> list[list[str]]:
    """The model's own sampled answers to each sample's prompt: ``n`` per sample."""
    from tl_persona.evals.generate import sample

    ps = as_prompt_set(samples)
    n = positive_int(n, "n")
    answers = sample(model, [_prompt_of(it) for it in ps.items], n_per_prompt=n, max_new_tokens=max_new_tokens,
                     temperature=temperature, seed=seed, batch_size=batch_size)
    return [answers[i * n:(i + 1) * n] for i in range(len(ps))]


def _response_means(adapter: Any, ps: PromptSet, encs: list[Any], feats: list[int],
                    batch_size: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-sample mean (over response tokens) of feature ``feats[e]`` of encoder ``e``, and the token counts."""
    tp = ps.tokenize(adapter, truncate=True)
    if int(tp.scope_counts("response").sum()) == 0:
        raise BadInput("no sample has a response token; screening reads responses: pass (prompt, response) pairs "
                       "or conversations ending with the assistant's message")
    track = [[f] for f in feats]
    res = stream([adapter], encs, tp, "response", batch_size=batch_size, seed=None, track=track, distributed=False)
    out = []
    counts = np.zeros(len(ps), dtype=np.int64)
    for e in range(len(encs)):
        t = res.trackers[0][e]
        ids = t.prompt_ids.numpy()
        m = np.full(len(ps), np.nan)
        m[ids] = t.means()[:, 0].numpy()
        counts[ids] = t.counts.numpy()
        out.append(m)
    return out, counts


def screen(
    model: Any,
    samples: PromptsLike,
    *,
    sae: Any = None,
    latent: int | None = None,
    vector: Any = None,
    base: Literal["sample"] | Sequence[str] | Sequence[Sequence[str]] | None = None,
    n_base: int = 1,
    labels: Sequence[bool] | np.ndarray | None = None,
    hook_name: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 32,
    seed: int = 0,
) -> Screening:
    """Score every training sample on ``model`` (the base model, before any training).

    ``samples``: ``(prompt, response)`` pairs or conversations ending with the assistant's answer
    (any :mod:`tl_persona.data` prompt input). With ``sae`` and ``latent``: the latent's mean
    activation over the response tokens. With ``vector`` (a :class:`~tl_persona.vectors.PersonaVector`,
    or a ``[d_model]`` tensor read at ``hook_name``): the mean projection on its unit direction over
    the response tokens; with ``base`` as well, the projection difference against the base model's
    own answers (``"sample"``: ``n_base`` sampled answers per prompt, averaged; or the answers
    themselves, one string or a list of strings per sample). ``labels`` (True = bad) are kept for
    :meth:`Screening.auroc`.
    """
    from tl_persona.vectors import PersonaVector

    adapter = as_adapter(model)
    ps = as_prompt_set(samples, chat=True)
    if len(ps) == 0:
        raise BadInput("samples is empty; pass at least one (prompt, response) sample")
    if sae is None and vector is None:
        raise BadInput("nothing to score with; pass sae= and latent=, or vector= (or both)")
    if (sae is None) != (latent is None):
        raise BadInput("sae and latent go together: pass both (the latent of that SAE) or neither")
    if base is not None and vector is None:
        raise BadInput("base responses are for the projection difference; pass vector= too")
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(vector, PersonaVector) and hook_name is not None and hook_name != vector.hook_name:
        raise BadInput(f"hook_name={hook_name!r} differs from the vector's own hook {vector.hook_name!r}")
    if vector is not None and not isinstance(vector, PersonaVector) and hook_name is None:
        raise BadInput("a plain tensor vector needs hook_name= (where it was read); a PersonaVector carries it")
    encs, feats, vec_hook = instruments(adapter, sae, latent, vector, hook_name)
    means, counts = _response_means(adapter, ps, encs, feats, batch_size)
    n = len(ps)
    nan = np.full(n, np.nan)
    lat_s = means[0] if sae is not None else nan.copy()
    proj_s = means[-1] if vector is not None else nan.copy()
    base_proj, answers = nan.copy(), None
    if base is not None:
        per = _base_answers(adapter, ps, base, n_base, max_new_tokens, seed)
        base_proj = _base_projection(adapter, ps, per, encs[-1], batch_size)
        answers = [" || ".join(a) for a in per]
    y = None
    if labels is not None:
        y = np.asarray(labels, dtype=bool)
        if y.ndim != 1 or len(y) != n:
            raise BadInput(f"labels has {len(y)} entries for {n} samples; pass one bool per sample")
    meta = {"model": adapter.name, "samples_hash": ps.content_hash, "n_samples": n, "latent": latent,
            "sae_hook": sae_hook_name(sae) if sae is not None else None, "vector_hook": vec_hook,
            "vector_name": getattr(vector, "name", None) if vector is not None else None,
            "base": None if base is None else ("sample" if isinstance(base, str) else "given"),
            "n_base": nonneg_int(n_base, "n_base"), "seed": seed}
    return Screening(lat_s, proj_s, base_proj, counts, y, answers, meta)


def instruments(adapter: Any, sae: Any, latent: int | None, vector: Any, hook_name: str | None = None,
                ) -> tuple[list[Any], list[int], str | None]:
    """The encoders that read a latent of ``sae`` and/or the projection on ``vector`` (a
    :class:`~tl_persona.vectors.PersonaVector`, or a ``[d_model]`` tensor read at ``hook_name``),
    the feature each reads, and the vector's hook; both checked against the model."""
    from tl_persona.vectors import PersonaVector, as_vector

    encs: list[Any] = []
    feats: list[int] = []
    if sae is not None:
        lat = int(check_latents(sae, latent, "latent")[0])
        adapter.check_hook(sae_hook_name(sae))
        encs.append(SAEEncoder(sae))
        feats.append(lat)
    vec_hook = None
    if vector is not None:
        vec_hook = vector.hook_name if isinstance(vector, PersonaVector) else hook_name
        adapter.check_hook(vec_hook)
        v = as_vector(vector, "vector", adapter.width_at(vec_hook))
        encs.append(Projection({getattr(vector, "name", "vector"): v}, vec_hook))
        feats.append(0)
    return encs, feats, vec_hook


def _base_answers(adapter: Any, ps: Any, base: Any, n_base: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """The base model's answers per sample: sampled (``base="sample"``) or as given."""
    n = len(ps)
    if isinstance(base, str):
        if base != "sample":
            raise BadInput(f"base={base!r} must be 'sample' or a list of the base model's answers, one per sample")
        return base_responses(adapter.model, ps, n=n_base, max_new_tokens=max_new_tokens, seed=seed)
    per = [[a] if isinstance(a, str) else list(a) for a in base]
    if len(per) != n or any(not a for a in per):
        raise BadInput(f"base has {len(per)} entries for {n} samples; pass one answer (or a non-empty list) per sample")
    return per


def _base_projection(adapter: Any, ps: Any, per: list[list[str]], enc: Any, batch_size: int) -> np.ndarray:
    """Each sample's mean projection over its base answers' response tokens (an empty answer has
    none; a sample with no answer token takes the mean over samples)."""
    n = len(ps)
    flat = [(i, a) for i, ans in enumerate(per) for a in ans]
    items = [(_prompt_of(ps.items[i]), a) for i, a in flat]
    bm, _ = _response_means(adapter, PromptSet.from_list(items, chat=True), [enc], [0], batch_size)
    owner = np.array([i for i, _ in flat])
    vals = bm[0]
    ok = ~np.isnan(vals)  # an empty answer has no response token
    sums = np.bincount(owner[ok], weights=vals[ok], minlength=n)
    cnt = np.bincount(owner[ok], minlength=n)
    base_proj = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    fill = np.nanmean(base_proj) if np.isfinite(base_proj).any() else 0.0
    return np.where(np.isnan(base_proj), fill, base_proj)  # documented: empty answers take the mean


def dataset_scores(model: Any, datasets: dict[str, PromptsLike], *, by: ScoreKind = "projection_difference",
                   **screen_kwargs: Any) -> dict[str, float]:
    """The score of each candidate fine-tuning set (``{name: samples}``): the mean sample score."""
    if not datasets:
        raise BadInput("datasets is empty; pass {name: samples}")
    return {k: screen(model, v, **screen_kwargs).dataset_score(by) for k, v in datasets.items()}


def roc_curve(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (ties as one step), from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise BadInput(f"scores and labels must be 1-D of one length, got {s.shape} and {y.shape}")
    if y.all() or not y.any():
        raise BadInput("an ROC curve needs both bad and good samples in labels")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each run of tied scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    return np.r_[0.0, fp / (~y).sum()], np.r_[0.0, tp / y.sum()]


def plot_roc(ax: Any, result: Screening, by: ScoreKind | Sequence[ScoreKind] | None = None) -> Any:
    """Draw the ROC curve of each score kind of a labelled :class:`Screening` on a matplotlib ``ax``
    (every computed kind by default), with its AUROC in the legend; returns ``ax``."""
    y = result._labels(None)
    kinds = [k for k in _KINDS if not np.isnan(getattr(result, k)).all()] if by is None else (
        [by] if isinstance(by, str) else list(by))
    for k in kinds:
        fpr, tpr = roc_curve(np.nan_to_num(result.score(k)), y)
        ax.plot(fpr, tpr, label=f"{k.replace('_', ' ')} (AUROC {result.auroc(k):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="0.6", lw=1)
    ax.set_xlabel("false-positive rate (good samples flagged)")
    ax.set_ylabel("true-positive rate (bad samples flagged)")
    ax.legend(fontsize="small", loc="lower right")
    return ax
