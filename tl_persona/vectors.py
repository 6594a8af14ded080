"""Persona vectors: difference-of-means directions in the residual stream, next to SAE latents.

Chen et al. (2025, "Persona vectors") read a trait as the difference of mean activations between
text that shows it and text that does not; model-organisms-for-EM take the same difference between
a misaligned and an aligned model on the same prompts. Here both are one function each, at any hook
and scope, computed by the streaming engine (the mean of every residual coordinate is the mean of
an identity :class:`~tl_persona.directions.Projection`), so no activation tensor is ever kept:

* :func:`persona_vector` / :func:`persona_vectors`: mean over ``positive`` prompts minus mean over
  ``negative`` prompts, at one hook or several (one forward pass per batch for all hooks);
* :func:`model_diff_vector`: mean in ``finetuned`` minus mean in ``base`` on the same prompts;
* :func:`layer_norms`: the norm of a vector per layer (where the trait is most separated);
* :func:`decoder_cosines`, :func:`top_decoder_latents`: the cosine of a vector with every SAE
  decoder row (which latents the vector is made of).

A :class:`PersonaVector` plugs into everything that takes a direction: :meth:`PersonaVector.steer`
and :meth:`PersonaVector.project_out` return plain TransformerLens ``fwd_hooks``;
:meth:`PersonaVector.candidate` is a ``(name, vector)`` candidate of
:func:`tl_persona.verify.verify_latents`; :meth:`PersonaVector.encoder` is a
:class:`~tl_persona.directions.Projection` that :func:`tl_persona.diff.diff_latents` diffs like a latent.

Means are token-pooled: every selected token of every prompt counts once (with ``scope=
"last_prompt"`` that is one token per prompt, so it is also the mean of per-prompt values).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona import hooks as H
from tl_persona.data import PromptsLike, Scope, as_prompt_set, check_scope
from tl_persona.directions import Projection
from tl_persona.models import as_adapter, hook_layer
from tl_persona.saes import d_in as sae_d_in
from tl_persona.provenance import atomic_write_bytes, read_safetensors
from tl_persona.validate import BadInput, finite_tensor, positive_int

_FORMAT = "tl_persona.PersonaVector"

__all__ = [
    "PersonaVector",
    "mean_activations",
    "persona_vector",
    "persona_vectors",
    "model_diff_vector",
    "layer_norms",
    "decoder_cosines",
    "top_decoder_latents",
    "as_vector",
]


@dataclass(frozen=True, eq=False)
class PersonaVector:
    """A difference-of-means direction at one hook point.

    ``vector`` is in the residual stream's own units (positive mean minus negative mean; for a model
    diff, fine-tuned minus base). ``n_positive`` / ``n_negative`` count the tokens averaged on each
    side; ``meta`` records scope, prompt hashes and models.
    """

    vector: Float[Tensor, " d_model"]
    hook_name: str
    scope: str
    name: str = "persona vector"
    n_positive: int = 0
    n_negative: int = 0
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def norm(self) -> float:
        """The vector's L2 norm (how far apart the two means are, in residual units)."""
        return float(self.vector.norm())

    @property
    def layer(self) -> int | None:
        """The layer of the hook point (None for hooks outside ``blocks.N``)."""
        return hook_layer(self.hook_name)

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        """The direction scaled to norm 1 (an error for a zero vector: the two means are equal)."""
        n = self.vector.norm()
        if float(n) == 0.0:
            raise BadInput(f"{self.name!r} is the zero vector (the two means are equal); it has no direction")
        return self.vector / n

    def project(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "..."]:
        """The projection of activations ``x`` on the unit direction."""
        return x.to(self.unit.dtype) @ self.unit.to(x.device)

    def steer(self, alpha: float | Float[Tensor, " batch"], *, positions: H.PositionsLike = "all",
              unit: bool = True) -> H.FwdHooks:
        """Hooks adding ``alpha`` times the direction at this vector's hook (``unit``: the norm-1
        direction, so alpha is the added norm; else the raw vector, as in Chen et al.)."""
        return H.steer(self.hook_name, self.unit if unit else self.vector, alpha, positions=positions)

    def project_out(self, *, positions: H.PositionsLike = "all") -> H.FwdHooks:
        """Hooks removing the component along this direction at this vector's hook (directional ablation)."""
        return H.project_out(self.hook_name, self.unit, positions=positions)

    def candidate(self, *, unit: bool = True) -> tuple[str, Tensor]:
        """A ``(name, vector)`` candidate for :func:`tl_persona.verify.verify_latents` (the unit
        direction by default, so its alphas mean the same as for unit-norm decoder rows)."""
        return (self.name, (self.unit if unit else self.vector).clone())

    def encoder(self) -> Projection:
        """A one-feature :class:`~tl_persona.directions.Projection` on the unit direction at this hook."""
        return Projection({self.name: self.vector}, self.hook_name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (without the vector itself)."""
        return {"name": self.name, "hook_name": self.hook_name, "layer": self.layer, "scope": self.scope,
                "norm": self.norm, "n_positive": self.n_positive, "n_negative": self.n_negative, **self.meta}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the vector and its description to one ``.safetensors`` file, atomically (a file
        that is not a saved vector is only replaced with ``overwrite``)."""
        from safetensors.torch import save

        path = Path(path)
        if path.exists() and not overwrite and not _is_saved_vector(path):
            raise BadInput(f"{str(path)!r} exists and is not a saved PersonaVector; pass overwrite=True to replace it")
        head = {"format": _FORMAT, "hook_name": self.hook_name, "scope": self.scope, "name": self.name,
                "n_positive": str(self.n_positive), "n_negative": str(self.n_negative),
                "meta": json.dumps(self.meta, default=str)}
        return atomic_write_bytes(path, save({"vector": self.vector.detach().float().contiguous()}, metadata=head))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PersonaVector":
        """Read a vector written by :meth:`save`."""
        path = Path(path)
        if not _is_saved_vector(path):
            raise BadInput(f"{str(path)!r} is not a PersonaVector file (write one with PersonaVector.save)")
        m, tensors = read_safetensors(path)
        v = tensors["vector"]
        return cls(v, m["hook_name"], m["scope"], m["name"], int(m["n_positive"]), int(m["n_negative"]),
                   json.loads(m.get("meta", "{}")))

    def __repr__(self) -> str:
        return (f"PersonaVector({self.name!r} at {self.hook_name!r}, scope={self.scope!r}, norm={self.norm:.3g}, "
                f"tokens {self.n_positive}/{self.n_negative})")


def _is_saved_vector(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return read_safetensors(path, tensors=False)[0].get("format") == _FORMAT
    except BadInput:
        return False


def as_vector(vector: "PersonaVector | Tensor", name: str = "vector", d_model: int | None = None) -> Float[Tensor, " d_model"]:
    """The float ``[d_model]`` tensor of a :class:`PersonaVector` or any 1-D vector, checked
    (finite, non-zero, of width ``d_model`` when given)."""
    v = vector.vector if isinstance(vector, PersonaVector) else vector
    if not isinstance(v, Tensor):
        try:
            v = torch.as_tensor(v)
        except Exception:
            raise BadInput(f"{name}={type(vector).__name__} is not a vector; pass a PersonaVector or a [d_model] tensor") from None
    v = finite_tensor(v.detach().float(), name)
    if v.ndim != 1 or v.numel() == 0:
        raise BadInput(f"{name} must be one vector of shape [d_model], got shape {tuple(v.shape)}")
    if d_model is not None and v.shape[0] != d_model:
        raise BadInput(f"{name} has width {v.shape[0]} but the SAE / model has width {d_model}; use a vector "
                       "taken at the same hook of the same model")
    if float(v.norm()) == 0.0:
        raise BadInput(f"{name} is the zero vector; it has no direction")
    return v


def _hooks(adapter: Any, hook_name: str | Sequence[str] | None, layers: Sequence[int] | None) -> list[str]:
    if hook_name is not None and layers is not None:
        raise BadInput("pass hook_name or layers, not both")
    if layers is not None:
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        names = []
        for L in layers:
            if isinstance(L, bool) or not isinstance(L, int) or not 0 <= L < adapter.n_layers:
                raise BadInput(f"layers: {L!r} is not a layer index of this model (0..{adapter.n_layers - 1})")
            names.append(adapter.resid_hook(L, "post"))
    elif hook_name is None:
        raise BadInput("pass hook_name='blocks.N.hook_resid_post' (or a list of them), or layers=[...]")
    else:
        names = [hook_name] if isinstance(hook_name, str) else list(hook_name)
    if not names:
        raise BadInput("no hook given; pass at least one hook name or layer")
    return [adapter.check_hook(h) for h in names]


def mean_activations(
    model: Any,
    prompts: PromptsLike,
    hook_names: str | Sequence[str],
    *,
    scope: Scope = "response",
    batch_size: int = 16,
) -> dict[str, tuple[Float[Tensor, " d_model"], int]]:
    """Token-pooled mean activation at each hook over ``prompts`` (positions of ``scope``), with the
    number of tokens averaged: ``{hook: (mean, n_tokens)}``. One streamed forward per batch serves
    all hooks (the pass stops after the deepest one)."""
    from tl_persona.diff import collect

    scope = check_scope(scope)
    adapter = as_adapter(model)
    names = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    encs = {}
    for h in names:
        d = adapter.width_at(adapter.check_hook(h))
        encs[h] = Projection(torch.eye(d), h, normalize=False, names=[str(i) for i in range(d)])
    stats = collect(adapter, encs, prompts, scope=scope, batch_size=positive_int(batch_size, "batch_size"))
    return {h: (s.mean.double(), int(s.n)) for h, s in stats.items()}  # type: ignore[union-attr]


def persona_vectors(
    model: Any,
    positive: PromptsLike,
    negative: PromptsLike,
    *,
    hook_name: str | Sequence[str] | None = None,
    layers: Sequence[int] | int | None = None,
    scope: Scope = "response",
    name: str = "persona vector",
    batch_size: int = 16,
) -> dict[str, PersonaVector]:
    """Difference-of-means vectors (mean over ``positive`` minus mean over ``negative``) at several
    hooks, keyed by hook name. ``layers`` is short for the residual stream after those blocks.

    Why: Chen et al.'s persona vector. ``positive``: text showing the trait (chats answered by the
    persona, or prompts under an eliciting system prompt); ``negative``: the same without it. Use
    ``scope="response"`` on prompt + response pairs, ``"last_prompt"`` for where the answer is
    decided. Compare layers with :func:`layer_norms`.
    """
    adapter = as_adapter(model)
    names = _hooks(adapter, hook_name, layers)
    scope = check_scope(scope)
    pos, neg = as_prompt_set(positive), as_prompt_set(negative)
    mp = mean_activations(adapter, pos, names, scope=scope, batch_size=batch_size)
    mn = mean_activations(adapter, neg, names, scope=scope, batch_size=batch_size)
    meta = {"positive_hash": pos.content_hash, "negative_hash": neg.content_hash,
            "n_positive_prompts": len(pos), "n_negative_prompts": len(neg), "model": adapter.name}
    return {h: PersonaVector((mp[h][0] - mn[h][0]).float(), h, scope, name, mp[h][1], mn[h][1], dict(meta))
            for h in names}


def persona_vector(
    model: Any,
    positive: PromptsLike,
    negative: PromptsLike,
    *,
    hook_name: str,
    scope: Scope = "response",
    name: str = "persona vector",
    batch_size: int = 16,
) -> PersonaVector:
    """The difference-of-means vector at one hook: mean activation over ``positive`` minus mean over
    ``negative`` (see :func:`persona_vectors`)."""
    if not isinstance(hook_name, str):
        raise BadInput(f"hook_name={hook_name!r} must be one hook name; use persona_vectors for several")
    return persona_vectors(model, positive, negative, hook_name=hook_name, scope=scope, name=name,
                           batch_size=batch_size)[hook_name]


def model_diff_vector(
    base: Any,
    finetuned: Any,
    prompts: PromptsLike,
    *,
    hook_name: str,
    scope: Scope = "last_prompt",
    name: str = "model diff",
    batch_size: int = 16,
) -> PersonaVector:
    """The mean activation of ``finetuned`` minus that of ``base`` on the same ``prompts`` at one
    hook: the mean-difference direction of model-organisms-for-EM (Soligo et al.). Both models run
    on each batch, up to the hook, through :func:`tl_persona.diff.diff_latents`."""
    from tl_persona.diff import diff_latents

    a = as_adapter(base)
    h = a.check_hook(hook_name)
    d = a.width_at(h)
    ps = as_prompt_set(prompts)
    res = diff_latents(base, finetuned, Projection(torch.eye(d), h, normalize=False, names=[str(i) for i in range(d)]),
                       ps, scope=check_scope(scope), batch_size=positive_int(batch_size, "batch_size"), per_prompt_top=0)
    meta = {"prompts_hash": ps.content_hash, "base": a.name, "finetuned": as_adapter(finetuned).name}
    n = int(res.n_tokens)  # type: ignore[union-attr]
    return PersonaVector(res.delta.float(), h, scope, name, n, n, meta)  # type: ignore[union-attr]


def layer_norms(vectors: Mapping[str, PersonaVector] | Sequence[PersonaVector]) -> Any:
    """A table (pandas) of each vector's hook, layer and norm, and its cosine with the vector of the
    previous row (how much the direction turns from layer to layer), in layer order."""
    import pandas as pd

    vs = list(vectors.values()) if isinstance(vectors, Mapping) else list(vectors)
    if not vs:
        raise BadInput("vectors is empty; pass the result of persona_vectors")
    vs.sort(key=lambda v: (v.layer if v.layer is not None else -1, v.hook_name))
    rows, prev = [], None
    for v in vs:
        cos = float(torch.nn.functional.cosine_similarity(v.vector, prev, dim=0)) if prev is not None \
            and prev.shape == v.vector.shape else float("nan")
        rows.append({"hook_name": v.hook_name, "layer": v.layer, "norm": v.norm, "cos_prev": cos})
        prev = v.vector
    return pd.DataFrame(rows)


def decoder_cosines(vector: PersonaVector | Float[Tensor, " d_model"], sae: Any) -> Float[Tensor, " d_sae"]:
    """The cosine of ``vector`` with every decoder row of ``sae``: which latents write along it."""
    W = sae.W_dec.detach().float()
    v = as_vector(vector, "vector", sae_d_in(sae)).to(W.device)
    norms = W.norm(dim=-1)
    cos = (W @ v) / (norms * v.norm()).clamp_min(1e-12)
    return torch.where(norms > 0, cos, torch.zeros_like(cos)).cpu()


def top_decoder_latents(vector: PersonaVector | Float[Tensor, " d_model"], sae: Any, k: int = 10,
                        direction: Literal["increase", "decrease", "both"] = "both") -> Any:
    """The ``k`` latents whose decoder rows are most aligned with ``vector`` (``"increase"``: largest
    cosine, ``"decrease"``: most negative, ``"both"``: largest absolute cosine) as a pandas table
    with columns ``latent`` and ``cosine``."""
    import pandas as pd

    k = positive_int(k, "k")
    if direction not in ("increase", "decrease", "both"):
        raise BadInput(f"direction={direction!r} must be 'increase', 'decrease' or 'both'")
    cos = decoder_cosines(vector, sae)
    key = {"increase": cos, "decrease": -cos, "both": cos.abs()}[direction]
    idx = torch.sort(key, descending=True, stable=True).indices[: min(k, len(cos))]
    return pd.DataFrame({"latent": idx.tolist(), "cosine": cos[idx].tolist()})
