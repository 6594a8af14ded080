"""Resolve model and SAE specs (hub names, local paths, the embedded organism) into objects.

Used by the CLI and handy in notebooks. A spec is one of:

* ``organism:base`` / ``organism:misaligned`` / ``organism:control`` and ``organism:sae``: the
  shipped Persona World weights (no hub needed);
* a local folder: a Hugging Face checkpoint (``config.json``), optionally a LoRA adapter folder
  (``adapter_config.json``, merged with ``peft`` into its base model), or an SAE-Lens SAE folder
  (``cfg.json``);
* a Hugging Face model name (``Qwen/Qwen2.5-7B-Instruct``) or an SAE-Lens ``release:sae_id``
  pair, which need the hub.

When the hub cannot be reached, the error says so and how to pass local paths instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["load_model", "load_sae", "HubUnavailable"]

ModelClass = Literal["hooked", "bridge"]


class HubUnavailable(RuntimeError):
    """Raised when a spec needs the Hugging Face hub and it cannot be reached."""


def _hub_error(spec: str, err: Exception, what: str) -> HubUnavailable:
    cause = (str(err).strip().splitlines() or [""])[0][:200]
    return HubUnavailable(
        f"could not load {what} {spec!r}: the Hugging Face hub is not reachable from here and it is not in "
        f"the local cache. Download it where the hub is reachable and pass a local path instead (a folder "
        f"with config.json for models, an SAE-Lens folder with cfg.json for SAEs), or use the embedded "
        f"organism ('organism:base', 'organism:sae'). Cause: {type(err).__name__}: {cause}"
    )


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(table)}")
    return table[dtype]


def load_model(
    spec: str,
    *,
    model_class: ModelClass = "hooked",
    base_name: str | None = None,
    processing: bool = False,
    device: str | None = None,
    dtype: str | torch.dtype = "float32",
) -> Any:
    """Load a model spec as a ``HookedTransformer`` (default) or a ``TransformerBridge``.

    ``processing=False`` (default) keeps the raw residual stream (``from_pretrained_no_processing``,
    or a bridge without compatibility processing), as SAEs trained on Hugging Face residuals need;
    set it for SAEs trained on processed TransformerLens models (e.g. GPT-2 ``gpt2-small-res-jb``).
    A fine-tuned checkpoint of an architecture TransformerLens knows by name is loaded as a
    ``HookedTransformer`` with ``base_name`` giving the official name (e.g. ``Qwen/Qwen2.5-7B-Instruct``)
    and the checkpoint's weights; LoRA adapter folders are merged into their base first.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _dtype(dtype)
    if spec.startswith("organism:"):
        from tl_persona import organism

        which = spec.split(":", 1)[1]
        org = organism.load(device=device)
        if which not in ("base", "misaligned", "control"):
            raise ValueError(f"{spec!r}: the organism has models 'base', 'misaligned' and 'control'")
        return getattr(org, which)
    path = Path(spec)
    if model_class not in ("hooked", "bridge"):
        raise ValueError(f"model_class={model_class!r} must be 'hooked' or 'bridge'")
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise ValueError(f"{spec!r} is a folder but has no config.json (Hugging Face checkpoint) or adapter_config.json (LoRA)")
        hf_model, tokenizer, name = _load_hf_folder(path, torch_dtype)
        if model_class == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(
                str(path) if hf_model is None else name, hf_model=hf_model, tokenizer=tokenizer,
                device=device, dtype=torch_dtype,
            )
            if processing:
                bridge.enable_compatibility_mode()
            return bridge.eval()
        from transformer_lens import HookedTransformer

        official = base_name or name
        loader = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
        try:
            return loader(official, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype).eval()
        except (OSError, ValueError) as err:
            raise ValueError(
                f"TransformerLens could not load the checkpoint {spec!r} as {official!r} ({err}); pass "
                "--base-name with the official model name of its architecture, or use --model-class bridge"
            ) from err
    try:
        if model_class == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(spec, device=device, dtype=torch_dtype)
            if processing:
                bridge.enable_compatibility_mode()
            return bridge.eval()
        from transformer_lens import HookedTransformer

        loader = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
        return loader(spec, device=device, dtype=torch_dtype).eval()
    except OSError as err:
        raise _hub_error(spec, err, "model") from err


def _load_hf_folder(path: Path, dtype: torch.dtype) -> tuple[Any, Any, str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (path / "adapter_config.json").exists():
        try:
            from peft import PeftModel
        except ImportError as err:
            raise ImportError(f"{path} is a LoRA adapter and merging it needs peft: `pip install peft` "
                              "(or `pip install tl-persona[lora]`), or pass a merged checkpoint folder") from err
        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        try:
            model = AutoModelForCausalLM.from_pretrained(base, torch_dtype=dtype)
            tok = AutoTokenizer.from_pretrained(base)
        except OSError as err:
            raise _hub_error(base, err, "LoRA base model") from err
        model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        return model, tok, base
    cfg = json.loads((path / "config.json").read_text())
    name = cfg.get("_name_or_path") or str(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path))
    return model, tok, name


def load_sae(spec: str, *, device: str | None = None, hook_name: str | None = None) -> Any:
    """Load an SAE spec: ``organism:sae``, a local SAE-Lens folder, or ``release:sae_id`` from the hub."""
    from sae_lens import SAE

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "organism:sae":
        from tl_persona import organism

        sae = organism.load(device=device).sae
    elif Path(spec).exists():
        if not (Path(spec) / "cfg.json").exists():
            raise ValueError(f"{spec!r} is not an SAE-Lens SAE folder (no cfg.json); save SAEs with sae.save_model(folder)")
        sae = SAE.load_from_disk(spec, device=device)
    elif ":" in spec:
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except (OSError, ValueError) as err:
            if isinstance(err, ValueError) and "release" in str(err).lower():
                raise ValueError(f"unknown SAE-Lens release or id in {spec!r}: {err}") from err
            raise _hub_error(spec, err, "SAE") from err
        sae = sae[0] if isinstance(sae, tuple) else sae
    else:
        raise ValueError(
            f"SAE spec {spec!r} is neither a local folder nor 'release:sae_id' (e.g. "
            "'gpt2-small-res-jb:blocks.8.hook_resid_pre') nor 'organism:sae'"
        )
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae.eval()
