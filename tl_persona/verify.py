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
(one steering setting per batch row). The record on disk is resumable: a re-run skips settings
already done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona import hooks as H
from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.evals.judges import Judge, Judgement
from tl_persona.evals.metrics import Rate, incoherence_rate, label_rates, misaligned_rate
from tl_persona.models import Message, as_adapter
from tl_persona.provenance import model_identity, sae_identity
from tl_persona.saes import check_sae, latent_direction

__all__ = ["Candidate", "Setting", "SettingResult", "Verification", "evaluate", "verify_latents"]

Conversation = Sequence[Message]


@dataclass(frozen=True)
class Candidate:
    """What to verify: one latent, a set of latents (their normalised summed directions), or any
    named direction (e.g. a mean-difference vector)."""

    name: str
    latents: tuple[int, ...] = ()
    direction: Tensor | None = field(default=None, compare=False, hash=False, repr=False)

    @staticmethod
    def of(spec: "int | Sequence[int] | tuple[str, Tensor] | Candidate") -> "Candidate":
        """Coerce an int, a sequence of ints, a ``(name, vector)`` pair or a Candidate."""
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, int):
            return Candidate(f"latent {spec}", (spec,))
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            return Candidate(spec[0], (), torch.as_tensor(spec[1]).detach().float())
        lat = tuple(int(i) for i in spec)  # type: ignore[union-attr]
        if not lat:
            raise ValueError("an empty latent set is not a candidate; pass at least one latent")
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
    kind: Literal["none", "steer", "ablate"]
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
            try:
                abl = self.get("finetuned", "ablate", cand, alpha=0.0)
                row["finetuned_ablated"] = abl.misaligned.value
                row["finetuned_ablated_incoherent"] = abl.incoherent.value
            except KeyError:
                pass
            rows.append(row)
        return pd.DataFrame(rows)


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
) -> tuple[dict[str, Rate], list[Judgement]]:
    """Sample answers under ``fwd_hooks`` and judge them: misaligned, incoherent and label rates.

    Returns the rates (keys ``misaligned``, ``misaligned_coherent``, ``incoherent``, ``label:<x>``)
    and the judgements (prompt-major, ``n_samples`` per prompt).
    """
    answers = sample(
        model, list(prompts), n_per_prompt=n_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, seed=seed, fwd_hooks=fwd_hooks, batch_size=batch_size,
    )
    judgements = judge.judge(to_judge_items(list(prompts), answers, n_samples))
    return _rates(judgements, n_boot, seed), judgements


def _rates(judgements: Sequence[Judgement], n_boot: int, seed: int) -> dict[str, Rate]:
    out = {
        "misaligned": misaligned_rate(judgements, n_boot=n_boot, seed=seed),
        "misaligned_coherent": misaligned_rate(judgements, denominator="coherent", n_boot=n_boot, seed=seed),
        "incoherent": incoherence_rate(judgements, n_boot=n_boot, seed=seed),
    }
    for k, r in label_rates(judgements, n_boot=n_boot, seed=seed).items():
        out[f"label:{k}"] = r
    return out


# ------------------------------------------------------------------------------------------ record
class _Record:
    """An append-only JSON-lines record of finished settings; a torn last line is ignored."""

    def __init__(self, path: str | os.PathLike | None, fingerprint: str) -> None:
        self.path = Path(path) if path is not None else None
        self.fingerprint = fingerprint
        self.done: dict[str, SettingResult] = {}
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a write cut short by a crash
                if d.get("fingerprint") != fingerprint:
                    raise ValueError(
                        f"record {self.path} was written by a sweep with other settings (models, prompts, "
                        "samples or seed); pass a new record path or delete the old one"
                    )
                r = SettingResult.from_json(d["result"])
                self.done[r.setting.key] = r

    def add(self, r: SettingResult) -> None:
        self.done[r.setting.key] = r
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"fingerprint": self.fingerprint, "result": r.to_json()})
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())


