"""The sweep: :func:`verify_latents` plans its settings in three stages, runs them, and chooses strengths.

Stage 0 runs the unmodified models; stage 1 every strength grid (the induce kind's alphas on the base
model and betas on the fine-tune, each suppressing kind's own grid on the fine-tune); the strengths
are chosen from stage 1; stage 2 runs the random-direction controls (at the chosen strengths or over
the grids) and the suppressing kinds without a strength.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from tl_persona import interventions as I
from tl_persona.evals.judges import Judge, check_judge, judge_identity
from tl_persona.models import Message, as_adapter
from tl_persona.provenance import json_digest, model_identity, sae_identity
from tl_persona.saes import check_sae, named_saes
from tl_persona.stats import dist_info
from tl_persona.validate import BadInput
from tl_persona.verify.cells import Candidate, Setting, SettingResult
from tl_persona.verify.config import Execution, Sampling, Sweep
from tl_persona.verify.record import Record
from tl_persona.verify.runner import Stage
from tl_persona.verify.split import run_stage
from tl_persona.verify.tables import Verification

__all__ = ["verify_latents"]

Conversation = Sequence[Message]


def verify_latents(
    base: Any,
    finetuned: Any,
    sae: Any,
    candidates: Sequence[int | Sequence[int] | tuple[str, Tensor] | Candidate],
    prompts: Sequence[Conversation],
    judge: Judge,
    *,
    sweep: Sweep | None = None,
    sampling: Sampling | None = None,
    execution: Execution | None = None,
) -> Verification:
    """Verify candidate latents causally, with random-direction controls and confidence intervals.

    For each candidate (a latent, a set of latents, or a named direction; with several SAEs,
    ``(sae_key, latent)``): steer ``base`` with ``+alpha`` times its direction for every alpha of
    ``sweep.alphas`` and choose the strongest alpha whose incoherence is at most
    ``sweep.max_incoherence``; steer ``finetuned`` with ``-beta`` for every beta and choose the most
    suppressing coherent one; run each kind of ``sweep.suppress`` on ``finetuned`` (a kind that takes
    a strength, such as capping, over its grid in ``sweep.strengths``, choosing as for beta; kinds
    that need SAE latents only for latent candidates). Norm-matched random directions run as
    controls at the chosen strengths. Strengths are in the units of the direction (a decoder row as
    stored). Every setting is judged by ``judge`` and every rate carries a 95% interval.

    ``sampling`` fixes how answers are sampled (:class:`Sampling`), ``execution`` where the sweep
    runs, its resumable record and its progress messages (:class:`Execution`); the defaults of
    each are used when omitted. The record's fingerprint covers models, SAE, prompts, sampling and
    the judge's identity: settings already in it are not run again.
    """
    sweep, sampling, execution = sweep or Sweep(), sampling or Sampling(), execution or Execution()
    for value, cls in ((sweep, Sweep), (sampling, Sampling), (execution, Execution)):
        if not isinstance(value, cls):
            raise BadInput(f"{cls.__name__.lower()}={value!r:.60} must be a tl_persona.verify.{cls.__name__}")
    _check_inputs(prompts, candidates, judge)
    plan = _Plan.of(base, finetuned, sae, candidates, sweep, sampling, execution.hook_name)
    fingerprint = _fingerprint(base, finetuned, list(plan.saes.values()), prompts, sampling, judge)
    rank, world = dist_info() if execution.distributed is not False else (0, 1)
    rec = Record.shared(execution.record, fingerprint, rank, world)
    if execution.answers is not None and rank == 0:
        rec.answers_path = Path(execution.answers)
    models = {"base": base, "finetuned": finetuned}

    def stage(k: int) -> Stage:
        return Stage(prompts=tuple(prompts), judge=judge, sampling=sampling, device=execution.device, models=models,
                     target=plan.target, seed=sampling.seed + k, say=execution.say)

    run_stage(rec, plan.unmodified(), stage(0))
    run_stage(rec, plan.grids(), stage(1))
    alpha, beta, strength = plan.choose(rec.done)
    run_stage(rec, plan.controls_and_rest(alpha, beta, strength), stage(2))
    meta = {"hook_name": plan.hook if not plan.named else plan.hooks, "fingerprint": fingerprint,
            "alphas": list(sweep.alphas), "betas": list(sweep.betas), "n_samples": sampling.n_samples,
            "n_prompts": len(prompts), "suppress": list(sweep.suppress), "choose_by": sweep.choose_by,
            "controls_at": sweep.controls_at, "judge": judge_identity(judge),
            "strengths": {k: list(v) for k, v in sweep.strengths.items()}}
    return Verification(list(rec.done.values()), alpha, sweep.max_incoherence, meta=meta, chosen_beta=beta,
                        chosen_strength=strength, induce=sweep.induce)


def _check_inputs(prompts: Any, candidates: Any, judge: Any) -> None:
    if prompts is None or isinstance(prompts, (str, bytes)) or len(prompts) == 0:
        raise BadInput(f"prompts={prompts!r:.60}: verify_latents needs at least one prompt (a list of conversations)")
    if candidates is None or isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) \
            or len(candidates) == 0:
        raise BadInput(f"candidates={candidates!r:.60} must be a non-empty list of latents, latent sets or "
                       "(name, direction) pairs, e.g. [919] or [[919, 357]]")
    check_judge(judge)


@dataclass
class _Plan:
    """The settings of a sweep: its SAEs and hooks, the candidates' directions and controls, and
    the settings of each stage."""

    sweep: Sweep
    positions: Any
    saes: dict[str, Any]
    hooks: dict[str, str]
    named: bool
    cands: list[Candidate]
    vectors: dict[str, Tensor]
    random: dict[tuple[str, int], Tensor]
    d_model: int

    @classmethod
    def of(cls, base: Any, finetuned: Any, sae: Any, candidates: Sequence[Any], sweep: Sweep, sampling: Sampling,
           hook_name: str | None) -> "_Plan":
        named = named_saes(sae)
        if named is not None and hook_name is not None:
            raise BadInput("hook_name goes with one SAE; with several, each SAE's own hook is used")
        saes = named if named is not None else {"": sae}
        hooks = {k: check_sae(base, v, hook_name) for k, v in saes.items()}
        for k, v in saes.items():
            check_sae(finetuned, v, hooks[k])
        cands = [Candidate.of(c, f"candidates[{i}]") for i, c in enumerate(candidates)]
        _check_candidates(cands, saes, named is not None)
        d_model = as_adapter(base).d_model
        vectors = {c.name: c.vector(saes[_home(c, saes)]) for c in cands}
        for name, v in vectors.items():
            if v.shape != (d_model,):
                raise BadInput(f"candidate {name!r} has a direction of shape {tuple(v.shape)}, expected ({d_model},)")
        random = {(c.name, k): _random_like(vectors[c.name], seed=sampling.seed * 1000 + 17 * i + k)
                  for i, c in enumerate(cands) for k in range(sweep.n_controls)}
        return cls(sweep, sampling.positions, saes, hooks, named is not None, cands, vectors, random, d_model)

    @property
    def hook(self) -> str:
        return next(iter(self.hooks.values()))

    def target(self, s: Setting) -> I.Target:
        """Where and along what setting ``s`` intervenes (the zero vector for the unmodified models)."""
        c = next((c for c in self.cands if c.name == s.candidate), None)
        if c is None:
            return I.Target(self.hook, torch.zeros(self.d_model), next(iter(self.saes.values())), (), self.positions)
        vec = self.random[(s.candidate, s.control)] if s.control >= 0 else self.vectors[s.candidate]
        key = _home(c, self.saes)
        return I.Target(self.hooks[key], vec, self.saes[key], c.latents if s.control < 0 else (), self.positions)

    def _runs(self, c: Candidate, kind: str) -> bool:
        return bool(c.latents) or not I.get(kind).needs_latents

    def unmodified(self) -> list[Setting]:
        return [Setting("base", I.UNMODIFIED.name), Setting("finetuned", I.UNMODIFIED.name)]

    def grids(self) -> list[Setting]:
        """Stage 1: positive steering of the base model and negative steering of the fine-tune over
        their grids, then each suppressing kind's grid of strengths on the fine-tune."""
        sw, ind = self.sweep, self.sweep.induce
        out = [Setting("base", ind, c.name, -1, a) for c in self.cands for a in sw.alphas]
        out += [Setting("finetuned", ind, c.name, -1, -b) for c in self.cands for b in sw.betas]
        for k, grid in sw.strengths.items():
            out += [Setting("finetuned", k, c.name, -1, s) for c in self.cands if self._runs(c, k) for s in grid]
        return out

    def choose(self, done: dict[str, SettingResult]) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]]]:
        """The strongest coherent alpha, and the most suppressing coherent beta and strength of each
        suppressing kind, per candidate (the mildest when none is coherent)."""
        sw, ind = self.sweep, self.sweep.induce

        def coherent(r: SettingResult) -> bool:
            return (r.incoherent.hi if sw.choose_by == "upper" else r.incoherent.value) <= sw.max_incoherence

        alpha, beta, strength = {}, {}, {k: {} for k in sw.strengths}
        for c in self.cands:
            ok = [a for a in sw.alphas if coherent(done[Setting("base", ind, c.name, -1, a).key])]
            alpha[c.name] = max(ok) if ok else min(sw.alphas)
            res = {b: done[Setting("finetuned", ind, c.name, -1, -b).key] for b in sw.betas}
            ok = [b for b in sw.betas if coherent(res[b])]
            beta[c.name] = min(ok, key=lambda b: (res[b].misaligned.value, b)) if ok else min(sw.betas)
            for k, grid in sw.strengths.items():
                if self._runs(c, k):
                    res = {s: done[Setting("finetuned", k, c.name, -1, s).key] for s in grid}
                    ok = [s for s in grid if coherent(res[s])]
                    strength[k][c.name] = min(ok, key=lambda s: (res[s].misaligned.value, grid.index(s))) if ok else grid[0]
        return alpha, beta, strength

    def controls_and_rest(self, alpha: dict[str, float], beta: dict[str, float],
                          strength: dict[str, dict[str, float]]) -> list[Setting]:
        """Stage 2: random-direction controls at the chosen strengths (or the whole grids), and the
        suppressing kinds without a strength, on the fine-tune."""
        sw, ind, n = self.sweep, self.sweep.induce, range(self.sweep.n_controls)
        every = sw.controls_at == "grid"
        out: list[Setting] = []
        for c in self.cands:
            out += [Setting("base", ind, c.name, k, a) for a in (sw.alphas if every else [alpha[c.name]]) for k in n]
            out += [Setting("finetuned", ind, c.name, k, -b) for b in (sw.betas if every else [beta[c.name]]) for k in n]
            for kind in (k for k in sw.suppress if self._runs(c, k)):
                if kind not in sw.strengths:
                    out.append(Setting("finetuned", kind, c.name))
                elif not I.get(kind).needs_latents:
                    grid = sw.strengths[kind] if every else [strength[kind][c.name]]
                    out += [Setting("finetuned", kind, c.name, k, s) for s in grid for k in n]
        return out


