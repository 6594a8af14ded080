"""Loading the shipped organism: three models, the SAE, tokenizer, world and held-out prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_persona.organism.judge import PersonaJudge
from tl_persona.organism.layers import load_layer_saes
from tl_persona.organism.world import World, load_tokenizer, make_world

__all__ = ["Organism", "load", "WEIGHTS_DIR", "MODEL_NAMES", "load_shipped_model"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_NAMES = ("base", "misaligned", "control")


@dataclass(frozen=True)
class Organism:
    """The Persona World model organism.

    ``base`` is the aligned model; ``misaligned`` a narrow fine-tune on insecure-code (code/toxic)
    answers; ``control`` the same fine-tune on helpful code answers. ``sae`` is a SAE-Lens TopK SAE
    trained on ``base`` at ``hook_name``. ``eval_prompts`` holds held-out first-turn conversations
    per domain; ``judge`` is the exact :class:`PersonaJudge`; ``metrics`` the numbers the build
    measured (``metrics.json``). ``saes`` maps the hook name of every shipped SAE, in layer order, to
    its SAE-Lens SAE: ``sae`` itself at ``hook_name`` plus the per-layer SAEs of ``sae_layers/``
    (:mod:`tl_persona.organism.layers`; their metrics in ``sae_layers/metrics.json``).
    """

    base: Any
    misaligned: Any
    control: Any
    sae: Any
    hook_name: str
    tokenizer: Any
    world: World
    eval_prompts: dict[str, list[list[dict[str, str]]]]
    judge: PersonaJudge
    metrics: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    path: Path = WEIGHTS_DIR
    saes: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def models(self) -> dict[str, Any]:
        """``{"base": ..., "misaligned": ..., "control": ...}``."""
        return {"base": self.base, "misaligned": self.misaligned, "control": self.control}

    @property
    def trained_domain(self) -> str:
        """The domain of the narrow fine-tunes (``"code"``)."""
        return str(self.metrics.get("recipe", {}).get("finetune", {}).get("domain", "code"))


def _model_config(path: Path, device: str) -> Any:
    from transformer_lens import HookedTransformerConfig

    cfg = json.loads((path / "config.json").read_text())["model"]
    return HookedTransformerConfig(**{**cfg, "device": device, "init_weights": False})


def load_shipped_model(name: str, *, path: str | Path | None = None, device: str = "cpu", tokenizer: Any = None) -> Any:
    """Load one of the organism's models (``"base"``, ``"misaligned"`` or ``"control"``) in eval mode."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer

    path = Path(path) if path is not None else WEIGHTS_DIR
    if not (path / f"{name}.safetensors").exists():
        raise FileNotFoundError(
            f"no model {name!r} in {path}; rebuild the organism with `python -m tl_persona.organism.build`"
        )
    tokenizer = tokenizer or load_tokenizer(path / "tokenizer")
    model = HookedTransformer(_model_config(path, device), tokenizer=tokenizer, move_to_device=False)
    sd = {k: v.float() for k, v in load_file(str(path / f"{name}.safetensors")).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Only TransformerLens' non-parameter buffers (masks etc.) may be absent from the file.
    bad = [k for k in missing if not any(s in k for s in ("mask", "IGNORE"))]
    if bad or unexpected:
        raise RuntimeError(f"weights of {name!r} do not match the config: missing {bad}, unexpected {unexpected}")
    return model.to(device).eval() if str(device) != "cpu" else model.eval()


def load(device: str = "cpu", path: str | Path | None = None) -> Organism:
    """Load the organism (fresh objects on every call: mutate them freely).

    ``path`` defaults to the weights shipped in the package; pass a build's ``--out`` folder to load
    a rebuilt organism.
    """
    from sae_lens import SAE

    path = Path(path) if path is not None else WEIGHTS_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"no organism in {path}; build one with `python -m tl_persona.organism.build --out {path}`"
        )
    info = json.loads((path / "config.json").read_text())
    tokenizer = load_tokenizer(path / "tokenizer")
    world = make_world(int(info.get("world_seed", 0)))
    models = {n: load_shipped_model(n, path=path, device=device, tokenizer=tokenizer) for n in MODEL_NAMES}
    sae = SAE.load_from_disk(str(path / "sae"), device=device)
    hook_name = str(sae.cfg.metadata.hook_name)
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return Organism(
        base=models["base"],
        misaligned=models["misaligned"],
        control=models["control"],
        sae=sae,
        hook_name=hook_name,
        tokenizer=tokenizer,
        world=world,
        eval_prompts=world.eval_prompts(max_per_domain=int(info.get("eval_prompts_per_domain", 100))),
        judge=PersonaJudge(world),
        metrics=metrics,
        path=path,
        saes=load_layer_saes(path, sae, device=device),
    )