# ------------------------------------------------------------------------------------------ sweep
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
    n_controls: int = 2,
    ablate: bool = True,
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
) -> Verification:
    """Verify candidate latents causally, with random-direction controls and confidence intervals.

    For each candidate: steer ``base`` with ``+alpha * direction`` for every alpha in ``alphas``
    (at ``positions``, by default the prompt tokens) and choose the strongest alpha whose
    incoherence is at most ``max_incoherence``; steer ``finetuned`` with ``-beta`` for every beta in
    ``betas`` (default: ``alphas``) and choose the beta that suppresses the behaviour most while
    incoherence stays at most ``max_incoherence``; with ``ablate``, zero-ablate the candidate's
    latents there (all positions). Random directions of the same norm (``n_controls`` of them) are
    run at the chosen alpha and beta. ``alphas`` are in the units of the
    direction (a decoder row as stored; pass ``Candidate`` directions pre-scaled for other units).
    ``record`` is a JSON-lines file: settings already in it are not run again.
    """
    if not prompts:
        raise ValueError("verify_latents needs at least one prompt")
    if not candidates:
        raise ValueError("verify_latents needs at least one candidate latent")
    alphas = [float(a) for a in alphas]
    betas = alphas if betas is None else [float(b) for b in betas]
    for nm, grid_ in (("alphas", alphas), ("betas", betas)):
        if not grid_ or any(not math.isfinite(a) or a <= 0 for a in grid_):
            raise ValueError(f"{nm}={grid_} must be positive finite numbers (the sign is applied per model)")
    if not 0 <= max_incoherence <= 1:
        raise ValueError(f"max_incoherence={max_incoherence} must lie in [0, 1]")
    hook = check_sae(base, sae, hook_name)
    check_sae(finetuned, sae, hook)
    cands = [Candidate.of(c) for c in candidates]
    if len({c.name for c in cands}) != len(cands):
        raise ValueError("two candidates share a name; give custom directions distinct names")
    d_model = as_adapter(base).d_model
    vectors = {c.name: c.vector(sae) for c in cands}
    for name, v in vectors.items():
        if v.shape != (d_model,):
            raise ValueError(f"candidate {name!r} has a direction of shape {tuple(v.shape)}, expected ({d_model},)")
    controls = {
        (c.name, k): _random_like(vectors[c.name], seed=seed * 1000 + 17 * i + k)
        for i, c in enumerate(cands) for k in range(n_controls)
    }
    fingerprint = _fingerprint(base, finetuned, sae, prompts, n_samples, seed, max_new_tokens, temperature, top_p,
                               repr(positions) if not isinstance(positions, str) else positions)
    rec = _Record(record, fingerprint)
    say = progress or (lambda s: None)
    gen = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, n_boot=n_boot)

    def vec(s: Setting) -> Tensor:
        return vectors[s.candidate] if s.control < 0 else controls[(s.candidate, s.control)]

    # stage 0: unmodified models
    run_stage(rec, [Setting("base", "none"), Setting("finetuned", "none")], base, finetuned, prompts, judge,
              hook, vec, positions, n_samples, seed, gen, sae, say)
    # stage 1: positive steering of the base model and negative steering of the fine-tune, over the grids
    grid = [Setting("base", "steer", c.name, -1, a) for c in cands for a in alphas]
    grid += [Setting("finetuned", "steer", c.name, -1, -b) for c in cands for b in betas]
    run_stage(rec, grid, base, finetuned, prompts, judge, hook, vec, positions, n_samples, seed + 1, gen, sae, say)
    chosen: dict[str, float] = {}
    for c in cands:
        ok = [a for a in alphas if rec.done[Setting("base", "steer", c.name, -1, a).key].incoherent.value <= max_incoherence]
        chosen[c.name] = max(ok) if ok else min(alphas)
    chosen_beta: dict[str, float] = {}
    for c in cands:
        res = {b: rec.done[Setting("finetuned", "steer", c.name, -1, -b).key] for b in betas}
        ok = [b for b in betas if res[b].incoherent.value <= max_incoherence]
        chosen_beta[c.name] = min(ok, key=lambda b: (res[b].misaligned.value, b)) if ok else min(betas)
    # stage 2: random-direction controls at the chosen strengths, and ablation on the fine-tune
    stage2 = []
    for c in cands:
        a, b = chosen[c.name], chosen_beta[c.name]
        stage2 += [Setting("base", "steer", c.name, k, a) for k in range(n_controls)]
        stage2 += [Setting("finetuned", "steer", c.name, k, -b) for k in range(n_controls)]
        if ablate and c.latents:
            stage2.append(Setting("finetuned", "ablate", c.name))
    run_stage(rec, stage2, base, finetuned, prompts, judge, hook, vec, positions, n_samples, seed + 2, gen, sae, say,
              latents={c.name: c.latents for c in cands})
    results = list(rec.done.values())
    return Verification(results, chosen, max_incoherence,
                        meta={"hook_name": hook, "fingerprint": fingerprint, "alphas": alphas, "betas": betas,
                              "n_samples": n_samples, "n_prompts": len(prompts)},
                        chosen_beta=chosen_beta)


