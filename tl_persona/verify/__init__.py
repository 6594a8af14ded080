"""Causal verification of candidate latents: steering, suppression and capping sweeps with controls.

A latent whose activation moves between two models is only a candidate. Following Wang et al.
(2025), :func:`verify_latents` checks each candidate causally:

1. steer the *base* model with ``+alpha`` times the latent's decoder direction over a grid of
   alphas, and keep, per latent, the strongest alpha whose incoherence stays at most 10%;
2. steer the *fine-tuned* model with ``-alpha`` (and run the other suppressing kinds there: zero
   ablation of the latent, activation capping along its direction, ...): a latent that controls the
   behaviour suppresses it;
3. repeat (1) and (2) with norm-matched random directions as controls, at the same strengths.

Every setting is judged by any :class:`~tl_persona.evals.judges.Judge`, and every rate carries a
bootstrap confidence interval. Settings of one stage run batched in the same ``generate`` calls
(one setting per batch row). Every answer draws from its own random stream, seeded from the
stage's seed, the setting's key and the answer's prompt and sample index, so a setting's result
does not depend on which other settings share its batches: a resumed sweep, a sweep of fewer
candidates and a sweep split over ranks give each setting the same answers. The record on disk is
resumable: a re-run skips settings already done.

**Across ranks.** With an initialized ``torch.distributed`` process group, each stage's settings
are split over the ranks (round-robin), each rank runs its share, and the results are gathered so
that every rank returns the full :class:`Verification`, the same table as one process. Only rank 0
reads and writes the record (the finished settings are broadcast to the other ranks).

The parts: :mod:`~tl_persona.verify.config` (the sweep's settings), :mod:`~tl_persona.verify.cells`
(candidates, settings, results), :mod:`~tl_persona.verify.record` (the resumable record),
:mod:`~tl_persona.verify.runner` (sampling and judging a stage), :mod:`~tl_persona.verify.split`
(a stage over ranks), :mod:`~tl_persona.verify.sweep` (the stages and the strength choice),
:mod:`~tl_persona.verify.tables` and :mod:`~tl_persona.verify.plots` (what a sweep shows).
"""

from tl_persona.verify.cells import Candidate, Setting, SettingResult
from tl_persona.verify.config import Execution, Sampling, Sweep
from tl_persona.verify.record import read_answers
from tl_persona.verify.runner import evaluate
from tl_persona.verify.sweep import verify_latents
from tl_persona.verify.tables import Verification

__all__ = ["Candidate", "Setting", "SettingResult", "Sweep", "Sampling", "Execution", "Verification", "evaluate",
           "read_answers",
           "verify_latents"]
