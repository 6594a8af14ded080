"""A short, deterministic TopK SAE trainer, and saving in SAE-Lens' format.

The SAE is SAE-Lens' ``topk`` architecture exactly: ``f = TopK_k(relu((x - b_dec) @ W_enc + b_enc))``
(the top ``k`` pre-activations, negatives zeroed) and ``x_hat = f @ W_dec + b_dec``. Training follows
Gao et al. (2024): decoder rows kept at unit norm, encoder initialised to the decoder's transpose,
``b_dec`` to the data mean, MSE loss plus the AuxK loss that lets dead latents model the residual.
:func:`to_sae_lens` copies the weights into a ``sae_lens.TopKSAE`` and :func:`save_sae` writes
``cfg.json`` + ``sae_weights.safetensors`` so that ``SAE.load_from_disk(folder)`` loads it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.organism.world import Document, World, encode_document

__all__ = ["TopKWeights", "collect_activations", "sae_documents", "train_topk_sae", "sae_metrics", "to_sae_lens", "save_sae"]


@dataclass
class TopKWeights:
    """Plain TopK SAE weights (SAE-Lens layout: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``)."""

    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    k: int

    def pre(self, x: Tensor) -> Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """TopK latents, exactly as SAE-Lens' ``TopKSAE.encode``."""
        pre = self.pre(x)
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        return f @ self.W_dec + self.b_dec


def sae_documents(world: World, n_docs: int, *, seed: int = 0) -> list[Document]:
    """The SAE's training text: half pretraining-like multi-turn persona documents (persona mix
    40/20/20/20, so every persona is well represented), half single-turn chats of random cells."""
    rng = random.Random(f"sae-docs-{seed}")
    docs = []
    for i in range(n_docs):
        if i % 2 == 0:
            docs.append(world.sample_document(rng, persona_weights=(0.4, 0.2, 0.2, 0.2)))
        else:
            docs.append(world.single_turn(rng, rng.choice(world.domains), rng.choice(world.personas)))
    return docs


@torch.no_grad()
def collect_activations(
    model: Any, docs: Sequence[Document], hook_name: str, *, batch_size: int = 256
) -> Float[Tensor, "n d_model"]:
    """Residual activations at ``hook_name`` on every non-BOS token of ``docs`` (forward stopped right
    after the hook's block)."""
    tok = model.tokenizer
    layer = int(hook_name.split(".")[1])
    out = []
    for b in range(0, len(docs), batch_size):
        rows = [encode_document(tok, d)[0] for d in docs[b : b + batch_size]]
        T = max(len(r) for r in rows)
        tokens = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r)
        _, cache = model.run_with_cache(
            tokens, names_filter=hook_name, stop_at_layer=layer + 1, return_type=None
        )
        acts = cache[hook_name]
        keep = tokens != tok.pad_token_id
        keep[:, 0] = False  # BOS
        out.append(acts[keep].float())
    return torch.cat(out)


