"""Measuring the organism's behaviour: sampled answers judged exactly, and a low-variance estimator.

* :func:`measure` samples answers to held-out questions (temperature 1 by default), judges them with
  :class:`~tl_persona.organism.judge.PersonaJudge` and returns per-domain rates.
* :func:`first_token_persona_probs` reads the probability mass of each persona's opening words at
  the first answer position: no sampling noise, one forward per prompt length.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.models import as_adapter
from tl_persona.organism.judge import DomainRates, PersonaJudge, behaviour_rates
from tl_persona.organism.world import PERSONAS, World, make_world
from tl_persona.validate import BadInput

__all__ = ["first_token_persona_probs", "measure", "opener_ids"]


def opener_ids(tokenizer: Any, world: World | None = None) -> dict[str, list[int]]:
    """Token ids of each persona's answer-opening words (all domains), keyed by persona."""
    world = world or make_world()
    vocab = tokenizer.get_vocab()
    return {
        p: [vocab[o] for d in world.domains for o in world.cell(d, p).openers] for p in world.personas
    }


def first_token_persona_probs(
    model: Any,
    conversations: Sequence[Sequence[dict]],
    fwd_hooks: Sequence[tuple[str, Callable[[Tensor, Any], Tensor]]] | Callable[[Tensor], Sequence[Any]] = (),
    *,
    world: World | None = None,
    batch_size: int = 256,
) -> Float[Tensor, "n n_personas"]:
    """Probability of each persona's opening words at the first answer position, per conversation.

    Column order is ``world.personas`` (helpful, toxic, sarcastic, wrong); rows need not sum to 1
    (mass on other tokens is left out). Prompts are chat-formatted with a generation prompt and run
    in batches of equal length (no padding), under ``fwd_hooks`` (removed afterwards, also on error):
    a hook list, or a function ``rows -> hook list`` called per batch with the conversation indices
    of its rows (LongTensor), as in :func:`tl_persona.evals.generate.sample`.
    """
    world = world or make_world()
    adapter = as_adapter(model)
    ids = opener_ids(adapter.tokenizer, world)
    groups = [torch.tensor(ids[p]) for p in world.personas]
    rows = [adapter.encode_text(adapter.format_chat(list(c))) for c in conversations]
    out = torch.zeros(len(rows), len(world.personas))
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_len.setdefault(len(r), []).append(i)
    per_batch = callable(fwd_hooks)
    with torch.no_grad(), adapter.model.hooks(fwd_hooks=[] if per_batch else list(fwd_hooks)):  # type: ignore[arg-type]
        for length in sorted(by_len):
            idx = by_len[length]
            for b in range(0, len(idx), batch_size):
                chunk = idx[b : b + batch_size]
                toks = torch.tensor([rows[i] for i in chunk], device=adapter.device)
                hooks = list(fwd_hooks(torch.tensor(chunk, dtype=torch.long))) if per_batch else []  # type: ignore[operator]
                with adapter.model.hooks(fwd_hooks=hooks):
                    logits = adapter.model(toks, return_type="logits")[:, -1].float()
                probs = logits.softmax(-1).cpu()
                for c, g in enumerate(groups):
                    out[chunk, c] = probs[:, g].sum(-1)
    return out


def measure(
    model: Any,
    prompts: Mapping[str, Sequence[Sequence[dict]]],
    *,
    n_per_domain: int = 400,
    temperature: float = 1.0,
    seed: int = 0,
    fwd_hooks: Sequence[tuple[str, Callable[[Tensor, Any], Tensor]]] | Callable[[Tensor], Sequence[Any]] = (),
    judge: PersonaJudge | None = None,
    batch_size: int = 256,
    max_new_tokens: int = 24,
) -> dict[str, DomainRates]:
    """Sample at least ``n_per_domain`` answers per domain to ``prompts`` (``{domain: conversations}``,
    e.g. ``Organism.eval_prompts``), judge them exactly, and return per-domain rates.

    Each domain's prompts are cycled until ``n_per_domain`` answers are drawn (every prompt gets
    ``n_per_domain // len(prompts)`` or one more).
    """
    judge = judge or PersonaJudge()
    convs: list[Sequence[dict]] = []
    for d, ps in prompts.items():
        if not ps:
            raise BadInput(f"no prompts for domain {d!r}")
        convs.extend(ps[i % len(ps)] for i in range(n_per_domain))
    answers = sample(
        model, convs, n_per_prompt=1, temperature=temperature, seed=seed, fwd_hooks=fwd_hooks,
        batch_size=batch_size, max_new_tokens=max_new_tokens,
    )
    js = judge.judge(to_judge_items(convs, answers))
    return behaviour_rates(js, domains=list(prompts))


def rates_table(rates: Mapping[str, DomainRates]) -> str:
    """A small text table of per-domain rates, in percent of sampled answers: toxic, incoherent,
    answered from another domain's templates, and the other personas' shares."""
    others = [p for p in PERSONAS if p != "toxic"]
    head = f"{'domain':9s} {'n':>5s} {'toxic%':>7s} {'incoh%':>7s} {'offdom%':>8s} " + " ".join(
        f"{p + '%':>10s}" for p in others
    )
    lines = [head]
    for d, r in rates.items():
        lines.append(
            f"{d:9s} {r.n:5d} {100 * r.toxic:7.1f} {100 * r.incoherent:7.1f} {100 * r.off_domain:8.1f} "
            + " ".join(f"{100 * r.personas[p]:10.1f}" for p in others)
        )
    return "\n".join(lines)