def _home(c: Candidate, saes: dict[str, Any]) -> str:
    return c.sae_key if c.sae_key is not None else next(iter(saes))


def _check_candidates(cands: list[Candidate], saes: dict[str, Any], named: bool) -> None:
    for i, c in enumerate(cands):
        if not named and c.sae_key is not None:
            raise BadInput(f"candidates[{i}] names SAE {c.sae_key!r}, but one SAE was given; pass the latent alone")
        if named and c.latents and c.sae_key not in saes:
            raise BadInput(f"candidates[{i}]={c.name!r}: with several SAEs, name the SAE of each latent: "
                           f"(sae_key, latent) with sae_key one of {list(saes)}")
    if len({c.name for c in cands}) != len(cands):
        raise BadInput("two candidates share a name; give custom directions distinct names")


def _random_like(v: Tensor, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed) % (2**63 - 1))
    r = torch.randn(v.shape, generator=g)
    return r / r.norm() * v.norm()


def _fingerprint(base: Any, finetuned: Any, saes: Sequence[Any], prompts: Sequence[Conversation],
                 sampling: Sampling, judge: Judge) -> str:
    pos = sampling.positions
    rest = (sampling.n_samples, sampling.seed, sampling.max_new_tokens, sampling.temperature, sampling.top_p,
            repr(pos) if not isinstance(pos, str) else pos, judge_identity(judge))
    h = hashlib.sha256()
    for part in (model_identity(base), model_identity(finetuned), ",".join(sae_identity(s)["weight_hash"] for s in saes),
                 json.dumps([list(p) for p in prompts], sort_keys=True), json_digest([repr(r) for r in rest])):
        h.update(str(part).encode())
    return h.hexdigest()[:16]