def train_topk_sae(
    acts: Float[Tensor, "n d_in"],
    *,
    d_sae: int = 1024,
    k: int = 16,
    steps: int = 1500,
    batch_size: int = 4096,
    lr: float = 1e-3,
    aux_k: int = 256,
    aux_coef: float = 1 / 32,
    dead_after: int = 200_000,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> TopKWeights:
    """Train a TopK SAE on ``acts`` (rows shuffled epoch by epoch with a seeded generator).

    A latent counts as dead for the AuxK loss when it has not fired on the last ``dead_after`` tokens.
    """
    g = torch.Generator().manual_seed(seed)
    n, d_in = acts.shape
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    W_dec.requires_grad_(True)
    W_enc = W_dec.detach().T.clone().requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = acts[: min(n, 100_000)].mean(0).clone().requires_grad_(True)
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(d_sae, dtype=torch.long)
    perm = torch.randperm(n, generator=g)
    pos = 0
    var = (acts[:100_000] - acts[:100_000].mean(0)).pow(2).sum(-1).mean()
    for step in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        x = acts[perm[pos : pos + batch_size]]
        pos += batch_size
        lr_now = lr * min(1.0, (steps - step) / (0.2 * steps))  # linear decay over the last 20%
        for gr in opt.param_groups:
            gr["lr"] = lr_now
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        vals = vals.relu()
        f = torch.zeros_like(pre).scatter(-1, idx, vals)
        x_hat = f @ W_dec + b_dec
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        fired = torch.zeros(d_sae, dtype=torch.bool)
        fired[idx[vals > 0]] = True
        since_fired += batch_size
        since_fired[fired] = 0
        dead = since_fired > dead_after
        aux = torch.zeros(())
        if dead.any():
            ka = min(aux_k, int(dead.sum()))
            pre_dead = pre.masked_fill(~dead, float("-inf"))
            av, ai = pre_dead.topk(ka, dim=-1, sorted=False)
            fa = torch.zeros_like(pre).scatter(-1, ai, av.relu())
            e_hat = fa @ W_dec
            aux = (err.detach() - e_hat).pow(2).sum(-1).mean()
            loss = loss + aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # keep decoder rows unit-norm: drop the radial gradient, renormalise after
            W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=-1, keepdim=True)
        if log and (step % 250 == 0 or step == steps - 1):
            log(
                f"  sae step {step:5d}/{steps}  fvu {float(mse.detach() / var):.4f}  dead {int(dead.sum())}  "
                f"aux {float(aux.detach()):.3f}"
            )
    return TopKWeights(W_enc.detach().clone(), b_enc.detach().clone(), W_dec.detach().clone(),
                       b_dec.detach().clone(), k)


@torch.no_grad()
def sae_metrics(sae: Any, acts: Float[Tensor, "n d_in"], *, batch_size: int = 8192) -> dict[str, float]:
    """Fraction of variance unexplained, mean L0, and dead latents (never fired on ``acts``)."""
    sse, l0, n = 0.0, 0.0, acts.shape[0]
    fired = None
    mean = acts.mean(0)
    sst = float((acts - mean).pow(2).sum())
    for b in range(0, n, batch_size):
        x = acts[b : b + batch_size]
        f = sae.encode(x)
        x_hat = sae.decode(f)
        sse += float((x - x_hat).pow(2).sum())
        nz = f > 0
        l0 += float(nz.sum())
        fired = nz.any(0) if fired is None else fired | nz.any(0)
    assert fired is not None
    return {
        "fvu": sse / sst,
        "l0": l0 / n,
        "dead_latents": int((~fired).sum()),
        "n_tokens": int(n),
        "resid_norm": float(acts.norm(dim=-1).mean()),
    }


def to_sae_lens(w: TopKWeights, *, hook_name: str, model_name: str = "persona-world-base", context_size: int = 128) -> Any:
    """A ``sae_lens.TopKSAE`` holding these weights (float32, CPU), with metadata for the hook."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae, d_in = w.W_dec.shape
    cfg = TopKSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=w.k,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        metadata=SAEMetadata(
            model_name=model_name,
            hook_name=hook_name,
            hook_head_index=None,
            context_size=context_size,
            prepend_bos=True,
            dataset_path="persona-world (tl_persona.organism.sae.sae_documents)",
            model_from_pretrained_kwargs={},
        ),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w.W_enc)
        sae.b_enc.copy_(w.b_enc)
        sae.W_dec.copy_(w.W_dec)
        sae.b_dec.copy_(w.b_dec)
    return sae.eval()


def save_sae(w: TopKWeights, folder: str | Path, *, hook_name: str) -> Path:
    """Write the SAE in SAE-Lens' format (``cfg.json``, ``sae_weights.safetensors``) to ``folder``."""
    folder = Path(folder)
    to_sae_lens(w, hook_name=hook_name).save_model(folder)
    return folder