def run_stage(
    rec: _Record, settings: list[Setting], base: Any, finetuned: Any, prompts: Sequence[Conversation],
    judge: Judge, hook: str, vec: Callable[[Setting], Tensor], positions: H.PositionsLike, n_samples: int,
    seed: int, gen: dict[str, Any], sae: Any, say: Callable[[str], None],
    latents: Mapping[str, tuple[int, ...]] | None = None,
) -> None:
    """Run the settings not yet in the record; steering settings of one model share generate calls."""
    todo = [s for s in settings if s.key not in rec.done]
    for model_name, model in (("base", base), ("finetuned", finetuned)):
        mine = [s for s in todo if s.model == model_name]
        steer_like = [s for s in mine if s.kind in ("none", "steer")]
        if steer_like:
            say(f"{model_name}: {len(steer_like)} steering settings x {len(prompts)} prompts x {n_samples} samples")
            _run_batched(rec, steer_like, model, prompts, judge, hook, vec, positions, n_samples, seed, gen)
        for s in (s for s in mine if s.kind == "ablate"):
            say(f"{model_name}: ablate {s.candidate}")
            assert latents is not None
            rates, js = evaluate(model, prompts, judge, fwd_hooks=H.ablate(sae, list(latents[s.candidate]), hook_name=hook),
                                 n_samples=n_samples, seed=seed, **gen)
            rec.add(_result(s, rates, js))


def _run_batched(
    rec: _Record, settings: list[Setting], model: Any, prompts: Sequence[Conversation], judge: Judge, hook: str,
    vec: Callable[[Setting], Tensor], positions: H.PositionsLike, n_samples: int, seed: int, gen: dict[str, Any],
) -> None:
    # one row per (setting, prompt, sample); each row carries its own direction and alpha
    d_model = as_adapter(model).d_model
    dirs = torch.stack([vec(s) if s.kind == "steer" else torch.zeros(d_model) for s in settings])
    alphas = torch.tensor([s.alpha if s.kind == "steer" else 0.0 for s in settings])
    rows_per_setting = len(prompts) * n_samples
    convs = [p for _ in settings for p in prompts]
    setting_of_row = torch.arange(len(settings)).repeat_interleave(rows_per_setting)

    def hooks_for(rows: Tensor) -> H.FwdHooks:
        idx = setting_of_row[rows]
        return H.steer(hook, dirs[idx], alphas[idx], positions=positions)

    rates_and_js = evaluate(model, convs, judge, fwd_hooks=hooks_for, n_samples=n_samples, seed=seed, **gen)
    js = rates_and_js[1]
    for i, s in enumerate(settings):
        part = js[i * rows_per_setting:(i + 1) * rows_per_setting]
        rec.add(_result(s, _rates(part, gen["n_boot"], seed), part))


def _result(s: Setting, rates: dict[str, Rate], js: Sequence[Judgement]) -> SettingResult:
    labels = {k.removeprefix("label:"): v for k, v in rates.items() if k.startswith("label:")}
    return SettingResult(s, rates["misaligned"], rates["misaligned_coherent"], rates["incoherent"], labels, len(js))


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _random_like(v: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    r = torch.randn(v.shape, generator=g)
    return r / r.norm() * v.norm()


def _fingerprint(base: Any, finetuned: Any, sae: Any, prompts: Sequence[Conversation], *rest: Any) -> str:
    h = hashlib.sha256()
    for part in (model_identity(base), model_identity(finetuned), sae_identity(sae)["weight_hash"],
                 json.dumps([list(p) for p in prompts], sort_keys=True), repr(rest)):
        h.update(str(part).encode())
    return h.hexdigest()[:16]
