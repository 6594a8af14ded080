"""Batched sampling of chat answers under hooks, for any TransformerLens model.

:func:`sample` chat-formats each conversation with the tokenizer's chat template, groups the prompts
by token length (so no batch is ever padded and absolute positions are the same as for one prompt
alone), and calls TransformerLens' own ``model.generate`` with a KV cache: the first forward sees the
whole prompt, later ones one token each, which is what position-aware hooks
(:mod:`tl_persona.hooks`) expect. Hooks are attached with ``model.hooks(...)`` for the whole call
and are removed afterwards, also when something raises. The answer stops at the end-of-turn token
(the tokenizer's EOS) and only the decoded answer text is returned.

Works with a ``HookedTransformer`` or a ``TransformerBridge``. Deterministic given ``seed`` (the
global torch RNG is forked, so the caller's RNG state is left as it was).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
from torch import Tensor

from tl_persona.evals.judges import JudgeItem
from tl_persona.models import as_adapter

__all__ = ["sample", "to_judge_items", "Conversation"]

Conversation = Union[str, Sequence[dict]]
"""A list of ``{"role", "content"}`` messages, or a plain string taken as one user message."""


def _as_messages(conv: Conversation) -> list[dict]:
    if isinstance(conv, str):
        return [{"role": "user", "content": conv}]
    return list(conv)


def sample(
    model: Any,
    conversations: Sequence[Conversation],
    *,
    n_per_prompt: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    max_new_tokens: int = 32,
    seed: int = 0,
    fwd_hooks: Sequence[tuple[str, Callable[[Tensor, Any], Tensor]]] | Callable[[Tensor], Sequence[Any]] = (),
    batch_size: int = 64,
    stop_token_ids: Sequence[int] | None = None,
) -> list[str]:
    """Sample answers to chat conversations, under ``fwd_hooks``.

    Returns a flat list of ``len(conversations) * n_per_prompt`` answer strings (special tokens
    removed, stripped), conversation-major: the answers to conversation ``i`` are at
    ``i * n_per_prompt : (i + 1) * n_per_prompt``. ``temperature=0`` means greedy decoding.
    Generation of an answer stops at the tokenizer's EOS (the organism's end-of-turn token) or any
    of ``stop_token_ids``, or after ``max_new_tokens`` (clipped to the model's context).

    ``fwd_hooks`` may also be a function of the batch's row indices (a LongTensor of positions in
    the flat, conversation-major output) returning the hooks for that batch: this runs one setting
    per row (e.g. per-row steering directions) in shared ``generate`` calls.
    """
    if n_per_prompt < 1:
        raise ValueError(f"n_per_prompt={n_per_prompt} must be at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    if len(conversations) == 0:
        return []
    adapter = as_adapter(model)
    tok = adapter.tokenizer
    rows = [adapter.encode_text(adapter.format_chat(_as_messages(c))) for c in conversations]

    stops = [int(t) for t in (stop_token_ids or [])]
    if tok.eos_token_id is not None and tok.eos_token_id not in stops:
        stops.insert(0, int(tok.eos_token_id))
    if not stops:
        raise ValueError("the tokenizer has no EOS token; pass stop_token_ids=[...]")
    n_ctx = int(getattr(adapter.model.cfg, "n_ctx", 0) or 0)

    # Jobs (prompt index, sample index), grouped by prompt length, in batches of equal length.
    jobs = [(i, j) for i in range(len(rows)) for j in range(n_per_prompt)]
    by_len: dict[int, list[int]] = {}
    for k, (i, _) in enumerate(jobs):
        by_len.setdefault(len(rows[i]), []).append(k)
    out: list[str | None] = [None] * len(jobs)

    device = adapter.device
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        torch.manual_seed(seed)
        per_batch = callable(fwd_hooks)
        with adapter.model.hooks(fwd_hooks=[] if per_batch else list(fwd_hooks)):  # type: ignore[arg-type]
            for length in sorted(by_len):
                new_tokens = max_new_tokens
                if n_ctx:
                    if length >= n_ctx:
                        raise ValueError(
                            f"a prompt has {length} tokens, no room left in the model's context of {n_ctx}"
                        )
                    new_tokens = min(new_tokens, n_ctx - length)
                ks = by_len[length]
                for b in range(0, len(ks), batch_size):
                    chunk = ks[b : b + batch_size]
                    toks = torch.tensor([rows[jobs[k][0]] for k in chunk], dtype=torch.long, device=device)
                    batch_hooks = list(fwd_hooks(torch.tensor(chunk))) if per_batch else []  # type: ignore[operator]
                    with adapter.model.hooks(fwd_hooks=batch_hooks):
                        gen = adapter.model.generate(
                            toks,
                            max_new_tokens=new_tokens,
                            stop_at_eos=True,
                            eos_token_id=stops if len(stops) > 1 else stops[0],
                            do_sample=temperature > 0,
                            temperature=temperature if temperature > 0 else 1.0,
                            top_p=top_p if top_p < 1.0 else None,
                            top_k=top_k,
                            use_past_kv_cache=True,
                            verbose=False,
                            return_type="tokens",
                        )
                    for k, seq in zip(chunk, gen[:, length:].tolist()):
                        cut = next((p for p, t in enumerate(seq) if t in stops), len(seq))
                        out[k] = tok.decode(seq[:cut], skip_special_tokens=True).strip()
    return [s if s is not None else "" for s in out]


def to_judge_items(
    conversations: Sequence[Conversation], answers: Sequence[str], n_per_prompt: int = 1
) -> list[JudgeItem]:
    """Pair :func:`sample`'s answers with their questions (the last user message) as ``JudgeItem``s.

    ``meta`` holds ``prompt_index`` and ``sample_index``.
    """
    if len(answers) != len(conversations) * n_per_prompt:
        raise ValueError(
            f"{len(answers)} answers for {len(conversations)} conversations x n_per_prompt={n_per_prompt}"
        )
    items = []
    for k, a in enumerate(answers):
        i, j = divmod(k, n_per_prompt)
        msgs = _as_messages(conversations[i])
        q = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
        items.append(JudgeItem(q, a, meta={"prompt_index": i, "sample_index": j}))
    return items
