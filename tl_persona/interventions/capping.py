"""Activation capping along a direction: the "Assistant Axis" intervention as one registered kind.

Capping clamps the residual stream's projection on a unit direction to at most a threshold,
``x - max(0, x·u - threshold) u``, and leaves every activation already below it untouched. Capped
along a persona direction (a toxic-persona latent's decoder row), it removes the excess that a
fine-tune added along the persona without pushing the stream anywhere it did not go before. The
strength is the threshold, in units of the unit direction (choose it from the projections of the
model's own normal activations, e.g. the base model's upper percentiles). A verification sweep runs
it on the fine-tune over a grid of thresholds: ``suppress=("cap",)`` with ``strengths={"cap": ...}``.
"""

from __future__ import annotations

from torch import Tensor

from tl_persona import hooks as H
from tl_persona.interventions.registry import Kind, Target, register

__all__ = ["CAPPING"]


def _cap(t: Target, threshold: float) -> H.FwdHooks:
    return H.cap(t.hook_name, t.direction, threshold, positions=t.positions)


def _cap_rows(hook_name: str, directions: Tensor, thresholds: Tensor, positions: H.PositionsLike) -> H.FwdHooks:
    return H.cap(hook_name, directions, thresholds, positions=positions)


CAPPING = register(Kind("cap", _cap, uses_strength=True, batched=_cap_rows, column="capped",
                        description="clamp the projection on the direction to at most the strength",
                        strength="the ceiling of the projection on the unit direction"))
