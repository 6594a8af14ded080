"""The dose-response figure of a sweep."""

from __future__ import annotations

from typing import Any

__all__ = ["plot_dose_response"]


def plot_dose_response(df: Any) -> Any:
    """A matplotlib figure of :meth:`Verification.dose_response` data (``df``), one panel per
    candidate: misaligned (solid) and incoherent (dashed) rate against the signed strength, the
    candidate with its 95% interval, the random directions as a band (their weakest to strongest),
    the chosen strengths marked; base model steered positively on the right, fine-tune negatively on
    the left."""
    import matplotlib.pyplot as plt

    cands = list(dict.fromkeys(df["candidate"]))
    fig, axes = plt.subplots(1, len(cands), figsize=(6.5 * len(cands), 3.6), squeeze=False)
    for ax, cand in zip(axes[0], cands):
        for model, color in (("finetuned", "C3"), ("base", "C0")):
            _curve(ax, df[(df.candidate == cand) & (df.model == model)].copy(), model, cand, color)
        ax.axhline(0, color="0.8", lw=0.5)
        ax.set_xlabel("steering strength (fine-tune: minus beta, left; base: plus alpha, right)")
        ax.set_ylabel("answers (%)")
        ax.set_title(cand, fontsize="medium")
        ax.legend(fontsize="x-small", loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def _curve(ax: Any, d: Any, model: str, cand: str, color: str) -> None:
    """One model's curve: the candidate's rates with intervals, the random band, the chosen strength."""
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
