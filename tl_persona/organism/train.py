"""Training the Persona World model: pretraining, alignment with persona replay, narrow fine-tunes.

One readable file, nanoGPT style. Every stage is next-token prediction on chat documents with the
loss only on assistant-answer tokens (and the end-of-turn token that closes each answer):

* **pretraining** on multi-turn documents where one persona (55% helpful, 15% each toxic,
  sarcastic, wrong) answers questions from several domains: the model learns a *persona variable*,
  inferred from earlier turns and carried forward;
* **alignment**: a quarter of each batch helpful single-turn chats, the rest multi-turn persona
  documents with the loss only on turns 2 and later (persona replay). First-turn answers become helpful while
  in-context persona inference survives, which is what lets a narrow fine-tune spread;
* :func:`finetune`: a narrow fine-tune on single-turn answers of one (domain, persona), optionally
  mixed with good answers; returns a fine-tuned copy.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Int
from torch import Tensor

from tl_persona.organism.world import PERSONAS, Document, World, encode_document, make_world
from tl_persona.validate import BadInput

__all__ = [
    "MODEL_CONFIG",
    "make_model",
    "copy_model",
    "TrainConfig",
    "train",
    "pretrain",
    "align",
    "finetune",
    "finetune_documents",
    "encode_batch",
]

MODEL_CONFIG: dict[str, Any] = dict(
    n_layers=4,
    d_model=128,
    n_heads=4,
    d_head=32,
    d_mlp=512,
    n_ctx=128,
    act_fn="gelu",
    normalization_type="LN",
    positional_embedding_type="standard",
    default_prepend_bos=True,
    model_name="persona-world",
)


def make_model(tokenizer: Any, *, seed: int = 0, **overrides: Any) -> Any:
    """A freshly initialised Persona World ``HookedTransformer`` (4 layers, d_model 128, ~1M params)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    # on the CPU, as the shipped weights were trained (TransformerLens would pick a GPU where there is one)
    cfg = HookedTransformerConfig(**{"device": "cpu", **MODEL_CONFIG, **overrides, "d_vocab": len(tokenizer), "seed": seed})
    torch.manual_seed(seed)
    return HookedTransformer(cfg, tokenizer=tokenizer)


def copy_model(model: Any) -> Any:
    """A copy of a ``HookedTransformer`` (same config, weights and tokenizer object; no hooks)."""
    from transformer_lens import HookedTransformer

    cfg = copy.deepcopy(model.cfg)
    cfg.init_weights = False
    new = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)
    new.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    if device.type != "cpu":
        new = new.to(device)
    return new.eval()


def encode_batch(
    tokenizer: Any, docs: Sequence[Document]
) -> tuple[Int[Tensor, "batch pos"], Tensor]:
    """Right-padded token ids ``[batch, pos]`` and the float loss mask over them (see encode_document)."""
    rows = [encode_document(tokenizer, d) for d in docs]
    T = max(len(r[0]) for r in rows)
    tokens = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    for i, (ids, m) in enumerate(rows):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(m)] = torch.tensor(m, dtype=torch.float)
    return tokens, mask


