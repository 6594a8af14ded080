"""tl_persona: persona features and emergent misalignment with TransformerLens and SAE-Lens.

The small public surface, importable from the top level (heavier modules load on first use)::

    from tl_persona import hooks, ModelAdapter, diff_latents, LatentDiff, verify_latents, latent_card
    from tl_persona import organism          # Persona World, the embedded model organism

Everything else lives in its module: ``tl_persona.saes``, ``tl_persona.data``, ``tl_persona.stats``,
``tl_persona.evals`` (generation, judges, metrics, questions), ``tl_persona.report``.
"""

from __future__ import annotations

import importlib
from typing import Any

from tl_persona import hooks
from tl_persona._version import __version__
from tl_persona.models import ModelAdapter, as_adapter

_LAZY = {
    "diff_latents": "tl_persona.diff",
    "collect": "tl_persona.diff",
    "LatentDiff": "tl_persona.diff",
    "verify_latents": "tl_persona.verify",
    "latent_card": "tl_persona.inspection",
    "top_activating": "tl_persona.inspection",
    "sample": "tl_persona.evals.generate",
}

__all__ = ["hooks", "ModelAdapter", "as_adapter", "organism", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name == "organism":
        return importlib.import_module("tl_persona.organism")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tl_persona' has no attribute {name!r}")
