"""The settings of a verification sweep, as three small frozen values checked when they are made.

* :class:`Sweep`: what is swept and how strengths are chosen (the induce kind's alphas on the base
  model and betas on the fine-tune, the suppressing kinds with their own strength grids, the
  incoherence bound, the random-direction controls);
* :class:`Sampling`: how answers are sampled and judged (positions, samples per prompt,
  temperature, lengths, seed, batch size, bootstrap size);
* :class:`Execution`: where and how the sweep runs (the SAE's hook override, the resumable record,
  progress messages, the device, the process group).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import torch

from tl_persona import hooks as H
from tl_persona import interventions as I
from tl_persona.validate import BadInput, finite, nonneg_int, positive_int, probability

__all__ = ["Sweep", "Sampling", "Execution"]


def _strengths(values: Any, name: str, *, positive: bool) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise BadInput(f"{name}={values!r} must be a list of numbers, e.g. (20.0, 40.0)")
    fix = "the sign is applied per model" if positive else ""
    out = tuple(finite(v, name, min=0.0 if positive else None, min_open=positive, fix=fix) for v in values)
    if not out:
        raise BadInput(f"{name} must hold at least one strength")
    return out


@dataclass(frozen=True)
class Sweep:
    """What a sweep runs and how it chooses strengths.

    ``alphas``: strengths of the ``induce`` kind (steering) on the base model; the strongest whose
    incoherence is at most ``max_incoherence`` is chosen. ``betas`` (default: ``alphas``): the
    same kind subtracted on the fine-tune; the most suppressing coherent one is chosen.
    ``suppress``: further kinds run on the fine-tune (names from :mod:`tl_persona.interventions`);
    a kind that takes a strength runs over its grid in ``strengths`` (e.g. ``{"cap": (4.0, 8.0)}``,
    mildest first: ties go to the earlier one) and the most suppressing coherent strength is chosen.
    ``choose_by="upper"`` holds the choice to the incoherence rate's 95% upper bound.
    ``n_controls`` norm-matched random directions run at the chosen strengths
    (``controls_at="grid"``: at every strength).
    """

    alphas: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0)
    betas: tuple[float, ...] | None = None
    suppress: tuple[str, ...] = (I.ABLATION.name,)
    strengths: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    max_incoherence: float = 0.10
    choose_by: Literal["estimate", "upper"] = "estimate"
    n_controls: int = 2
    controls_at: Literal["chosen", "grid"] = "chosen"
    induce: str = I.STEERING.name

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (a frozen dataclass normalises itself)
        put("alphas", _strengths(self.alphas, "alphas", positive=True))
        put("betas", self.alphas if self.betas is None else _strengths(self.betas, "betas", positive=True))
        put("max_incoherence", probability(self.max_incoherence, "max_incoherence"))
        if self.choose_by not in ("estimate", "upper"):
            raise BadInput(f"choose_by={self.choose_by!r} must be 'estimate' or 'upper' (the incoherence rate's 95% "
                           "upper bound)")
        if self.controls_at not in ("chosen", "grid"):
            raise BadInput(f"controls_at={self.controls_at!r} must be 'chosen' (controls at the chosen strengths) or "
                           "'grid' (at every strength)")
        put("n_controls", nonneg_int(self.n_controls, "n_controls", fix="0 runs no random-direction control"))
        if not I.get(self.induce).uses_strength or I.get(self.induce).batched is None:
            raise BadInput(f"induce={self.induce!r} must be a kind that takes a strength and runs one setting per batch "
                           "row (like 'steer')")
        put("suppress", self._suppress())
        put("strengths", self._grids())

    def _suppress(self) -> tuple[str, ...]:
        if isinstance(self.suppress, (str, bytes)):
            raise BadInput(f"suppress={self.suppress!r} must be a list of kind names, e.g. ('ablate',)")
        kinds = tuple(I.get(k).name for k in self.suppress)
        for k in kinds:
            if k == I.UNMODIFIED.name:
                raise BadInput(f"suppress={k!r}: the unmodified models always run; drop it")
            if k == self.induce:
                raise BadInput(f"suppress={k!r} is the induce kind, already swept on the fine-tune with betas; drop it")
        if len(set(kinds)) != len(kinds):
            raise BadInput(f"suppress={list(kinds)} names a kind twice")
        return kinds

    def _grids(self) -> dict[str, tuple[float, ...]]:
        if not isinstance(self.strengths, Mapping):
            raise BadInput(f"strengths={self.strengths!r} must map kind names to lists of strengths, e.g. "
                           "{'cap': (4.0, 8.0)}")
        for k in self.strengths:
            if k not in self.suppress or not I.get(k).uses_strength:
                raise BadInput(f"strengths names {k!r}, which is not a kind in suppress that takes a strength; "
                               f"those are {[s for s in self.suppress if I.get(s).uses_strength]}")
        for k in self.suppress:
            if I.get(k).uses_strength and k not in self.strengths:
                raise BadInput(f"suppress={k!r} takes a strength ({I.get(k).strength or 'its strength'}): pass its "
                               f"grid, strengths={{{k!r}: (...)}}")
        return {k: _strengths(v, f"strengths[{k!r}]", positive=False) for k, v in self.strengths.items()}


@dataclass(frozen=True)
class Sampling:
    """How each setting's answers are sampled and judged: steering ``positions``, ``n_samples``
    answers per prompt, ``temperature``, ``top_p``, ``max_new_tokens``, the ``seed`` every answer's
    random stream derives from, prompts x samples per ``generate`` batch (``batch_size``), and the
    bootstrap size of the rates' intervals (``n_boot``)."""

    positions: H.PositionsLike = "prompt"
    n_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int = 128
    n_boot: int = 1000

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        put("n_samples", positive_int(self.n_samples, "n_samples"))
        put("max_new_tokens", positive_int(self.max_new_tokens, "max_new_tokens"))
        put("batch_size", positive_int(self.batch_size, "batch_size"))
        put("n_boot", positive_int(self.n_boot, "n_boot"))
        put("seed", nonneg_int(self.seed, "seed"))
        finite(self.temperature, "temperature", min=0.0)
        finite(self.top_p, "top_p", min=0.0, max=1.0, min_open=True)

    def generation(self) -> dict[str, Any]:
        """The keyword arguments of :func:`tl_persona.verify.evaluate` that these settings fix."""
        return dict(n_samples=self.n_samples, temperature=self.temperature, top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, n_boot=self.n_boot)


