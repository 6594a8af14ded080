"""The intervention registry: every kind of intervention that verification, the CLI and reports know.

A kind is one small function from a :class:`Target` (where and along what) and a strength to a
plain ``fwd_hooks`` list, plus a few facts (does it take a strength, does it need SAE latents, can
one ``generate`` call run a different setting per batch row). :func:`tl_persona.verify.verify_latents`
runs the kinds named in its ``suppress`` argument on the fine-tuned model, the CLI offers
:func:`names`, and the report adds a column per kind: a new kind is one function and one
:func:`register` call::

    from tl_persona import interventions as I, hooks as H

    I.register(I.Kind("flip", lambda t, s: H.steer(t.hook_name, -2 * t.direction, 1.0, positions=t.positions),
                      column="flipped", description="reflect the stream along the direction"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from jaxtyping import Float
from torch import Tensor

from tl_persona import hooks as H
from tl_persona.validate import BadInput

__all__ = ["Target", "Kind", "register", "get", "names", "INTERVENTIONS"]


@dataclass(frozen=True)
class Target:
    """Where and along what an intervention acts: a hook point, a ``[d_model]`` direction, the SAE
    and latents it came from (empty for a plain direction), and the positions to edit."""

    hook_name: str
    direction: Float[Tensor, " d_model"] = field(repr=False)
    sae: Any = field(default=None, repr=False)
    latents: tuple[int, ...] = ()
    positions: H.PositionsLike = "prompt"


@dataclass(frozen=True)
class Kind:
    """One kind of intervention.

    ``build(target, strength) -> fwd_hooks``; ``uses_strength``: False for kinds that ignore it
    (ablation, projection); ``needs_latents``: True when the target must come from SAE latents;
    ``batched(hook_name, directions [rows, d], strengths [rows], positions) -> fwd_hooks``: one
    setting per batch row in shared ``generate`` calls (None: one call per setting); ``column``:
    the word the summary table uses (``finetuned_<column>``).
    """

    name: str
    build: Callable[[Target, float], H.FwdHooks]
    uses_strength: bool = False
    needs_latents: bool = False
    batched: Callable[[str, Tensor, Tensor, H.PositionsLike], H.FwdHooks] | None = None
    column: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.column:
            object.__setattr__(self, "column", self.name)


INTERVENTIONS: dict[str, Kind] = {}


def register(kind: Kind, *, replace: bool = False) -> Kind:
    """Add ``kind`` to the registry (an existing name needs ``replace=True``); returns it."""
    if not isinstance(kind, Kind):
        raise BadInput(f"register takes an interventions.Kind, got {type(kind).__name__}")
    if kind.name in INTERVENTIONS and not replace:
        raise BadInput(f"intervention kind {kind.name!r} is already registered; pass replace=True to replace it")
    INTERVENTIONS[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    """The registered kind called ``name``, else an error listing the registered ones."""
    if name in INTERVENTIONS:
        return INTERVENTIONS[name]
    import difflib

    close = difflib.get_close_matches(str(name), list(INTERVENTIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadInput(f"intervention {name!r} is not registered{hint}; registered: {', '.join(map(repr, INTERVENTIONS))}")


def names(*, uses_strength: bool | None = None) -> list[str]:
    """The registered kinds' names (only those that do / do not take a strength, when asked)."""
    return [k for k, v in INTERVENTIONS.items() if uses_strength is None or v.uses_strength == uses_strength]


# --------------------------------------------------------------------------- the built-in kinds
def _steer(t: Target, strength: float) -> H.FwdHooks:
    return H.steer(t.hook_name, t.direction, strength, positions=t.positions)


def _steer_rows(hook_name: str, directions: Tensor, strengths: Tensor, positions: H.PositionsLike) -> H.FwdHooks:
    return H.steer(hook_name, directions, strengths, positions=positions)


def _ablate(t: Target, strength: float) -> H.FwdHooks:
    return H.ablate(t.sae, list(t.latents), hook_name=t.hook_name)


def _project_out(t: Target, strength: float) -> H.FwdHooks:
    return H.project_out(t.hook_name, t.direction)


register(Kind("none", lambda t, s: [], batched=lambda h, d, s, p: [], column="unmodified",
              description="no intervention (the model as it is)"))
register(Kind("steer", _steer, uses_strength=True, batched=_steer_rows, column="steered",
              description="add strength x direction at the target's positions"))
register(Kind("ablate", _ablate, needs_latents=True, column="ablated",
              description="zero the target's SAE latents at every position (error term kept)"))
register(Kind("project_out", _project_out, column="projected_out",
              description="remove the direction's component from the stream at every position"))
