"""Causal verification of candidate latents: steering and ablation sweeps with controls.

A latent whose activation moves between two models is only a candidate. Following Wang et al.
(2025), :func:`verify_latents` checks each candidate causally:

1. steer the *base* model with ``+alpha`` times the latent's decoder direction over a grid of
   alphas, and keep, per latent, the strongest alpha whose incoherence stays at most 10%;
2. steer the *fine-tuned* model with ``-alpha`` (and zero-ablate the latent there): a latent that
   controls the behaviour suppresses it;
3. repeat (1) and (2) with norm-matched random directions as controls, at the same alphas.

Every setting is judged by any :class:`~tl_persona.evals.judges.Judge`, and every rate carries a
bootstrap confidence interval. Settings of one stage run batched in the same ``generate`` calls
(one steering setting per batch row). Every answer draws from its own random stream, seeded from
the stage's seed, the setting's key and the answer's prompt and sample index, so a setting's result
does not depend on which other settings share its batches: a resumed sweep, a sweep of fewer
candidates and a sweep split over ranks give each setting the same answers. The record on disk is
resumable: a re-run skips settings already done.

**Across ranks.** With an initialized ``torch.distributed`` process group, each stage's settings
are split over the ranks (round-robin), each rank runs its share, and the results are gathered so
that every rank returns the full :class:`Verification`, the same table as one process. Only rank 0
reads and writes the record (the finished settings are broadcast to the other ranks).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona import hooks as H
from tl_persona import interventions as I
from tl_persona.data import read_utf8
from tl_persona.engine import on_device
from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.evals.judges import Judge, Judgement, check_judge, judge_all, judge_identity
from tl_persona.evals.metrics import Rate, summarize
from tl_persona.models import Message, as_adapter
from tl_persona.provenance import follow_umask, json_digest, model_identity, sae_identity
from tl_persona.saes import check_sae, latent_direction, named_saes
from tl_persona.stats import dist_info
from tl_persona.validate import (
    BadInput,
    finite,
    finite_tensor,
    latent_index,
    latent_indices,
    nonneg_int,
    positive_int,
    probability,
)

__all__ = ["Candidate", "Setting", "SettingResult", "SweepConfig", "Verification", "evaluate", "verify_latents"]

Conversation = Sequence[Message]


@dataclass(frozen=True)
class Candidate:
    """What to verify: one latent, a set of latents (their normalised summed directions), or any
    named direction (e.g. a mean-difference vector). ``sae_key`` names the SAE (and so the hook) the
    latents belong to when several SAEs are verified in one sweep."""

    name: str
    latents: tuple[int, ...] = ()
    direction: Tensor | None = field(default=None, compare=False, hash=False, repr=False)
    sae_key: str | None = None

    @staticmethod
    def of(spec: "int | Sequence[int] | tuple[str, Tensor] | tuple[str, int] | Candidate",
           name: str = "candidate") -> "Candidate":
        """Coerce an int, a sequence of ints, a ``(name, vector)`` pair, an ``(sae_key, latent or
        latents)`` pair (several SAEs) or a Candidate (a bool or a float is not a latent index)."""
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            key, rest = spec
            if not isinstance(rest, (Tensor, float)) and (isinstance(rest, (int,)) or (
                    isinstance(rest, Sequence) and rest and all(isinstance(i, int) for i in rest))):
                c = Candidate.of(rest, name)
                return Candidate(f"{c.name} @ {key}", c.latents, None, key)
            vec = finite_tensor(torch.as_tensor(rest).detach().float(), f"{name} {key!r}")
            return Candidate(key, (), vec)
        if isinstance(spec, (str, bytes)) or not isinstance(spec, (Sequence, Tensor)):
            i = latent_index(spec, name)
            return Candidate(f"latent {i}", (i,))
        lat = tuple(latent_indices(spec, name).tolist())
        return Candidate("latents " + "+".join(map(str, lat)), lat)

    def vector(self, sae: Any) -> Float[Tensor, " d_model"]:
        """The steering direction: the decoder row, the normalised sum of rows, or the given vector."""
        if self.direction is not None:
            return self.direction
        return latent_direction(sae, list(self.latents))


@dataclass(frozen=True)
class Setting:
    """One cell of the sweep: which model, which intervention, which candidate or control, which alpha."""

    model: Literal["base", "finetuned"]
    kind: str  # a name from tl_persona.interventions
    candidate: str = ""
    control: int = -1  # -1: the candidate itself; k >= 0: the k-th norm-matched random direction
    alpha: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.model}|{self.kind}|{self.candidate}|{self.control}|{self.alpha:g}"


@dataclass(frozen=True)
class SettingResult:
    """Rates of one setting: misaligned (all answers and coherent ones), incoherent, per label."""

    setting: Setting
    misaligned: Rate
    misaligned_coherent: Rate
    incoherent: Rate
    labels: dict[str, Rate]
    n: int

    def to_row(self) -> dict[str, Any]:
        s = self.setting
        row: dict[str, Any] = {
            "model": s.model, "kind": s.kind, "candidate": s.candidate,
            "control": "random" if s.control >= 0 else "", "control_seed": s.control, "alpha": s.alpha,
            "misaligned": self.misaligned.value, "misaligned_lo": self.misaligned.lo,
            "misaligned_hi": self.misaligned.hi, "misaligned_coherent": self.misaligned_coherent.value,
            "incoherent": self.incoherent.value, "incoherent_lo": self.incoherent.lo,
            "incoherent_hi": self.incoherent.hi, "n": self.n,
        }
        for k, r in self.labels.items():
            row[f"label:{k}"] = r.value
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "setting": asdict(self.setting),
            "misaligned": asdict(self.misaligned),
            "misaligned_coherent": asdict(self.misaligned_coherent),
            "incoherent": asdict(self.incoherent),
            "labels": {k: asdict(v) for k, v in self.labels.items()},
            "n": self.n,
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> "SettingResult":
        return SettingResult(
            Setting(**d["setting"]), Rate(**d["misaligned"]), Rate(**d["misaligned_coherent"]),
            Rate(**d["incoherent"]), {k: Rate(**v) for k, v in d["labels"].items()}, int(d["n"]),
        )


@dataclass
class Verification:
    """The results of :func:`verify_latents`: every setting's rates and each candidate's chosen alpha."""

    results: list[SettingResult]
    chosen_alpha: dict[str, float]
    max_incoherence: float
    meta: dict[str, Any] = field(default_factory=dict)
    chosen_beta: dict[str, float] = field(default_factory=dict)

    def get(self, model: str, kind: str, candidate: str = "", control: int = -1, alpha: float | None = None) -> SettingResult:
        """The result of one setting (``alpha=None``: the candidate's chosen alpha on the base model,
        minus its chosen beta on the fine-tuned one)."""
        if alpha is None:
            if model == "base":
                alpha = self.chosen_alpha.get(candidate, 0.0)
            else:
                alpha = -self.chosen_beta.get(candidate, 0.0) if kind == "steer" else 0.0
        key = Setting(model, kind, candidate, control, float(alpha)).key  # type: ignore[arg-type]
        for r in self.results:
            if r.setting.key == key:
                return r
        raise KeyError(f"no result for setting {key!r}")

    def table(self) -> Any:
        """All settings as a pandas DataFrame, one row each."""
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in self.results])

    def summary(self) -> Any:
        """One row per candidate: base steered at the chosen alpha vs random controls, and the
        fine-tuned model steered negatively and ablated, against its unmodified rate.

        Random controls appear as their mean (the pooled control rate: every direction has the same
        number of answers) and their extreme (``random_steered_max``, ``random_neg_steered_min``);
        the extreme grows with ``n_controls`` by chance alone, the mean does not."""
        import pandas as pd

        rows = []
        base0 = self.get("base", "none", alpha=0.0)
        ft0 = self.get("finetuned", "none", alpha=0.0)
        for cand, a in self.chosen_alpha.items():
            b = self.chosen_beta.get(cand, a)
            steer = self.get("base", "steer", cand)
            ctrls = [r for r in self.results if r.setting.model == "base" and r.setting.kind == "steer"
                     and r.setting.candidate == cand and r.setting.control >= 0 and r.setting.alpha == a]
            neg = self.get("finetuned", "steer", cand)
            nctrl = [r for r in self.results if r.setting.model == "finetuned" and r.setting.kind == "steer"
                     and r.setting.candidate == cand and r.setting.control >= 0 and r.setting.alpha == -b]
            row = {
                "candidate": cand, "alpha": a, "beta": b,
                "base": base0.misaligned.value, "base_steered": steer.misaligned.value,
                "base_steered_incoherent": steer.incoherent.value,
                "random_steered_mean": _mean([c.misaligned.value for c in ctrls]),
                "random_steered_max": max((c.misaligned.value for c in ctrls), default=math.nan),
                "finetuned": ft0.misaligned.value, "finetuned_neg_steered": neg.misaligned.value,
                "finetuned_neg_steered_incoherent": neg.incoherent.value,
                "random_neg_steered_mean": _mean([c.misaligned.value for c in nctrl]),
                "random_neg_steered_min": min((c.misaligned.value for c in nctrl), default=math.nan),
            }
            row.update(_interval_columns(steer, ctrls, neg, nctrl, ft0))
            for kind in I.names(uses_strength=False):
                if kind == "none":
                    continue
                try:
                    r = self.get("finetuned", kind, cand, alpha=0.0)
                except KeyError:
                    continue
                col = I.get(kind).column
                row[f"finetuned_{col}"] = r.misaligned.value
                row[f"finetuned_{col}_incoherent"] = r.incoherent.value
                row[f"finetuned_{col}_incoherent_hi"] = r.incoherent.hi
                if ft0.misaligned.n and r.misaligned.n:
                    from tl_persona.evals.metrics import ratio_ci

                    q = ratio_ci(int(round(r.misaligned.value * r.misaligned.n)), r.misaligned.n,
                                 int(round(ft0.misaligned.value * ft0.misaligned.n)), ft0.misaligned.n)
                    row[f"{col}_suppression"], row[f"{col}_suppression_hi"] = q.value, q.hi
            rows.append(row)
        return pd.DataFrame(rows)


    def dose_response(self, candidate: str | None = None) -> Any:
        """The dose-response data: for every candidate (or one), every strength run on each model
        (``alpha`` signed: ``+`` on the base model, ``-`` on the fine-tuned one), the candidate's
        misaligned and incoherent rates with their 95% intervals, and the random directions at the
        same strength pooled (``random``, ``random_lo``, ``random_hi``: all their answers together)
        with their spread (``random_min``, ``random_max``: the weakest and strongest direction).
        One row per (candidate, model, alpha); the unmodified model is the row at alpha 0."""
        import pandas as pd

        rows = []
        names = [candidate] if candidate is not None else list(self.chosen_alpha)
        for cand in names:
            if cand not in self.chosen_alpha:
                raise KeyError(f"no candidate {cand!r}; the candidates are {list(self.chosen_alpha)}")
            for model in ("base", "finetuned"):
                own = {r.setting.alpha: r for r in self.results if r.setting.model == model
                       and r.setting.kind == "steer" and r.setting.candidate == cand and r.setting.control < 0}
                own[0.0] = self.get(model, "none", alpha=0.0)
                for a in sorted(own, key=abs):
                    r = own[a]
                    ctl = [c for c in self.results if c.setting.model == model and c.setting.kind == "steer"
                           and c.setting.candidate == cand and c.setting.control >= 0 and c.setting.alpha == a]
                    pooled = _pooled([c.misaligned for c in ctl])
                    rows.append({
                        "candidate": cand, "model": model, "alpha": a,
                        "chosen": a == (self.chosen_alpha[cand] if model == "base" else -self.chosen_beta.get(cand, 0.0)),
                        "misaligned": r.misaligned.value, "misaligned_lo": r.misaligned.lo, "misaligned_hi": r.misaligned.hi,
                        "incoherent": r.incoherent.value, "incoherent_lo": r.incoherent.lo, "incoherent_hi": r.incoherent.hi,
                        "n_random": len(ctl), "random": pooled.value, "random_lo": pooled.lo, "random_hi": pooled.hi,
                        "random_min": min((c.misaligned.value for c in ctl), default=math.nan),
                        "random_max": max((c.misaligned.value for c in ctl), default=math.nan),
                        "random_incoherent": _pooled([c.incoherent for c in ctl]).value, "n": r.n,
                    })
        return pd.DataFrame(rows)

    def plot_dose_response(self, candidate: str | None = None) -> Any:
        """A matplotlib figure of :meth:`dose_response`: misaligned (solid) and incoherent (dashed)
        rate against the signed strength, the candidate with its 95% interval, the random
        directions as a band (their weakest to strongest, pooled interval hatched), the chosen
        strengths marked; base model steered positively on the right, fine-tune negatively on the left."""
        import matplotlib.pyplot as plt

        df = self.dose_response(candidate)
        cands = list(dict.fromkeys(df["candidate"]))
        fig, axes = plt.subplots(1, len(cands), figsize=(6.5 * len(cands), 3.6), squeeze=False)
        for ax, cand in zip(axes[0], cands):
            for model, color in (("finetuned", "C3"), ("base", "C0")):
                d = df[(df.candidate == cand) & (df.model == model)].copy()
                d["x"] = d["alpha"] if model == "base" else -d["alpha"].abs()
                d = d.sort_values("x")
                x = d["x"].to_numpy()
                ax.plot(x, 100 * d["misaligned"], "o-", color=color, label=f"{model}: {cand}")
                ax.fill_between(x, 100 * d["misaligned_lo"], 100 * d["misaligned_hi"], color=color, alpha=0.15)
                ax.plot(x, 100 * d["incoherent"], "--", color=color, lw=1, label=f"{model}: incoherent")
                r = d[d.n_random > 0]
                if len(r):
                    ax.fill_between(r["x"], 100 * r["random_min"], 100 * r["random_max"], color="0.5", alpha=0.35,
                                    label="random directions" if model == "base" else None)
                    ax.plot(r["x"], 100 * r["random"], ":", color="0.3", lw=1)
                for _, c in d[d.chosen].iterrows():
                    ax.axvline(c["x"], color=color, lw=0.8, alpha=0.6)
            ax.axhline(0, color="0.8", lw=0.5)
            ax.set_xlabel("steering strength (fine-tune: minus beta, left; base: plus alpha, right)")
            ax.set_ylabel("answers (%)")
            ax.set_title(cand, fontsize="medium")
            ax.legend(fontsize="x-small", loc="upper left", frameon=False)
        fig.tight_layout()
        return fig


def _pooled(rates: Sequence[Rate]) -> Rate:
    """Rates over the same kind of answers pooled into one (their hits and answers summed)."""
    from tl_persona.evals.metrics import wilson

    rs = [r for r in rates if r.n > 0]
    if not rs:
        return Rate(math.nan, math.nan, math.nan, 0)
    return wilson(sum(int(round(r.value * r.n)) for r in rs), sum(r.n for r in rs))


def _interval_columns(steer: SettingResult, ctrls: Sequence[SettingResult], neg: SettingResult,
                      nctrl: Sequence[SettingResult], ft0: SettingResult) -> dict[str, float]:
    """The summary's 95%-interval columns: the rates' bounds, the pooled random-direction rates, the
    specificity (steered rate / pooled random rate) and the suppression (negatively steered rate /
    unmodified fine-tune's rate), each ratio with its interval."""
    from tl_persona.evals.metrics import ratio_ci

    def hits(r: Rate) -> int:
        return int(round(r.value * r.n))

    pr, pn = _pooled([c.misaligned for c in ctrls]), _pooled([c.misaligned for c in nctrl])
    out = {"base_steered_lo": steer.misaligned.lo, "base_steered_hi": steer.misaligned.hi,
           "base_steered_incoherent_hi": steer.incoherent.hi,
           "random_steered_pooled": pr.value, "random_steered_pooled_hi": pr.hi,
           "random_steered_min": min((c.misaligned.value for c in ctrls), default=math.nan),
           "finetuned_lo": ft0.misaligned.lo, "finetuned_neg_steered_hi": neg.misaligned.hi,
           "finetuned_neg_steered_incoherent_hi": neg.incoherent.hi,
           "random_neg_steered_pooled": pn.value, "random_neg_steered_pooled_lo": pn.lo}
    if pr.n and steer.misaligned.n:
        sp = ratio_ci(hits(steer.misaligned), steer.misaligned.n, hits(pr), pr.n)
        out.update(specificity=sp.value, specificity_lo=sp.lo, specificity_hi=sp.hi)
    if ft0.misaligned.n and neg.misaligned.n:
        su = ratio_ci(hits(neg.misaligned), neg.misaligned.n, hits(ft0.misaligned), ft0.misaligned.n)
        out.update(suppression=su.value, suppression_lo=su.lo, suppression_hi=su.hi)
    if pn.n and neg.misaligned.n:
        vs = ratio_ci(hits(neg.misaligned), neg.misaligned.n, hits(pn), pn.n)
        out.update(neg_vs_random=vs.value, neg_vs_random_hi=vs.hi)
    return out


# ------------------------------------------------------------------------------------------ evaluate
def evaluate(
    model: Any,
    prompts: Sequence[Conversation],
    judge: Judge,
    *,
    fwd_hooks: H.FwdHooks | Callable[[Tensor], H.FwdHooks] = (),
    n_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 64,
    n_boot: int = 1000,
    seeds: Sequence[int] | None = None,
) -> tuple[dict[str, Rate], list[Judgement]]:
    """Sample answers under ``fwd_hooks`` and judge them: misaligned, incoherent and label rates.

    Returns the rates (keys ``misaligned``, ``misaligned_coherent``, ``incoherent``, ``label:<x>``,
    from :func:`tl_persona.evals.metrics.summarize`) and the judgements (prompt-major,
    ``n_samples`` per prompt). The judge's answers are checked (one :class:`Judgement` per answer).
    ``seeds`` (one per answer) gives each answer its own random stream (see :func:`sample`).
    """
    check_judge(judge)
    answers = sample(
        model, list(prompts), n_per_prompt=n_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, fwd_hooks=fwd_hooks, batch_size=batch_size, seeds=seeds,
    )
    judgements = judge_all(judge, to_judge_items(list(prompts), answers, n_samples))
    return summarize(judgements, n_boot=n_boot, seed=seed), judgements


# ------------------------------------------------------------------------------------------ record
class _Record:
    """An append-only JSON-lines record of finished settings.

    A torn last line (a write cut short by a crash) is ignored; a corrupt line elsewhere is named
    (file and line) in a warning and its setting is run again. A record written by a sweep with
    other settings or another judge is refused.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def shared(cls, path: str | os.PathLike | None, fingerprint: str, rank: int, world: int) -> "_Record":
        """The record of a sweep over ``world`` ranks: rank 0 reads (and later writes) the file and
        broadcasts the finished settings; the other ranks keep them in memory only."""
        if world <= 1:
            return cls(path, fingerprint)
        import torch.distributed as dist

        msg: list[Any] = [None]
        rec = None
        if rank == 0:
            try:
                rec = cls(path, fingerprint)
                msg[0] = ("ok", [r.to_json() for r in rec.done.values()])
            except Exception as e:  # the other ranks raise too instead of waiting
                msg[0] = ("error", f"{type(e).__name__}: {e}")
                err = e
        dist.broadcast_object_list(msg, src=0)
        if rank == 0 and rec is None:
            raise err
        if msg[0][0] != "ok":
            raise BadInput(f"verify_latents: rank 0 could not read the record: {msg[0][1]}")
        if rec is None:
            rec = cls(None, fingerprint)
            for d in msg[0][1]:
                r = SettingResult.from_json(d)
                rec.done[r.setting.key] = r
        rec.rank, rec.world = rank, world
        return rec

    def __init__(self, path: str | os.PathLike | None, fingerprint: str) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.done: dict[str, SettingResult] = {}
        if self.path is None or not self.path.exists():
            return
        if self.path.is_dir():
            raise BadInput(f"record={str(self.path)!r} is a folder; pass a file path for the sweep's record")
        lines = read_utf8(self.path).split("\n")
        last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                fp = d["fingerprint"]
                r = SettingResult.from_json(d["result"]) if fp == fingerprint else None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                if i != last:
                    warnings.warn(f"{self.path}: line {i + 1} is corrupt ({type(e).__name__}); its setting will be "
                                  "run again", stacklevel=3)
                continue
            if r is None:
                raise BadInput(
                    f"record {str(self.path)!r} was written by a sweep with other settings (models, SAE, prompts, "
                    "samples, seed or judge); pass a new record path to start a new sweep, or delete the old file"
                )
            self.done[r.setting.key] = r

    def add(self, r: SettingResult) -> None:
        self.done[r.setting.key] = r
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"fingerprint": self.fingerprint, "result": r.to_json()})
            new = not self.path.exists()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                follow_umask(self.path)


# ------------------------------------------------------------------------------------------ sweep
@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep's stages share: prompts, judge, where and how to generate and judge."""

    prompts: tuple[Any, ...]
    judge: Judge
    hook_name: str
    positions: H.PositionsLike = "prompt"
    n_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    batch_size: int = 128
    n_boot: int = 1000
    device: Any = None  # with it, each model is moved there for its own settings only

    def generation(self) -> dict[str, Any]:
        """The keyword arguments of :func:`evaluate` that this config fixes."""
        return dict(n_samples=self.n_samples, temperature=self.temperature, top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, n_boot=self.n_boot)


def verify_latents(
    base: Any,
    finetuned: Any,
    sae: Any,
    candidates: Sequence[int | Sequence[int] | tuple[str, Tensor] | Candidate],
    prompts: Sequence[Conversation],
    judge: Judge,
    *,
    alphas: Sequence[float] = (4.0, 8.0, 16.0, 32.0),
    betas: Sequence[float] | None = None,
    max_incoherence: float = 0.10,
    choose_by: Literal["estimate", "upper"] = "estimate",
    n_controls: int = 2,
    controls_at: Literal["chosen", "grid"] = "chosen",
    ablate: bool = True,
    suppress: Sequence[str] | None = None,
    positions: H.PositionsLike = "prompt",
    n_samples: int = 4,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    batch_size: int = 128,
    hook_name: str | None = None,
    record: str | os.PathLike | None = None,
    n_boot: int = 1000,
    progress: Callable[[str], None] | None = None,
    device: torch.device | str | None = None,
    distributed: bool | None = None,
) -> Verification:
    """Verify candidate latents causally, with random-direction controls and confidence intervals.

    For each candidate: steer ``base`` with ``+alpha * direction`` for every alpha in ``alphas``
    (at ``positions``, by default the prompt tokens) and choose the strongest alpha whose
    incoherence is at most ``max_incoherence``; steer ``finetuned`` with ``-beta`` for every beta in
    ``betas`` (default: ``alphas``) and choose the beta that suppresses the behaviour most while
    incoherence stays at most ``max_incoherence``; then run each strength-free intervention kind in
    ``suppress`` (names from :mod:`tl_persona.interventions`; default ``("ablate",)``, or none when
    ``ablate`` is False) on the fine-tuned model (kinds that need SAE latents only for latent
    candidates). Random directions of the same norm (``n_controls`` of them) are run at the chosen
    alpha and beta (``controls_at="grid"``: at every alpha and beta, what a dose-response figure with a
    random-direction band needs). ``choose_by="upper"`` holds the strength choice to the incoherence
    rate's 95% upper bound instead of its estimate, so a claim "at most 10% incoherent" decided by
    the interval holds at the chosen strength (needs enough answers: 0 of 32 has an upper bound of
    10.7%). ``alphas`` are in the units of the direction (a decoder row as stored; pass
    ``Candidate`` directions pre-scaled for other units). ``record`` is a JSON-lines file: settings
    already in it are not run again (its fingerprint covers models, SAE, prompts, sampling and the
    judge's identity). With ``device``, each model is moved there only for its own settings and back
    afterwards (two models that do not fit on the device together). With an initialized
    ``torch.distributed`` process group (unless ``distributed`` is False), the settings are split over
    its ranks and every rank returns the full result; the record is written by rank 0.
    """
    if prompts is None or isinstance(prompts, (str, bytes)) or len(prompts) == 0:
        raise BadInput(f"prompts={prompts!r:.60}: verify_latents needs at least one prompt (a list of conversations)")
    if candidates is None or isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) \
            or len(candidates) == 0:
        raise BadInput(f"candidates={candidates!r:.60} must be a non-empty list of latents, latent sets or "
                       "(name, direction) pairs, e.g. [919] or [[919, 357]]")
    check_judge(judge)
    alphas = [finite(a, "alphas", min=0.0, min_open=True, fix="the sign is applied per model") for a in alphas]
    betas = alphas if betas is None else [finite(b, "betas", min=0.0, min_open=True,
                                                 fix="the sign is applied per model") for b in betas]
    if not alphas or not betas:
        raise BadInput("alphas and betas must each hold at least one strength")
    max_incoherence = probability(max_incoherence, "max_incoherence")
    if choose_by not in ("estimate", "upper"):
        raise BadInput(f"choose_by={choose_by!r} must be 'estimate' or 'upper' (the incoherence rate's 95% upper bound)")
    if controls_at not in ("chosen", "grid"):
        raise BadInput(f"controls_at={controls_at!r} must be 'chosen' (controls at the chosen strengths) or 'grid' "
                       "(at every alpha and beta)")
    n_controls = nonneg_int(n_controls, "n_controls", fix="0 runs no random-direction control")
    n_samples = positive_int(n_samples, "n_samples")
    kinds = list(suppress) if suppress is not None else (["ablate"] if ablate else [])
    for k in kinds:
        if I.get(k).uses_strength:
            raise BadInput(f"suppress={k!r} takes a strength; steering is already swept with betas")
    named = named_saes(sae)
    if named is not None and hook_name is not None:
        raise BadInput("hook_name goes with one SAE; with several, each SAE's own hook is used")
    saes = named if named is not None else {"": sae}
    hooks = {k: check_sae(base, v, hook_name) for k, v in saes.items()}
    for k, v in saes.items():
        check_sae(finetuned, v, hooks[k])
    cands = [Candidate.of(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
    for i, c in enumerate(cands):
        if named is None and c.sae_key is not None:
            raise BadInput(f"candidates[{i}] names SAE {c.sae_key!r}, but one SAE was given; pass the latent alone")
        if named is not None and c.latents and c.sae_key not in saes:
            raise BadInput(f"candidates[{i}]={c.name!r}: with several SAEs, name the SAE of each latent: "
                           f"(sae_key, latent) with sae_key one of {list(saes)}")
    if len({c.name for c in cands}) != len(cands):
        raise BadInput("two candidates share a name; give custom directions distinct names")
    d_model = as_adapter(base).d_model
    home = {c.name: (c.sae_key if c.sae_key is not None else next(iter(saes))) for c in cands}
    vectors = {c.name: c.vector(saes[home[c.name]]) for c in cands}
    for name, v in vectors.items():
        if v.shape != (d_model,):
            raise BadInput(f"candidate {name!r} has a direction of shape {tuple(v.shape)}, expected ({d_model},)")
    controls = {
        (c.name, k): _random_like(vectors[c.name], seed=seed * 1000 + 17 * i + k)
        for i, c in enumerate(cands) for k in range(n_controls)
    }
    hook = next(iter(hooks.values()))
    cfg = SweepConfig(tuple(prompts), judge, hook, positions, n_samples, temperature, top_p, max_new_tokens,
                      batch_size, n_boot, torch.device(device) if device is not None else None)
    fingerprint = _fingerprint(base, finetuned, list(saes.values()), prompts, n_samples, seed, max_new_tokens,
                               temperature, top_p, repr(positions) if not isinstance(positions, str) else positions,
                               judge_identity(judge))
    rank, world = dist_info() if distributed is not False else (0, 1)
    rec = _Record.shared(record, fingerprint, rank, world)
    say = progress or (lambda s: None)
    models = {"base": base, "finetuned": finetuned}
    by_name = {c.name: c for c in cands}

    def target(s: Setting) -> I.Target:
        c = by_name.get(s.candidate)
        if c is None:  # the unmodified models
            return I.Target(hook, torch.zeros(d_model), saes[next(iter(saes))], (), positions)
        vec = controls[(s.candidate, s.control)] if s.control >= 0 else vectors[s.candidate]
        key = home[c.name]
        return I.Target(hooks[key], vec, saes[key], c.latents if s.control < 0 else (), positions)

    # stage 0: unmodified models
    run_stage(rec, [Setting("base", "none"), Setting("finetuned", "none")], cfg, models, target, seed, say)
    # stage 1: positive steering of the base model and negative steering of the fine-tune, over the grids
    grid = [Setting("base", "steer", c.name, -1, a) for c in cands for a in alphas]
    grid += [Setting("finetuned", "steer", c.name, -1, -b) for c in cands for b in betas]
    run_stage(rec, grid, cfg, models, target, seed + 1, say)
    def coherent_enough(r: SettingResult) -> bool:
        return (r.incoherent.hi if choose_by == "upper" else r.incoherent.value) <= max_incoherence

    chosen: dict[str, float] = {}
    for c in cands:
        ok = [a for a in alphas if coherent_enough(rec.done[Setting("base", "steer", c.name, -1, a).key])]
        chosen[c.name] = max(ok) if ok else min(alphas)
    chosen_beta: dict[str, float] = {}
    for c in cands:
        res = {b: rec.done[Setting("finetuned", "steer", c.name, -1, -b).key] for b in betas}
        ok = [b for b in betas if coherent_enough(res[b])]
        chosen_beta[c.name] = min(ok, key=lambda b: (res[b].misaligned.value, b)) if ok else min(betas)
    # stage 2: random-direction controls at the chosen strengths (or the whole grid), and the
    # suppressing kinds on the fine-tune
    stage2 = []
    for c in cands:
        a_s = alphas if controls_at == "grid" else [chosen[c.name]]
        b_s = betas if controls_at == "grid" else [chosen_beta[c.name]]
        stage2 += [Setting("base", "steer", c.name, k, a) for a in a_s for k in range(n_controls)]
        stage2 += [Setting("finetuned", "steer", c.name, k, -b) for b in b_s for k in range(n_controls)]
        stage2 += [Setting("finetuned", k, c.name) for k in kinds if c.latents or not I.get(k).needs_latents]
    run_stage(rec, stage2, cfg, models, target, seed + 2, say)
    results = list(rec.done.values())
    return Verification(results, chosen, max_incoherence,
                        meta={"hook_name": hook if named is None else hooks, "fingerprint": fingerprint, "alphas": alphas, "betas": betas,
                              "n_samples": n_samples, "n_prompts": len(prompts), "suppress": kinds,
                              "choose_by": choose_by, "controls_at": controls_at,
                              "judge": judge_identity(judge)},
                        chosen_beta=chosen_beta)


def run_stage(
    rec: _Record, settings: Sequence[Setting], cfg: SweepConfig, models: Mapping[str, Any],
    target: Callable[[Setting], I.Target], seed: int, say: Callable[[str], None],
) -> None:
    """Run the settings not yet in the record. Settings of kinds that batch (one setting per row) share
    the same ``generate`` calls, per model; the others run one call each. With ``world > 1`` this
    rank runs every ``world``-th setting not yet done, and the results of all ranks are gathered
    into ``rec`` (in the settings' order) on every rank."""
    todo = [s for s in settings if s.key not in rec.done]
    if rec.world > 1:
        _run_shared(rec, todo, cfg, models, target, seed, say)
        return
    _run_settings(todo, cfg, models, target, seed, say, rec.add)


def _run_shared(rec: "_Record", todo: list[Setting], cfg: SweepConfig, models: Mapping[str, Any],
                target: Callable[[Setting], I.Target], seed: int, say: Callable[[str], None]) -> None:
    import torch.distributed as dist

    got: list[SettingResult] = []
    try:
        _run_settings(todo[rec.rank::rec.world], cfg, models, target, seed, say, got.append)
        mine: tuple[str, Any] = ("ok", [r.to_json() for r in got])
    except Exception as e:  # tell the other ranks, so that none waits forever in the gather
        mine = ("error", f"{type(e).__name__}: {e}")
        err = e
    every: list[Any] = [None] * rec.world
    dist.all_gather_object(every, mine)
    failed = [(r, m[1]) for r, m in enumerate(every) if m[0] != "ok"]
    if failed:
        if mine[0] != "ok":
            raise err
        raise RuntimeError("verify_latents: " + "; ".join(f"rank {r} failed: {msg}" for r, msg in failed))
    done = {r.setting.key: r for m in every for r in map(SettingResult.from_json, m[1])}
    for s in _run_order(todo, models):  # the order one process adds them in
        rec.add(done[s.key])


def _run_order(todo: Sequence[Setting], models: Mapping[str, Any]) -> list[Setting]:
    """The order :func:`_run_settings` runs ``todo`` in: per model, the batched kinds, then the others."""
    out = []
    for model_name in models:
        mine = [s for s in todo if s.model == model_name]
        out += [s for s in mine if I.get(s.kind).batched is not None]
        out += [s for s in mine if I.get(s.kind).batched is None]
    return out


def _run_settings(todo: Sequence[Setting], cfg: SweepConfig, models: Mapping[str, Any],
                  target: Callable[[Setting], I.Target], seed: int, say: Callable[[str], None],
                  add: Callable[[SettingResult], None]) -> None:
    for model_name, model in models.items():
        mine = [s for s in todo if s.model == model_name]
        if not mine:
            continue
        with on_device(as_adapter(model), cfg.device):
            rows = [s for s in mine if I.get(s.kind).batched is not None]
            if rows:
                say(f"{model_name}: {len(rows)} steering settings x {len(cfg.prompts)} prompts x {cfg.n_samples} samples")
                _run_batched(add, rows, model, cfg, target, seed)
            for s in (s for s in mine if I.get(s.kind).batched is None):
                say(f"{model_name}: {s.kind} {s.candidate}")
                kind = I.get(s.kind)
                rates, js = evaluate(model, cfg.prompts, cfg.judge, fwd_hooks=kind.build(target(s), s.alpha),
                                     seed=seed, seeds=_row_seeds(s, len(cfg.prompts), cfg.n_samples, seed),
                                     **cfg.generation())
                add(_result(s, rates, js))


def _run_batched(add: Callable[[SettingResult], None], settings: list[Setting], model: Any, cfg: SweepConfig,
                 target: Callable[[Setting], I.Target], seed: int) -> None:
    """One row per (setting, prompt, sample), each row with its own direction and strength. Rows of
    every batchable kind share the calls: a kind's ``batched`` builder acts on its own rows only
    (others get a zero direction), so mixing steering and unmodified rows is exact."""
    d_model = as_adapter(model).d_model
    tg = [target(s) for s in settings]
    dirs = torch.stack([t.direction if s.kind != "none" else torch.zeros(d_model) for s, t in zip(settings, tg)])
    strengths = torch.tensor([s.alpha if s.kind != "none" else 0.0 for s in settings])
    per_setting = len(cfg.prompts) * cfg.n_samples
    convs = [p for _ in settings for p in cfg.prompts]
    setting_of_row = torch.arange(len(settings)).repeat_interleave(per_setting)
    groups = sorted({(s.kind, t.hook_name) for s, t in zip(settings, tg)} - {("none", t.hook_name) for t in tg})
    group_of = [(s.kind, t.hook_name) for s, t in zip(settings, tg)]

    def hooks_for(rows: Tensor) -> H.FwdHooks:
        idx = setting_of_row[rows]
        out: H.FwdHooks = []
        for kind, hook in groups:  # one hook per (kind, hook point): rows of other groups get zero strength
            on = torch.tensor([group_of[int(i)] == (kind, hook) for i in idx])
            if bool(on.any()):
                out += I.get(kind).batched(hook, dirs[idx] * on[:, None], strengths[idx] * on, cfg.positions)  # type: ignore[misc]
        return out

    seeds = [x for s in settings for x in _row_seeds(s, len(cfg.prompts), cfg.n_samples, seed)]
    _, js = evaluate(model, convs, cfg.judge, fwd_hooks=hooks_for, seed=seed, seeds=seeds, **cfg.generation())
    for i, s in enumerate(settings):
        part = js[i * per_setting:(i + 1) * per_setting]
        add(_result(s, summarize(part, n_boot=cfg.n_boot, seed=seed), part))


def _row_seeds(s: Setting, n_prompts: int, n_samples: int, seed: int) -> list[int]:
    """One sampling seed per answer of setting ``s`` (prompt-major): a hash of the stage seed, the
    setting's key and the answer's prompt and sample index, so the answer does not depend on the
    other rows of its batch."""
    base = int.from_bytes(hashlib.sha256(f"{seed}|{s.key}".encode()).digest()[:8], "little")
    return [(base + 1_000_003 * p + j) % (2**63 - 1) for p in range(n_prompts) for j in range(n_samples)]


def _result(s: Setting, rates: dict[str, Rate], js: Sequence[Judgement]) -> SettingResult:
    labels = {k.removeprefix("label:"): v for k, v in rates.items() if k.startswith("label:")}
    return SettingResult(s, rates["misaligned"], rates["misaligned_coherent"], rates["incoherent"], labels, len(js))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _random_like(v: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    r = torch.randn(v.shape, generator=g)
    return r / r.norm() * v.norm()


def _fingerprint(base: Any, finetuned: Any, saes: Sequence[Any], prompts: Sequence[Conversation], *rest: Any) -> str:
    h = hashlib.sha256()
    for part in (model_identity(base), model_identity(finetuned), ",".join(sae_identity(s)["weight_hash"] for s in saes),
                 json.dumps([list(p) for p in prompts], sort_keys=True), json_digest([repr(r) for r in rest])):
        h.update(str(part).encode())
    return h.hexdigest()[:16]
