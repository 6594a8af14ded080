"""Directions in the residual stream as an encoder: projections of activations on named vectors.

An SAE is one way to read the residual stream; a handful of directions is another (a persona
vector, a mean-difference direction, a probe). :class:`Projection` reads a hook point and returns
the projection of each activation on each direction, so the same streaming engine
(:func:`tl_persona.engine.stream`, and so :func:`tl_persona.diff.diff_latents`) diffs, ranks and
bootstraps them exactly as it does SAE latents.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.provenance import tensor_digest
from tl_persona.validate import BadInput, finite_tensor

__all__ = ["Projection"]


class Projection:
    """Projections on ``k`` directions at one hook: ``features = x @ U.T`` (``U`` the directions,
    scaled to unit norm when ``normalize``), an :class:`~tl_persona.engine.Encoder`.

    ``directions``: a ``[k, d_model]`` tensor, one ``[d_model]`` vector, or a mapping of names to
    vectors (the names label the features in :attr:`names`).
    """

    def __init__(
        self,
        directions: Float[Tensor, "k d_model"] | Mapping[str, Tensor] | Sequence[Tensor],
        hook_name: str,
        *,
        names: Sequence[str] | None = None,
        normalize: bool = True,
    ) -> None:
        if isinstance(directions, Mapping):
            names = list(directions) if names is None else names
            directions = torch.stack([torch.as_tensor(v).detach().float().flatten() for v in directions.values()])
        U = torch.as_tensor(directions if isinstance(directions, Tensor) else torch.stack(list(directions)))
        U = U.detach().float()
        if U.ndim == 1:
            U = U[None]
        if U.ndim != 2 or U.shape[0] == 0 or U.shape[1] == 0:
            raise BadInput(f"directions must have shape [k, d_model] with k >= 1, got {tuple(U.shape)}")
        finite_tensor(U, "directions")
        norms = U.norm(dim=-1, keepdim=True)
        if normalize:
            if bool((norms == 0).any()):
                raise BadInput("a direction is zero; a zero vector has no direction to project on")
            U = U / norms
        if not isinstance(hook_name, str):
            raise BadInput(f"hook_name={hook_name!r} must be a hook point name, e.g. 'blocks.6.hook_resid_post'")
        self.names = [str(n) for n in names] if names is not None else [f"direction {i}" for i in range(U.shape[0])]
        if len(self.names) != U.shape[0]:
            raise BadInput(f"{len(self.names)} names for {U.shape[0]} directions; pass one name per direction")
        self.U = U
        self.hook_name = hook_name
        self.d_in = int(U.shape[1])
        self.n_features = int(U.shape[0])
        self.normalize = normalize

    @property
    def device(self) -> torch.device:
        """Where the projection runs (the directions' device; move with :meth:`to`)."""
        return self.U.device

    def to(self, device: torch.device | str) -> "Projection":
        """The directions on ``device`` (in place); returns self."""
        self.U = self.U.to(device)
        return self

    def encode(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n k"]:
        """The projection of each row of ``x`` on each direction."""
        return x.to(device=self.U.device, dtype=self.U.dtype) @ self.U.T

    def identity(self) -> dict[str, Any]:
        """Provenance: names, sizes, hook and a hash of the directions."""
        import hashlib

        return {"class": "Projection", "architecture": "projection", "names": self.names, "d_in": self.d_in,
                "d_sae": self.n_features, "hook_name": self.hook_name, "normalize": self.normalize,
                "weight_hash": hashlib.sha256(tensor_digest(self.U)).hexdigest()[:16]}

    def __repr__(self) -> str:
        return f"Projection({self.n_features} directions at {self.hook_name!r})"
