"""The registry of intervention kinds: what a kind is, and how one is registered and found.

A kind builds a plain ``fwd_hooks`` list from a :class:`Target` (where, along what, at which
positions) and a strength, and declares the facts verification needs: does it take a strength
(steering's alpha, capping's threshold), does it need SAE latents, can one ``generate`` call run a
different setting per batch row, and the word of its summary columns.
"""

from __future__ import annotations

import difflib
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

    ``build(target, strength) -> fwd_hooks``. ``uses_strength``: whether the strength means
    something (steering's alpha, capping's threshold; ablation and projection ignore it): a sweep
    runs such a kind over a grid of strengths and keeps the best coherent one. ``strength``: what
    the strength is, in a few words (for help texts and errors). ``needs_latents``: the target must
    come from SAE latents. ``batched(hook_name, directions [rows, d], strengths [rows], positions)
    -> fwd_hooks``: one setting per batch row in shared ``generate`` calls, where a row with a zero
    direction is left as it is (None: one call per setting). ``column``: the word of the summary
    table's columns (``finetuned_<column>``).
    """

    name: str
    build: Callable[[Target, float], H.FwdHooks]
    uses_strength: bool = False
    needs_latents: bool = False
    batched: Callable[[str, Tensor, Tensor, H.PositionsLike], H.FwdHooks] | None = None
    column: str = ""
    description: str = ""
    strength: str = ""

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
    close = difflib.get_close_matches(str(name), list(INTERVENTIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise BadInput(f"intervention {name!r} is not registered{hint}; registered: {', '.join(map(repr, INTERVENTIONS))}")


def names(*, uses_strength: bool | None = None) -> list[str]:
    """The registered kinds' names (only those that do / do not take a strength, when asked)."""
    return [k for k, v in INTERVENTIONS.items() if uses_strength is None or v.uses_strength == uses_strength]