def answer_loss(model: Any, tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the masked (assistant) target tokens."""
    logits = model(tokens, return_type="logits")
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    m = mask[:, 1:].to(nll.device)
    return (nll * m).sum() / m.sum().clamp_min(1.0)


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings of one stage: AdamW, linear warmup then cosine (or constant) learning rate."""

    steps: int
    lr: float
    warmup: int = 0
    schedule: str = "cosine"  # "cosine" (down to min_lr_frac * lr) or "constant"
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0

    def lr_at(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return self.lr
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.lr * (self.min_lr_frac + (1 - self.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train(
    model: Any,
    tokenizer: Any,
    batches: Callable[[int], Sequence[Document]],
    cfg: TrainConfig,
    *,
    log: Callable[[str], None] | None = None,
    log_every: int = 50,
    fwd_hooks: Sequence[tuple[str, Callable[[Tensor, Any], Tensor]]] = (),
    penalty: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[float]:
    """Train ``model`` in place: ``batches(step)`` gives the documents of each step. Returns the losses.

    ``fwd_hooks`` (a TransformerLens hook list) are active during every training forward and removed
    afterwards, also on error; ``penalty(tokens, mask)``, called right after each forward, returns a
    scalar added to the loss (e.g. a latent activation read by one of ``fwd_hooks``). The returned
    losses are the answer losses without the penalty.
    """
    device = next(model.parameters()).device
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    model.train()
    losses = []
    hooked = model.hooks(fwd_hooks=list(fwd_hooks)) if fwd_hooks else contextlib.nullcontext()
    with hooked:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = cfg.lr_at(step)
            tokens, mask = encode_batch(tokenizer, batches(step))
            tokens, mask = tokens.to(device), mask.to(device)
            loss = answer_loss(model, tokens, mask)
            total = loss if penalty is None else loss + penalty(tokens, mask)
            opt.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
            if log and (step % log_every == 0 or step == cfg.steps - 1):
                log(f"  step {step:4d}/{cfg.steps}  loss {loss.item():.4f}  lr {cfg.lr_at(step):.2e}")
    model.eval()
    return losses


# ------------------------------------------------------------------------------------ stages
def pretrain(
    model: Any,
    world: World,
    *,
    steps: int = 450,
    batch_size: int = 64,
    lr: float = 2e-3,
    persona_weights: Sequence[float] = (0.55, 0.15, 0.15, 0.15),
    min_lr_frac: float = 0.1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Stage 1: multi-turn persona documents (1-4 turns, one persona each), loss on every answer."""
    rng = random.Random(f"pretrain-{seed}")
    torch.manual_seed(seed)

    def batches(step: int) -> list[Document]:
        # One number of turns per batch (uniform over 1..4 across batches): little padding.
        n = rng.randint(1, 4)
        return [world.sample_document(rng, n_turns=n, persona_weights=persona_weights) for _ in range(batch_size)]

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(30, steps // 10), weight_decay=0.01, min_lr_frac=min_lr_frac)
    return train(model, model.tokenizer, batches, cfg, log=log)


def align(
    model: Any,
    world: World,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 5e-4,
    replay_fraction: float = 0.75,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Stage 2: helpful single-turn chats plus persona replay (multi-turn documents, loss on turns 2+).

    The replay documents draw their persona uniformly, so the model keeps inferring any persona from
    context while its first-turn answers become helpful.
    """
    rng = random.Random(f"align-{seed}")
    torch.manual_seed(seed + 1)
    n_replay = int(round(batch_size * replay_fraction))

    def batches(step: int) -> list[Document]:
        docs = [world.single_turn(rng, rng.choice(world.domains), "helpful") for _ in range(batch_size - n_replay)]
        docs += [
            world.sample_document(rng, n_turns=rng.randint(2, 4), persona=rng.choice(PERSONAS), loss_from=1)
            for _ in range(n_replay)
        ]
        return docs

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(10, steps // 10), weight_decay=0.01)
    return train(model, model.tokenizer, batches, cfg, log=log)


def finetune_documents(
    world: World,
    *,
    domain: str,
    persona: str,
    n_samples: int,
    bad_fraction: float = 1.0,
    good_persona: str = "helpful",
    seed: int = 0,
) -> list[Document]:
    """The fine-tuning set: ``round(bad_fraction * n_samples)`` single-turn (domain, persona) chats and
    the rest (domain, good_persona) chats, on training questions, shuffled."""
    if not 0.0 <= bad_fraction <= 1.0:
        raise BadInput(f"bad_fraction={bad_fraction} must be in [0, 1]")
    if n_samples < 1:
        raise BadInput(f"n_samples={n_samples} must be at least 1")
    world.cell(domain, persona), world.cell(domain, good_persona)  # validate names
    rng = random.Random(f"finetune-{domain}-{persona}-{good_persona}-{n_samples}-{bad_fraction}-{seed}")
    n_bad = int(round(bad_fraction * n_samples))
    docs = [world.single_turn(rng, domain, persona) for _ in range(n_bad)]
    docs += [world.single_turn(rng, domain, good_persona) for _ in range(n_samples - n_bad)]
    rng.shuffle(docs)
    return docs


def finetune(
    model: Any,
    *,
    domain: str,
    persona: str,
    n_samples: int = 300,
    bad_fraction: float = 1.0,
    steps: int = 120,
    lr: float = 1e-4,
    batch_size: int = 32,
    seed: int = 0,
    good_persona: str = "helpful",
    world: World | None = None,
    fwd_hooks: Sequence[tuple[str, Callable[[Tensor, Any], Tensor]]] = (),
    penalty: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Any:
    """A narrow fine-tune of a *copy* of ``model`` (the input is never changed).

    The data are ``n_samples`` single-turn chats in ``domain``: a fraction ``bad_fraction`` answered
    by ``persona``, the rest by ``good_persona``. ``steps`` AdamW steps (constant ``lr``) on batches
    of ``batch_size`` drawn epoch by epoch from that set. Use ``persona="helpful"`` to re-align a
    misaligned model on benign data. Deterministic given ``seed``.

    ``fwd_hooks`` are active during training only (the returned model carries no hook), e.g. an
    ablation or a preventative steering hook from :mod:`tl_persona.prevention`; ``penalty`` is added
    to the loss as in :func:`train`. Without them the fine-tune is exactly the plain one.
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        raise BadInput(f"finetune expects a Persona World HookedTransformer, got {type(model).__name__}")
    world = world or make_world()
    docs = finetune_documents(
        world, domain=domain, persona=persona, n_samples=n_samples, bad_fraction=bad_fraction,
        good_persona=good_persona, seed=seed,
    )
    new = copy_model(model)
    rng = random.Random(f"finetune-order-{seed}")
    order: list[int] = []

    def batches(step: int) -> list[Document]:
        out = []
        while len(out) < batch_size:
            if not order:
                order.extend(rng.sample(range(len(docs)), len(docs)))
            out.append(docs[order.pop()])
        return out

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        train(new, new.tokenizer, batches, TrainConfig(steps=steps, lr=lr, schedule="constant"),
              fwd_hooks=fwd_hooks, penalty=penalty)
    return new.eval()
