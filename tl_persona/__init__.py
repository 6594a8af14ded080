"""tl_persona: persona features and emergent misalignment with TransformerLens and SAE-Lens."""

__version__ = "0.1.0"
