"""Tiny models, tokenizers and SAEs built from configs, for tests, examples and benchmarks.

Nothing here downloads anything: models are random-weight TransformerLens models built from a
``HookedTransformerConfig``, or GPT-2 configs saved to a local folder and booted as a
``TransformerBridge``; SAEs are SAE-Lens SAEs built from their config classes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import torch

__all__ = ["word_tokenizer", "tiny_hooked_transformer", "tiny_bridge", "tiny_sae", "WORDS"]

WORDS = [f"w{i}" for i in range(90)]
_SPECIALS = ["<bos>", "<pad>", "<eot>", "<user>", "<assistant>", "<system>"]
_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def word_tokenizer(words: list[str] | None = None, folder: str | os.PathLike | None = None) -> Any:
    """A whitespace word-level Hugging Face tokenizer with BOS/PAD/EOT and a small chat template.

    It is saved to ``folder`` (a fresh temporary folder by default) and loaded back with
    ``from_pretrained``, since TransformerLens' ``set_tokenizer`` reloads tokenizers by path.
    """
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(_SPECIALS + list(words or WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eot>", pad_token="<pad>", unk_token="<pad>"
    )
    fast.chat_template = _CHAT_TEMPLATE
    folder = Path(folder or tempfile.mkdtemp(prefix="tl_persona_tok_"))
    fast.save_pretrained(folder)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def tiny_hooked_transformer(tokenizer: Any = None, *, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Any:
    """A random ``HookedTransformer`` (GPT-2-like: LayerNorm, learned positions) with the word tokenizer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = tokenizer or word_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_ctx=64, d_head=8, n_heads=d_model // 8, d_mlp=4 * d_model,
        d_vocab=len(tokenizer), act_fn="gelu", normalization_type="LN", seed=seed,
        default_prepend_bos=True,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    return model.eval()


def tiny_bridge(folder: str | os.PathLike, tokenizer: Any = None, *, n_layers: int = 3, d_model: int = 32, seed: int = 0) -> Any:
    """A random tiny GPT-2 saved to ``folder`` with the word tokenizer and booted as a ``TransformerBridge``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformer_lens.model_bridge import TransformerBridge

    tokenizer = tokenizer or word_tokenizer()
    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layers, n_embd=d_model, n_head=d_model // 8, vocab_size=len(tokenizer), n_positions=64,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    bridge = TransformerBridge.boot_transformers(str(folder), device="cpu")
    return bridge.eval()


def tiny_sae(
    architecture: Literal["standard", "topk", "jumprelu"] = "standard",
    *, d_in: int = 32, d_sae: int = 64, hook_name: str | None = None, k: int = 8, seed: int = 0,
) -> Any:
    """A SAE-Lens SAE built from its config class with random (but firing) weights."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    g = torch.Generator().manual_seed(seed)
    if architecture == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    elif architecture == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    elif architecture == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    else:
        raise ValueError(f"architecture={architecture!r} must be 'standard', 'topk' or 'jumprelu'")
    with torch.no_grad():
        W = torch.randn(d_sae, d_in, generator=g)
        W = W / W.norm(dim=-1, keepdim=True)
        sae.W_dec.copy_(W)
        sae.W_enc.copy_(W.T)
        sae.b_enc.copy_(-0.05 * torch.rand(d_sae, generator=g))
        sae.b_dec.copy_(0.01 * torch.randn(d_in, generator=g))
        if architecture == "jumprelu":
            sae.threshold.copy_(0.05 * torch.rand(d_sae, generator=g))
    if hook_name is not None:
        sae.cfg.metadata.hook_name = hook_name
    return sae.eval()
