"""The cells of a sweep: what is verified (:class:`Candidate`), one setting of the sweep
(:class:`Setting`) and its judged rates (:class:`SettingResult`, one line of the record)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.evals.metrics import Rate
from tl_persona.saes import latent_direction
from tl_persona.validate import finite_tensor, latent_index, latent_indices

__all__ = ["Candidate", "Setting", "SettingResult"]


@dataclass(frozen=True)
class Candidate:
    """What to verify: one latent, a set of latents (their normalised summed directions), or any
    named direction (e.g. a mean-difference vector). ``sae_key`` names the SAE (and so the hook) the
    latents belong to when several SAEs are verified in one sweep."""

    name: str
    latents: tuple[int, ...] = ()
    direction: Tensor | None = field(default=None, compare=False, hash=False, repr=False)
    sae_key: str | None = None

    @staticmethod
    def of(spec: "int | Sequence[int] | tuple[str, Tensor] | tuple[str, int] | Candidate",
           name: str = "candidate") -> "Candidate":
        """Coerce an int, a sequence of ints, a ``(name, vector)`` pair, an ``(sae_key, latent or
        latents)`` pair (several SAEs) or a Candidate (a bool or a float is not a latent index)."""
        if isinstance(spec, Candidate):
            return spec
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            key, rest = spec
            if not isinstance(rest, (Tensor, float)) and (isinstance(rest, (int,)) or (
                    isinstance(rest, Sequence) and rest and all(isinstance(i, int) for i in rest))):
                c = Candidate.of(rest, name)
                return Candidate(f"{c.name} @ {key}", c.latents, None, key)
            vec = finite_tensor(torch.as_tensor(rest).detach().float(), f"{name} {key!r}")
            return Candidate(key, (), vec)
        if isinstance(spec, (str, bytes)) or not isinstance(spec, (Sequence, Tensor)):
            i = latent_index(spec, name)
            return Candidate(f"latent {i}", (i,))
        lat = tuple(latent_indices(spec, name).tolist())
        return Candidate("latents " + "+".join(map(str, lat)), lat)

    def vector(self, sae: Any) -> Float[Tensor, " d_model"]:
        """The steering direction: the decoder row, the normalised sum of rows, or the given vector."""
        if self.direction is not None:
            return self.direction
        return latent_direction(sae, list(self.latents))


@dataclass(frozen=True)
class Setting:
    """One cell of the sweep: which model, which intervention, which candidate or control, which
    strength (``alpha``: signed as applied, e.g. ``-beta`` for negative steering, a threshold for
    capping; 0 for kinds without a strength)."""

    model: Literal["base", "finetuned"]
    kind: str  # a name from tl_persona.interventions
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
    answers: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)
    """The judged answers the rates were computed from (question, answer, aligned, coherent, label),
    prompt-major; empty for a result read back from a record (the answers log keeps them)."""

    def to_row(self) -> dict[str, Any]:
        """The setting's row of :meth:`Verification.table`."""
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
        """The JSON object the record stores."""
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
        """Read back what :meth:`to_json` wrote."""
        return SettingResult(
            Setting(**d["setting"]), Rate(**d["misaligned"]), Rate(**d["misaligned_coherent"]),
            Rate(**d["incoherent"]), {k: Rate(**v) for k, v in d["labels"].items()}, int(d["n"]),
        )
