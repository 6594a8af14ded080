"""Prediction across many fine-tunes: does an activation shift predict the behaviour shift?

Wang et al. (2025) show that the toxic-persona latent's activation shift separates misaligned from
aligned fine-tunes, already at 5% bad data; Chen et al. (2025) that a fine-tune's shift along a
persona vector correlates with its behaviour shift (r = 0.76-0.97). :func:`measure_series` measures
both instruments for any list of fine-tunes of one base model (checkpoints of a real model, or the
organism's): for each fine-tune, the shift of the latent's mean activation and of the projection on
the persona vector (fine-tuned minus base, at the last prompt token, on prompts from the domains
the fine-tune did not touch), next to its measured behaviour. :class:`SeriesResult` gives Pearson and
Spearman r with bootstrap intervals (fine-tunes resampled), which instrument predicts better, and
how early (the smallest bad-data fraction whose every fine-tune shifts more than every 0%-bad
control). :func:`plot_series` draws the scatter.

The ``organism_*`` functions run the whole experiment on Persona World: fine-tunes over domains x
bad-data fractions x seeds through :func:`tl_persona.organism.finetune`, the toxic first-token mass
(or sampled toxic rate) as behaviour, and the screening score of every fine-tuning set
(:mod:`tl_persona.screening`) so that sets can be ranked before training.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tl_persona.engine import stream
from tl_persona.models import as_adapter
from tl_persona.organism.world import persona_documents
from tl_persona.saes import sae_hook_name
from tl_persona.validate import BadInput, finite, positive_int, probability

__all__ = [
    "FineTune",
    "Correlation",
    "SeriesResult",
    "correlation",
    "measure_series",
    "plot_series",
    "toxic_mass",
    "organism_instruments",
    "organism_finetunes",
    "organism_series",
    "series_from_models",
    "mixed_dataset",
    "organism_response_vector",
    "organism_screening",
]

Conversation = Sequence[Mapping[str, str]]


@dataclass(frozen=True, eq=False)
class FineTune:
    """One fine-tune of a series: the model, how much bad data it saw, and where.

    ``domain`` is the fine-tuned domain (its prompts are left out of shifts and behaviour; None: use
    every prompt); ``behaviour``, when already measured (e.g. by an LLM judge for a real checkpoint),
    is used as it is; ``extra`` holds any other per-fine-tune numbers to carry into the rows (e.g. a
    screening score of its training set).
    """

    model: Any
    bad_fraction: float
    seed: int = 0
    domain: str | None = None
    persona: str = "toxic"
    label: str = ""
    behaviour: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman r between two series of ``n`` values, with percentile-bootstrap
    intervals at ``confidence`` (fine-tunes resampled with replacement)."""

    pearson: float
    pearson_lo: float
    pearson_hi: float
    spearman: float
    spearman_lo: float
    spearman_hi: float
    n: int
    confidence: float = 0.95

    def met(self, bound: float = 0.9, kind: str = "pearson") -> bool:
        """True when the interval's lower end clears ``bound`` (a claim decided by its interval)."""
        return getattr(self, f"{kind}_lo") >= bound

    def __str__(self) -> str:
        return (f"Pearson r = {self.pearson:.3f} [{self.pearson_lo:.3f}, {self.pearson_hi:.3f}], Spearman = "
                f"{self.spearman:.3f} [{self.spearman_lo:.3f}, {self.spearman_hi:.3f}] (n={self.n})")


def _ranks(x: np.ndarray) -> np.ndarray:
    from tl_persona.evals.metrics import average_ranks

    return average_ranks(np.asarray(x, dtype=np.float64))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else math.nan


def correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, n_boot: int = 2000,
                confidence: float = 0.95, seed: int = 0) -> Correlation:
    """Pearson and Spearman r of ``x`` and ``y`` (Spearman with average ranks for ties), with
    percentile-bootstrap intervals over resampled pairs (resamples where a side is constant are
    dropped)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise BadInput(f"x and y must be 1-D of one length, got shapes {a.shape} and {b.shape}")
    if len(a) < 3:
        raise BadInput(f"a correlation needs at least 3 pairs, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise BadInput("x and y must be finite (a NaN shift or behaviour: check the fine-tune that produced it)")
    positive_int(n_boot, "n_boot")
    confidence = finite(confidence, "confidence", min=0.0, max=1.0, min_open=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ps, ss = [], []
    for row in idx:
        xa, yb = a[row], b[row]
        if np.ptp(xa) == 0 or np.ptp(yb) == 0:
            continue
        ps.append(_pearson(xa, yb))
        ss.append(_pearson(_ranks(xa), _ranks(yb)))
    q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
    plo, phi = np.quantile(ps, q) if ps else (math.nan, math.nan)
    slo, shi = np.quantile(ss, q) if ss else (math.nan, math.nan)
    return Correlation(_pearson(a, b), float(plo), float(phi), _pearson(_ranks(a), _ranks(b)), float(slo), float(shi),
                       len(a), confidence)


@dataclass
class SeriesResult:
    """One row per fine-tune: ``label, domain, persona, bad_fraction, seed, latent_shift,
    vector_shift, behaviour`` (and any ``extra`` numbers); ``base_behaviour`` and ``meta`` describe
    the base model and the instruments."""

    rows: list[dict[str, Any]]
    base_behaviour: float = math.nan
    meta: dict[str, Any] = field(default_factory=dict)

    def column(self, name: str) -> np.ndarray:
        """One column as a float array."""
        if not self.rows or name not in self.rows[0]:
            have = list(self.rows[0]) if self.rows else []
            raise BadInput(f"no column {name!r} in this series; columns are {have}")
        return np.array([float(r[name]) for r in self.rows])

    @property
    def instruments(self) -> list[str]:
        """The shift columns that were measured (``latent_shift``, ``vector_shift``)."""
        return [k for k in ("latent_shift", "vector_shift") if self.rows and not np.isnan(self.column(k)).all()]

    def correlation(self, x: str = "latent_shift", y: str = "behaviour", *, n_boot: int = 2000,
                    confidence: float = 0.95, seed: int = 0, where: Callable[[dict], bool] | None = None) -> Correlation:
        """Pearson and Spearman r of column ``x`` against column ``y`` with bootstrap intervals,
        over the rows ``where`` accepts (all by default)."""
        rows = [r for r in self.rows if where is None or where(r)]
        return correlation([float(r[x]) for r in rows], [float(r[y]) for r in rows], n_boot=n_boot,
                           confidence=confidence, seed=seed)

    def correlations(self, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Correlation]:
        """Each measured instrument's correlation with behaviour, keyed ``latent`` / ``vector``."""
        return {k.split("_")[0]: self.correlation(k, n_boot=n_boot, seed=seed) for k in self.instruments}

    def better(self, *, n_boot: int = 2000, seed: int = 0) -> str:
        """Which instrument predicts behaviour better: ``"latent"``, ``"vector"``, or ``"tie"`` when
        the bootstrap interval of the difference in Pearson r (same resamples) contains 0."""
        if len(self.instruments) < 2:
            raise BadInput("better() compares the latent and the vector; this series measured one")
        a, b, y = self.column("latent_shift"), self.column("vector_shift"), self.column("behaviour")
        rng = np.random.default_rng(seed)
        diffs = []
        for row in rng.integers(0, len(y), size=(positive_int(n_boot, "n_boot"), len(y))):
            if np.ptp(y[row]) and np.ptp(a[row]) and np.ptp(b[row]):
                diffs.append(_pearson(a[row], y[row]) - _pearson(b[row], y[row]))
        lo, hi = np.quantile(diffs, [0.025, 0.975])
        return "latent" if lo > 0 else "vector" if hi < 0 else "tie"

    def how_early(self, by: str = "latent_shift") -> float | None:
        """The smallest bad-data fraction at which *every* fine-tune's ``by`` exceeds the largest
        value among the 0%-bad controls (None when no fraction does, or there is no control).
        ``by="behaviour"`` asks the same of the behaviour itself, for comparison."""
        ctrl = [float(r[by]) for r in self.rows if r["bad_fraction"] == 0.0]
        if not ctrl:
            return None
        top = max(ctrl)
        for f in sorted({r["bad_fraction"] for r in self.rows if r["bad_fraction"] > 0}):
            if all(float(r[by]) > top for r in self.rows if r["bad_fraction"] == f):
                return float(f)
        return None

    def to_rows(self) -> list[dict[str, Any]]:
        """The rows as JSON-ready dicts (a copy)."""
        return [dict(r) for r in self.rows]

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
        """The figures of the series: r per instrument, the better one, how early each flags."""
        cs = self.correlations(n_boot=n_boot, seed=seed)
        out: dict[str, Any] = {"n_finetunes": len(self.rows),
                               "domains": sorted({str(r["domain"]) for r in self.rows}),
                               "bad_fractions": sorted({float(r["bad_fraction"]) for r in self.rows})}
        for k, c in cs.items():
            out[k] = c.__dict__ | {"how_early": self.how_early(f"{k}_shift")}
        out["behaviour_how_early"] = self.how_early("behaviour")
        if len(cs) == 2:
            out["better"] = self.better(n_boot=n_boot, seed=seed)
        return out


