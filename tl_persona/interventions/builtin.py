"""The built-in intervention kinds: the unmodified model, steering, ablation and projection.

:data:`UNMODIFIED` and :data:`STEERING` are the two kinds a verification sweep is built around: the
models as they are, and the kind it induces the behaviour with (``+alpha`` on the base model) and
suppresses it with (``-beta`` on the fine-tune).
"""

from __future__ import annotations

from torch import Tensor

from tl_persona import hooks as H
from tl_persona.interventions.registry import Kind, Target, register

__all__ = ["UNMODIFIED", "STEERING", "ABLATION", "PROJECTION"]


def _steer(t: Target, strength: float) -> H.FwdHooks:
    return H.steer(t.hook_name, t.direction, strength, positions=t.positions)


def _steer_rows(hook_name: str, directions: Tensor, strengths: Tensor, positions: H.PositionsLike) -> H.FwdHooks:
    return H.steer(hook_name, directions, strengths, positions=positions)


def _ablate(t: Target, strength: float) -> H.FwdHooks:
    return H.ablate(t.sae, list(t.latents), hook_name=t.hook_name)


def _project_out(t: Target, strength: float) -> H.FwdHooks:
    return H.project_out(t.hook_name, t.direction)


UNMODIFIED = register(Kind("none", lambda t, s: [], batched=lambda h, d, s, p: [], column="unmodified",
                           description="no intervention (the model as it is)"))
STEERING = register(Kind("steer", _steer, uses_strength=True, batched=_steer_rows, column="steered",
                         description="add strength x direction at the target's positions",
                         strength="the multiple of the direction added (negative: subtracted)"))
ABLATION = register(Kind("ablate", _ablate, needs_latents=True, column="ablated",
                         description="zero the target's SAE latents at every position (error term kept)"))
PROJECTION = register(Kind("project_out", _project_out, column="projected_out",
                           description="remove the direction's component from the stream at every position"))
