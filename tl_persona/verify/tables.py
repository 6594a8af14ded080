"""The result of a sweep, :class:`Verification`, and its tables: every setting, one row per
candidate (the summary) and the dose-response data.

Every column name derives from the registry: the induce kind's column word (``steered``) names the
steering columns, each suppressing kind's word (``ablated``, ``capped``) its own columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from tl_persona import interventions as I
from tl_persona.evals.metrics import Rate, ratio_ci, wilson
from tl_persona.verify.cells import Setting, SettingResult

__all__ = ["Verification", "pooled"]


@dataclass
class Verification:
    """The results of :func:`~tl_persona.verify.verify_latents`: every setting's rates and the
    strengths chosen for each candidate (``chosen_alpha`` on the base model, ``chosen_beta`` for
    negative steering of the fine-tune, ``chosen_strength[kind]`` for each suppressing kind that
    takes a strength); ``induce`` is the kind the sweep steers with."""

    results: list[SettingResult]
    chosen_alpha: dict[str, float]
    max_incoherence: float
    meta: dict[str, Any] = field(default_factory=dict)
    chosen_beta: dict[str, float] = field(default_factory=dict)
    chosen_strength: dict[str, dict[str, float]] = field(default_factory=dict)
    induce: str = I.STEERING.name

    # ------------------------------------------------------------------ one setting
    def chosen(self, model: str, kind: str, candidate: str) -> float:
        """The signed strength a candidate's setting runs at when none is named: its chosen alpha
        on the base model, minus its chosen beta for the induce kind on the fine-tune, the kind's
        chosen strength for another kind that takes one, else 0."""
        if model == "base":
            return self.chosen_alpha.get(candidate, 0.0)
        if kind == self.induce:
            return -self.chosen_beta.get(candidate, 0.0)
        return self.chosen_strength.get(kind, {}).get(candidate, 0.0)

    def get(self, model: str, kind: str, candidate: str = "", control: int = -1, alpha: float | None = None) -> SettingResult:
        """The result of one setting (``alpha=None``: at the chosen strength, see :meth:`chosen`)."""
        if alpha is None:
            alpha = self.chosen(model, kind, candidate)
        key = Setting(model, kind, candidate, control, float(alpha)).key  # type: ignore[arg-type]
        for r in self.results:
            if r.setting.key == key:
                return r
        raise KeyError(f"no result for setting {key!r}")

    def unmodified(self, model: str) -> SettingResult:
        """The model as it is (``"base"`` or ``"finetuned"``)."""
        return self.get(model, I.UNMODIFIED.name, alpha=0.0)

    def induced(self, candidate: str) -> SettingResult:
        """The base model steered along the candidate at its chosen alpha."""
        return self.get("base", self.induce, candidate)

    def suppressed(self, candidate: str, kind: str | None = None) -> SettingResult:
        """The fine-tune under ``kind`` (default: negative steering) at its chosen strength."""
        return self.get("finetuned", kind or self.induce, candidate)

    def controls(self, model: str, candidate: str, kind: str | None = None, alpha: float | None = None) -> list[SettingResult]:
        """The candidate's random-direction controls on ``model`` under ``kind`` (default: the induce
        kind) at strength ``alpha`` (default: the chosen one)."""
        kind = kind or self.induce
        alpha = self.chosen(model, kind, candidate) if alpha is None else alpha
        return [r for r in self.results if r.setting.model == model and r.setting.kind == kind
                and r.setting.candidate == candidate and r.setting.control >= 0 and r.setting.alpha == alpha]

    # ------------------------------------------------------------------ tables
    def table(self) -> Any:
        """All settings as a pandas DataFrame, one row each."""
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in self.results])

    def summary(self) -> Any:
        """One row per candidate: base steered at the chosen alpha vs random controls, and the
        fine-tuned model steered negatively and under each suppressing kind, against its unmodified rate.

        Random controls appear as their mean (the pooled control rate: every direction has the same
        number of answers) and their extreme (``random_steered_max``, ``random_neg_steered_min``);
        the extreme grows with ``n_controls`` by chance alone, the mean does not."""
        import pandas as pd

        return pd.DataFrame([self._summary_row(cand, a) for cand, a in self.chosen_alpha.items()])

    def _summary_row(self, cand: str, a: float) -> dict[str, Any]:
        col = I.get(self.induce).column
        base0, ft0 = self.unmodified("base"), self.unmodified("finetuned")
        steer, ctrls = self.induced(cand), self.controls("base", cand)
        neg, nctrl = self.suppressed(cand), self.controls("finetuned", cand)
        row = {
            "candidate": cand, "alpha": a, "beta": self.chosen_beta.get(cand, a),
            "base": base0.misaligned.value, f"base_{col}": steer.misaligned.value,
            f"base_{col}_incoherent": steer.incoherent.value,
            f"random_{col}_mean": _mean([c.misaligned.value for c in ctrls]),
            f"random_{col}_max": max((c.misaligned.value for c in ctrls), default=math.nan),
            "finetuned": ft0.misaligned.value, f"finetuned_neg_{col}": neg.misaligned.value,
            f"finetuned_neg_{col}_incoherent": neg.incoherent.value,
            f"random_neg_{col}_mean": _mean([c.misaligned.value for c in nctrl]),
            f"random_neg_{col}_min": min((c.misaligned.value for c in nctrl), default=math.nan),
        }
        row.update(_interval_columns(col, steer, ctrls, neg, nctrl, ft0))
        for kind in I.names(uses_strength=False):
            if kind != I.UNMODIFIED.name and (r := self._find("finetuned", kind, cand, 0.0)) is not None:
                row.update(_suppression_columns(I.get(kind).column, r, ft0))
        for kind in I.names(uses_strength=True):
            if cand in self.chosen_strength.get(kind, {}):
                row.update(self._strength_columns(kind, cand, ft0))
        return row

    def _find(self, model: str, kind: str, cand: str, alpha: float) -> SettingResult | None:
        try:
            return self.get(model, kind, cand, alpha=alpha)
        except KeyError:
            return None

    def _strength_columns(self, kind: str, cand: str, ft0: SettingResult) -> dict[str, float]:
        """A suppressing kind with a strength: its chosen strength, rate with interval, incoherence,
        the cut against the unmodified fine-tune and against its random-direction controls."""
        col, r = I.get(kind).column, self.suppressed(cand, kind)
        out = {f"{col}_strength": self.chosen_strength[kind][cand], f"finetuned_{col}_lo": r.misaligned.lo,
               f"finetuned_{col}_hi": r.misaligned.hi, **_suppression_columns(col, r, ft0)}
        if ft0.misaligned.n and r.misaligned.n:
            out[f"{col}_suppression_lo"] = ratio_ci(_hits(r.misaligned), r.misaligned.n, _hits(ft0.misaligned),
                                                    ft0.misaligned.n).lo
        pr = pooled([c.misaligned for c in self.controls("finetuned", cand, kind)])
        out[f"random_{col}_pooled"], out[f"random_{col}_pooled_lo"] = pr.value, pr.lo
        if pr.n and r.misaligned.n:
            vs = ratio_ci(_hits(r.misaligned), r.misaligned.n, _hits(pr), pr.n)
            out[f"{col}_vs_random"], out[f"{col}_vs_random_hi"] = vs.value, vs.hi
        return out

    def dose_response(self, candidate: str | None = None) -> Any:
        """The dose-response data: for every candidate (or one), every strength run on each model
        (``alpha`` signed: ``+`` on the base model, ``-`` on the fine-tuned one), the candidate's
        misaligned and incoherent rates with their 95% intervals, and the random directions at the
        same strength pooled (``random``, ``random_lo``, ``random_hi``: all their answers together)
        with their spread (``random_min``, ``random_max``: the weakest and strongest direction).
        One row per (candidate, model, alpha); the unmodified model is the row at alpha 0."""
        import pandas as pd

        names = [candidate] if candidate is not None else list(self.chosen_alpha)
        rows = []
        for cand in names:
            if cand not in self.chosen_alpha:
                raise KeyError(f"no candidate {cand!r}; the candidates are {list(self.chosen_alpha)}")
            for model in ("base", "finetuned"):
                rows += self._dose_rows(cand, model)
        return pd.DataFrame(rows)

    def _dose_rows(self, cand: str, model: str) -> list[dict[str, Any]]:
        own = {r.setting.alpha: r for r in self.results if r.setting.model == model
               and r.setting.kind == self.induce and r.setting.candidate == cand and r.setting.control < 0}
        own[0.0] = self.unmodified(model)
        rows = []
        for a in sorted(own, key=abs):
            r, ctl = own[a], self.controls(model, cand, alpha=a)
            pr = pooled([c.misaligned for c in ctl])
            rows.append({
                "candidate": cand, "model": model, "alpha": a, "chosen": a == self.chosen(model, self.induce, cand),
                "misaligned": r.misaligned.value, "misaligned_lo": r.misaligned.lo, "misaligned_hi": r.misaligned.hi,
                "incoherent": r.incoherent.value, "incoherent_lo": r.incoherent.lo, "incoherent_hi": r.incoherent.hi,
                "n_random": len(ctl), "random": pr.value, "random_lo": pr.lo, "random_hi": pr.hi,
                "random_min": min((c.misaligned.value for c in ctl), default=math.nan),
                "random_max": max((c.misaligned.value for c in ctl), default=math.nan),
                "random_incoherent": pooled([c.incoherent for c in ctl]).value, "n": r.n,
            })
        return rows

    def plot_dose_response(self, candidate: str | None = None) -> Any:
        """A matplotlib figure of :meth:`dose_response` (see :func:`tl_persona.verify.plots.plot_dose_response`)."""
        from tl_persona.verify.plots import plot_dose_response

        return plot_dose_response(self.dose_response(candidate))


def pooled(rates: Sequence[Rate]) -> Rate:
    """Rates over the same kind of answers pooled into one (their hits and answers summed)."""
    rs = [r for r in rates if r.n > 0]
    if not rs:
        return Rate(math.nan, math.nan, math.nan, 0)
    return wilson(sum(_hits(r) for r in rs), sum(r.n for r in rs))


def _hits(r: Rate) -> int:
    return int(round(r.value * r.n))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _suppression_columns(col: str, r: SettingResult, ft0: SettingResult) -> dict[str, float]:
    """A suppressing kind's rate and incoherence on the fine-tune, and its ratio to the unmodified rate."""
    out = {f"finetuned_{col}": r.misaligned.value, f"finetuned_{col}_incoherent": r.incoherent.value,
           f"finetuned_{col}_incoherent_hi": r.incoherent.hi}
    if ft0.misaligned.n and r.misaligned.n:
        q = ratio_ci(_hits(r.misaligned), r.misaligned.n, _hits(ft0.misaligned), ft0.misaligned.n)
        out[f"{col}_suppression"], out[f"{col}_suppression_hi"] = q.value, q.hi
    return out