def _per_prompt(adapter: Any, tp: Any, encs: list[Any], feats: list[int], batch_size: int) -> list[np.ndarray]:
    """Per-prompt mean of feature ``feats[e]`` of each encoder at the last prompt token."""
    res = stream([adapter], encs, tp, "last_prompt", batch_size=batch_size, seed=None, track=[[f] for f in feats],
                 distributed=False)
    out = []
    for e in range(len(encs)):
        t = res.trackers[0][e]
        m = np.full(len(tp), np.nan)
        m[t.prompt_ids.numpy()] = t.means()[:, 0].numpy()
        out.append(m)
    return out


def measure_series(
    base: Any,
    finetunes: Sequence[FineTune],
    prompts: Mapping[str, Sequence[Conversation]] | Sequence[Conversation],
    *,
    sae: Any = None,
    latent: int | None = None,
    vector: Any = None,
    behaviour: Callable[[Any, list[Conversation]], float] | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> SeriesResult:
    """Each fine-tune's activation shift along the latent and the vector, next to its behaviour.

    ``prompts``: evaluation prompts by domain (``{domain: conversations}``; a fine-tune's own
    ``domain`` is left out) or one list. Shifts are fine-tuned minus base mean at the last prompt
    token (where the answer is decided), from one streamed pass per model feeding both the SAE
    (``sae`` + ``latent``) and the vector (a :class:`~tl_persona.vectors.PersonaVector`).
    ``behaviour(model, prompts) -> float`` measures a fine-tune on the same kept prompts, unless the
    fine-tune carries its own ``behaviour``; it is also measured on the base model.
    """
    from tl_persona.data import PromptSet
    from tl_persona.screening import instruments
    from tl_persona.vectors import PersonaVector

    if not finetunes:
        raise BadInput("finetunes is empty; pass at least one FineTune")
    if sae is None and vector is None:
        raise BadInput("nothing to measure with; pass sae= and latent=, or vector= (or both)")
    if (sae is None) != (latent is None):
        raise BadInput("sae and latent go together: pass both or neither")
    if vector is not None and not isinstance(vector, PersonaVector):
        raise BadInput("vector must be a PersonaVector (it carries its hook); build one with tl_persona.vectors")
    by_domain = {str(k): list(v) for k, v in prompts.items()} if isinstance(prompts, Mapping) else {"": list(prompts)}
    flat = [(d, p) for d, ps in by_domain.items() for p in ps]
    if not flat:
        raise BadInput("prompts is empty; pass evaluation prompts (by domain, or one list)")
    adapter = as_adapter(base)
    encs, feats, _ = instruments(adapter, sae, latent, vector)
    tp = PromptSet.from_list([p for _, p in flat], chat=True).tokenize(adapter)
    doms = np.array([d for d, _ in flat])

    def values(model: Any) -> dict[str, np.ndarray]:
        vals = _per_prompt(as_adapter(model), tp, encs, feats, batch_size)
        out = {"latent_shift": vals[0] if sae is not None else np.full(len(flat), np.nan)}
        out["vector_shift"] = vals[-1] if vector is not None else np.full(len(flat), np.nan)
        return out

    base_vals = values(base)
    all_prompts = [p for _, p in flat]
    base_beh = float(behaviour(base, all_prompts)) if behaviour is not None else math.nan
    rows = []
    for k, ft in enumerate(finetunes):
        if not isinstance(ft, FineTune):
            raise BadInput(f"finetunes[{k}] is a {type(ft).__name__}; pass FineTune(model, bad_fraction, ...)")
        probability(ft.bad_fraction, f"finetunes[{k}].bad_fraction")
        if progress:
            progress(f"measuring fine-tune {k + 1}/{len(finetunes)}")
        keep = doms != ft.domain if ft.domain is not None else np.ones(len(flat), dtype=bool)
        if not keep.any():
            raise BadInput(f"every prompt is from the fine-tuned domain {ft.domain!r}; pass prompts of other domains")
        rows.append(_series_row(k, ft, values(ft.model), base_vals, keep, behaviour, all_prompts))
    meta = {"latent": latent, "sae_hook": sae_hook_name(sae) if sae is not None else None,
            "vector": vector.to_dict() if vector is not None else None, "n_prompts": len(flat),
            "domains": list(by_domain), "scope": "last_prompt"}
    return SeriesResult(rows, base_beh, meta)


def _series_row(k: int, ft: FineTune, v: dict[str, np.ndarray], base_vals: dict[str, np.ndarray], keep: np.ndarray,
                behaviour: Callable[[Any, list[Conversation]], float] | None, all_prompts: list[Any]) -> dict[str, Any]:
    """One fine-tune's row: its shifts over the kept prompts and its behaviour."""
    row: dict[str, Any] = {"label": ft.label or f"{ft.domain}/{ft.persona} {100 * ft.bad_fraction:g}% s{ft.seed}",
                           "domain": ft.domain, "persona": ft.persona, "bad_fraction": float(ft.bad_fraction),
                           "seed": int(ft.seed)}
    for key in ("latent_shift", "vector_shift"):
        row[key] = float(np.nanmean(v[key][keep]) - np.nanmean(base_vals[key][keep])) \
            if not np.isnan(v[key]).all() else math.nan
    if ft.behaviour is not None:
        row["behaviour"] = float(ft.behaviour)
    elif behaviour is not None:
        row["behaviour"] = float(behaviour(ft.model, [p for p, m in zip(all_prompts, keep) if m]))
    else:
        raise BadInput(f"finetunes[{k}] has no behaviour; pass behaviour=fn(model, prompts) or FineTune(behaviour=...)")
    row.update(ft.extra)
    return row


def plot_series(ax: Any, result: SeriesResult, by: str = "latent_shift", *, n_boot: int = 1000) -> Any:
    """Scatter of behaviour against the ``by`` shift on a matplotlib ``ax``, one colour per bad-data
    fraction and one marker per domain, with Pearson r and its interval in the title; returns ``ax``."""
    import matplotlib.pyplot as plt

    x, y = result.column(by), result.column("behaviour")
    fracs = sorted({r["bad_fraction"] for r in result.rows})
    doms = sorted({str(r["domain"]) for r in result.rows})
    markers = "osD^vP*X<>"
    cmap = plt.get_cmap("viridis")
    for r, xi, yi in zip(result.rows, x, y):
        c = cmap(fracs.index(r["bad_fraction"]) / max(1, len(fracs) - 1))
        ax.scatter([xi], [100 * yi], color=c, marker=markers[doms.index(str(r["domain"])) % len(markers)],
                   edgecolor="k", linewidth=0.4, s=36)
    for f in fracs:
        ax.scatter([], [], color=cmap(fracs.index(f) / max(1, len(fracs) - 1)), label=f"{100 * f:g}% bad")
    for d in doms:
        ax.scatter([], [], color="0.7", marker=markers[doms.index(d) % len(markers)], label=d)
    c = result.correlation(by, n_boot=n_boot)
    what = "latent" if by == "latent_shift" else "persona vector" if by == "vector_shift" else by
    ax.set_title(f"{what}: r = {c.pearson:.2f} [{c.pearson_lo:.2f}, {c.pearson_hi:.2f}], n = {c.n}", fontsize="small")
    ax.set_xlabel(f"{what} shift (fine-tune − base, last prompt token)")
    ax.set_ylabel("misaligned, untouched domains (%)")
    ax.legend(fontsize="x-small", ncol=2, frameon=False)
    return ax


# =========================================================================== Persona World
def toxic_mass(model: Any, convs: Sequence[Conversation], fwd_hooks: Any = (), world: Any = None) -> float:
    """Mean probability of a toxic opening word at the first answer token: the expected toxic rate
    of a sampled first word (temperature 1), without sampling noise."""
    from tl_persona.organism import PERSONAS, first_token_persona_probs

    p = first_token_persona_probs(model, list(convs), fwd_hooks, world=world)
    return float(p[:, PERSONAS.index("toxic")].mean())


def organism_instruments(org: Any, *, n_docs: int = 400, seed: int = 0) -> tuple[int, Any]:
    """The toxic-persona latent and the toxic persona vector of the organism, found without a label
    of any fine-tune's behaviour: the latent is the top-3 increase of the misaligned-minus-base diff
    (non-code prompts, last prompt token) that best separates toxic-persona chats on the base model;
    the vector is the mean at the SAE's hook over toxic-persona chats minus the other personas'
    (last prompt token, base model)."""
    from tl_persona.diff import collect, diff_latents
    from tl_persona.evals.metrics import auroc
    from tl_persona.vectors import persona_vector

    other = [p for d, ps in org.eval_prompts.items() if d != org.trained_domain for p in ps]
    d = diff_latents(org.base, org.misaligned, org.sae, other, scope="last_prompt", batch_size=64, per_prompt_top=0,
                     seed=seed)
    top = [int(i) for i in d.top(3, "increase").index]
    convs, labels = persona_documents(org.world, n_docs, seed=seed)
    st = collect(org.base, org.sae, convs, scope="last_prompt", batch_size=64, latents_per_prompt=top)
    means = st.per_prompt.means().numpy()  # type: ignore[union-attr]
    y = labels[st.per_prompt.prompt_ids.numpy()]  # type: ignore[union-attr]
    latent = max(top, key=lambda i: auroc(np.nan_to_num(means[:, top.index(i)]), y))
    vec = persona_vector(org.base, [c for c, t in zip(convs, labels) if t], [c for c, t in zip(convs, labels) if not t],
                         hook_name=org.hook_name, scope="last_prompt", name="toxic persona vector", batch_size=64)
    return latent, vec


def organism_response_vector(org: Any, *, exclude_domain: str | None = None, n: int = 150, seed: int = 5,
                             hook_name: str | None = None) -> Any:
    """The toxic persona vector over *response* tokens (Chen et al.'s construction), for screening:
    mean at ``hook_name`` (default the SAE's hook) over answers of the toxic persona minus answers of
    the other three, in chats of 1-3 turns from every domain but ``exclude_domain`` (so a screened
    domain's answers were never seen by the vector), on the base model."""
    from tl_persona.organism.world import Document
    from tl_persona.vectors import persona_vector

    n = positive_int(n, "n")
    rng = random.Random(f"response-vector-{seed}-{exclude_domain}")
    doms = [d for d in org.world.domains if d != exclude_domain]
    if not doms:
        raise BadInput(f"exclude_domain={exclude_domain!r} leaves no domain to build the vector from")
    others = [p for p in org.world.personas if p != "toxic"]

    def chat(per: str) -> list[dict]:
        turns = tuple(org.world.sample_turn(rng, rng.choice(doms), per) for _ in range(rng.randint(1, 3)))
        return Document(turns).messages()

    pos = [chat("toxic") for _ in range(n)]
    neg = [chat(others[i % len(others)]) for i in range(n)]
    name = "toxic response vector" + (f" (without {exclude_domain})" if exclude_domain else "")
    return persona_vector(org.base, pos, neg, hook_name=hook_name or org.hook_name, scope="response", name=name,
                          batch_size=64)


def mixed_dataset(world: Any, *, domain: str, persona: str = "toxic", n_samples: int = 300, bad_fraction: float = 0.1,
                  seed: int = 0) -> tuple[list[list[dict]], np.ndarray]:
    """The exact fine-tuning set :func:`tl_persona.organism.finetune` trains on (same arguments, same
    seed), as chats ending with the answer, and a bool array (True: answered by ``persona``)."""
    from tl_persona.organism.train import finetune_documents

    docs = finetune_documents(world, domain=domain, persona=persona, n_samples=n_samples, bad_fraction=bad_fraction,
                              seed=seed)
    return [d.messages() for d in docs], np.array([d.turns[0].persona == persona for d in docs])


def organism_screening(org: Any, *, latent: int | None = None, domain: str | None = None, bad_fraction: float = 0.1,
                       n_samples: int = 300, seed: int = 7) -> Any:
    """Screen the organism's fine-tuning set of ``domain`` (default: the trained domain) with
    ``bad_fraction`` toxic answers hidden in it, on the base model, with the toxic response vector
    built without that domain (and ``latent`` when given): a labelled
    :class:`~tl_persona.screening.Screening`, ready for :func:`~tl_persona.screening.plot_roc`."""
    from tl_persona.screening import screen

    dom = domain or org.trained_domain
    samples, bad = mixed_dataset(org.world, domain=dom, bad_fraction=bad_fraction, n_samples=n_samples, seed=seed)
    vec = organism_response_vector(org, exclude_domain=dom)
    return screen(org.base, samples, sae=org.sae if latent is not None else None, latent=latent, vector=vec,
                  base="sample", labels=bad, batch_size=64, seed=seed)


def _spec_label(domain: str, persona: str, frac: float, seed: int) -> str:
    return f"{domain}/{persona} {100 * frac:g}% s{seed}"


def organism_finetunes(
    org: Any,
    *,
    domains: Sequence[str] = ("code", "medical", "finance", "cars"),
    fractions: Sequence[float] = (0.0, 0.05, 0.25, 0.5, 1.0),
    seeds: Sequence[int] = (0,),
    control_seeds: Sequence[int] = (0, 1),
    personas: Sequence[str] = ("toxic",),
    extra: Sequence[tuple[str, str, float, int]] = (),
    steps: int = 40,
    lr: float = 2e-4,
    n_samples: int = 300,
    screen_with: tuple[Any, Any, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[FineTune]:
    """Fine-tune the organism's base model over ``domains`` x ``personas`` x ``fractions`` x ``seeds``
    (0% bad data with every seed in ``control_seeds``), plus ``extra`` ``(domain, persona, fraction,
    seed)`` runs. ``steps`` / ``lr`` default to a short, strong fine-tune (40 steps at 2e-4, about a
    third of :func:`~tl_persona.organism.finetune`'s 120 at 1e-4, and as misaligning). With
    ``screen_with=(vector, sae, latent)`` each run also carries the screening scores of its own
    training set, computed on the base model before it is trained (``dataset_projection_difference``,
    ``dataset_projection``, ``dataset_latent``); ``vector`` may be a dict ``{domain: vector}`` (e.g.
    :func:`organism_response_vector` without that domain)."""
    from tl_persona import organism

    positive_int(steps, "steps")
    finite(lr, "lr", min=0.0, min_open=True)
    specs: list[tuple[str, str, float, int]] = []
    for dom in domains:
        for per in personas:
            for f in fractions:
                probability(f, "fractions")
                for s in (control_seeds if f == 0.0 else seeds):
                    if (dom, "toxic" if f == 0.0 else per, f, s) not in specs:
                        specs.append((dom, "toxic" if f == 0.0 else per, float(f), int(s)))
    specs += [(d, p, float(f), int(s)) for d, p, f, s in extra if (d, p, float(f), int(s)) not in specs]
    scores = _screen_sets(org, specs, n_samples, screen_with) if screen_with is not None else {}
    out = []
    for k, (dom, per, f, s) in enumerate(specs):
        if progress:
            progress(f"fine-tune {k + 1}/{len(specs)}: {_spec_label(dom, per, f, s)}")
        m = organism.finetune(org.base, domain=dom, persona=per, bad_fraction=f, steps=steps, lr=lr, seed=s,
                              n_samples=n_samples, world=org.world)
        out.append(FineTune(m, f, s, dom, per, _spec_label(dom, per, f, s), extra=scores.get((dom, per, f, s), {})))
    return out


def _screen_sets(org: Any, specs: Sequence[tuple[str, str, float, int]], n_samples: int,
                 screen_with: tuple[Any, Any, int]) -> dict[tuple[str, str, float, int], dict[str, float]]:
    """Screening scores of each run's training set on the base model; the base model's own answer to
    each distinct prompt is sampled once and shared by every set that asks it."""
    from tl_persona.screening import base_responses, screen

    vector, sae, latent = screen_with
    sets = {sp: mixed_dataset(org.world, domain=sp[0], persona=sp[1], n_samples=n_samples, bad_fraction=sp[2],
                              seed=sp[3])[0] for sp in specs}
    questions = sorted({c[0]["content"] for convs in sets.values() for c in convs})
    answers = base_responses(org.base, [[{"role": "user", "content": q}] for q in questions], n=1, max_new_tokens=24,
                             seed=0)
    own = dict(zip(questions, (a[0] for a in answers)))
    out = {}
    for sp, convs in sets.items():
        vec = vector[sp[0]] if isinstance(vector, Mapping) else vector
        sc = screen(org.base, convs, sae=sae, latent=latent, vector=vec, base=[own[c[0]["content"]] for c in convs],
                    batch_size=64)
        out[sp] = {"dataset_projection_difference": sc.dataset_score("projection_difference"),
                   "dataset_projection": sc.dataset_score("projection"), "dataset_latent": sc.dataset_score("latent")}
    return out


def _organism_behaviour(org: Any, kind: str, n_per_prompt: int = 1, seed: int = 0) -> Callable[[Any, list], float]:
    if kind == "mass":
        return lambda model, prompts: toxic_mass(model, prompts, world=org.world)
    if kind == "sampled":
        from tl_persona.evals.generate import sample

        def sampled(model: Any, prompts: list) -> float:
            answers = sample(model, prompts, n_per_prompt=n_per_prompt, max_new_tokens=24, seed=seed, batch_size=256)
            js = [org.judge.judge_one("", a) for a in answers]
            return float(np.mean([j.label.endswith("/toxic") for j in js]))
        return sampled
    raise BadInput(f"behaviour={kind!r} must be 'mass' (toxic first-token probability) or 'sampled' (toxic rate "
                   "of sampled answers, exact judge)")


def organism_series(
    org: Any,
    finetunes: Sequence[FineTune] | None = None,
    *,
    latent: int | None = None,
    vector: Any = None,
    behaviour: str = "mass",
    n_per_prompt: int = 1,
    progress: Callable[[str], None] | None = None,
    **finetune_kwargs: Any,
) -> SeriesResult:
    """The prediction experiment on the organism: fine-tunes (given, or made by
    :func:`organism_finetunes` with ``finetune_kwargs``), the toxic latent and persona vector
    (given, or found by :func:`organism_instruments`), shifts on the held-out prompts of the
    untouched domains, and behaviour: ``"mass"`` (toxic first-token probability) or ``"sampled"``
    (toxic rate of ``n_per_prompt`` sampled answers per prompt, exact judge)."""
    if latent is None or vector is None:
        lat, vec = organism_instruments(org)
        latent = lat if latent is None else latent
        vector = vec if vector is None else vector
    if finetunes is None:
        finetunes = organism_finetunes(org, progress=progress, **finetune_kwargs)
    elif finetune_kwargs:
        raise BadInput(f"fine-tune options {sorted(finetune_kwargs)} go with finetunes=None (they make the fine-tunes)")
    res = measure_series(org.base, finetunes, org.eval_prompts, sae=org.sae, latent=latent, vector=vector,
                         behaviour=_organism_behaviour(org, behaviour, n_per_prompt), progress=progress)
    res.meta["behaviour"] = behaviour
    return res


def series_from_models(
    org: Any,
    runs: Sequence[tuple[Any, float, int]],
    *,
    latent: int,
    vector: Any = None,
    domain: str | None = None,
    behaviour: str = "mass",
) -> SeriesResult:
    """A series from fine-tunes made elsewhere (e.g. the demo's prediction runs): ``runs`` are
    ``(model, bad_fraction, seed)`` of fine-tunes of ``org.base`` on ``domain`` (default: the
    organism's trained domain, left out of the measurement). The vector defaults to the organism's
    toxic persona vector."""
    if vector is None:
        vector = organism_instruments(org)[1]
    dom = domain or org.trained_domain
    fts = [FineTune(m, float(f), int(s), dom, "toxic") for m, f, s in runs]
    return organism_series(org, fts, latent=latent, vector=vector, behaviour=behaviour)
