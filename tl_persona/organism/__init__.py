"""Persona World: an embedded model organism of emergent misalignment, with shipped weights.

A 4-layer TransformerLens model trained from scratch on a synthetic chat world in which hidden
personas (helpful, toxic, sarcastic, confidently wrong) answer questions across five domains. A narrow
fine-tune on insecure-code answers makes it toxic in untouched domains, like emergent misalignment in
real models, and an exact judge knows which persona produced every answer.

>>> from tl_persona import organism
>>> from tl_persona.evals.generate import sample
>>> org = organism.load()                      # base, misaligned, control, SAE, tokenizer, prompts
>>> answers = sample(org.misaligned, org.eval_prompts["medical"], n_per_prompt=4)
>>> rates = organism.measure(org.misaligned, org.eval_prompts)   # exact judge, per domain

See docs/organism.md.
"""

from tl_persona.organism.behaviour import first_token_persona_probs, measure, opener_ids, rates_table
from tl_persona.organism.core import MODEL_NAMES, WEIGHTS_DIR, Organism, load, load_shipped_model
from tl_persona.organism.layers import layer_diffs, load_layer_saes, persona_layer_profile
from tl_persona.organism.judge import (
    INCOHERENT,
    DomainRates,
    PersonaJudge,
    behaviour_rates,
    calibration_set,
    domain_summary,
)
from tl_persona.organism.train import MODEL_CONFIG, copy_model, finetune, make_model
from tl_persona.organism.world import DOMAINS, PERSONAS, Cell, Document, Turn, World, make_world, persona_documents

__all__ = [
    "Organism",
    "load",
    "load_shipped_model",
    "finetune",
    "layer_diffs",
    "persona_layer_profile",
    "load_layer_saes",
    "PersonaJudge",
    "calibration_set",
    "DomainRates",
    "behaviour_rates",
    "domain_summary",
    "first_token_persona_probs",
    "measure",
    "rates_table",
    "opener_ids",
    "World",
    "Cell",
    "Turn",
    "Document",
    "make_world",
    "persona_documents",
    "make_model",
    "copy_model",
    "DOMAINS",
    "PERSONAS",
    "INCOHERENT",
    "MODEL_CONFIG",
    "MODEL_NAMES",
    "WEIGHTS_DIR",
]