def _interval_columns(col: str, steer: SettingResult, ctrls: Sequence[SettingResult], neg: SettingResult,
                      nctrl: Sequence[SettingResult], ft0: SettingResult) -> dict[str, float]:
    """The summary's 95%-interval columns: the rates' bounds, the pooled random-direction rates, the
    specificity (steered rate / pooled random rate) and the suppression (negatively steered rate /
    unmodified fine-tune's rate), each ratio with its interval."""
    pr, pn = pooled([c.misaligned for c in ctrls]), pooled([c.misaligned for c in nctrl])
    out = {f"base_{col}_lo": steer.misaligned.lo, f"base_{col}_hi": steer.misaligned.hi,
           f"base_{col}_incoherent_hi": steer.incoherent.hi,
           f"random_{col}_pooled": pr.value, f"random_{col}_pooled_hi": pr.hi,
           f"random_{col}_min": min((c.misaligned.value for c in ctrls), default=math.nan),
           "finetuned_lo": ft0.misaligned.lo, f"finetuned_neg_{col}_hi": neg.misaligned.hi,
           f"finetuned_neg_{col}_incoherent_hi": neg.incoherent.hi,
           f"random_neg_{col}_pooled": pn.value, f"random_neg_{col}_pooled_lo": pn.lo}
    if pr.n and steer.misaligned.n:
        sp = ratio_ci(_hits(steer.misaligned), steer.misaligned.n, _hits(pr), pr.n)
        out.update(specificity=sp.value, specificity_lo=sp.lo, specificity_hi=sp.hi)
    if ft0.misaligned.n and neg.misaligned.n:
        su = ratio_ci(_hits(neg.misaligned), neg.misaligned.n, _hits(ft0.misaligned), ft0.misaligned.n)
        out.update(suppression=su.value, suppression_lo=su.lo, suppression_hi=su.hi)
    if pn.n and neg.misaligned.n:
        vs = ratio_ci(_hits(neg.misaligned), neg.misaligned.n, _hits(pn), pn.n)
        out.update(neg_vs_random=vs.value, neg_vs_random_hi=vs.hi)
    return out