@dataclass(frozen=True)
class Execution:
    """Where and how a sweep runs. ``hook_name``: override the SAE's hook (one SAE only).
    ``record``: a JSON-lines file of finished settings; a re-run skips them. ``answers``: a JSON-lines
    file that keeps every judged answer of each setting run (what its rates were computed from; on
    rank 0 of a distributed sweep, the settings that rank ran). ``progress``: called
    with a line per step. ``device``: each model is moved there only for its own settings (two
    models that do not fit together). ``distributed``: with an initialized ``torch.distributed``
    group (unless False), the settings are split over its ranks and every rank returns the whole
    result; rank 0 writes the record."""

    hook_name: str | None = None
    record: str | os.PathLike | None = None
    answers: str | os.PathLike | None = None
    progress: Callable[[str], None] | None = None
    device: torch.device | str | None = None
    distributed: bool | None = None

    def __post_init__(self) -> None:
        if self.distributed not in (None, True, False):
            raise BadInput(f"distributed={self.distributed!r} must be None (automatic), True or False")
        if self.device is not None:
            object.__setattr__(self, "device", torch.device(self.device))
        for name in ("record", "answers"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (str, os.PathLike)):
                raise BadInput(f"{name}={v!r} must be a file path (str or pathlib.Path) or None")

    def say(self, line: str) -> None:
        """Report progress (a no-op without a ``progress`` callable)."""
        if self.progress is not None:
            self.progress(line)
