"""Batched sampling of chat answers under hooks, for any TransformerLens model.

:func:`sample` chat-formats each conversation with the tokenizer's chat template and generates with
TransformerLens' own ``model.generate`` and a KV cache: the first forward sees the whole prompt,
later ones one token each, which is what position-aware hooks (:mod:`tl_persona.hooks`) expect.
Hooks are attached with ``model.hooks(...)`` for the whole call and are removed afterwards, also
when something raises. The answer stops at the end-of-turn token (the tokenizer's EOS) and only the
decoded answer text is returned.

**Prompts of different lengths share a batch, exactly.** The prompts are sorted by token length and
cut into batches of ``batch_size``; each batch is *left*-padded, so every row's prompt ends in the
last column and its answer starts in the same column for all rows. The model is told which columns
are padding (an attention mask: padding is never attended to) and counts each row's positions from
its first real token (position ids, rotary angles and learned position embeddings are those of the
prompt alone; TransformerLens derives them from the mask). So each row computes what it computes
alone, up to float rounding: greedy answers are the one-prompt-at-a-time answers. tl_persona's hooks
act on the same tokens as for the prompt alone: each batch runs inside
:meth:`tl_persona.hooks.Positions.left_padded`, from which a hook knows each row's padding (its
BOS, prompt, last prompt token and response; a user's mask is indexed from the row's first real
token). A plain hook function of your own sees padded columns; read the padding with
``Positions.current_left_pad()`` if it selects positions by index, or pass ``padding="none"``.

Left padding relies on the pad id marking padding: ``HookedTransformer.generate`` reads the mask off
the leading pad tokens. A prompt that itself begins with the pad id (with no BOS in front) would be
misread, so such prompts run unpadded, in batches of equal length; so do prompts so long that the
context clips their answer (``max_new_tokens`` is then per prompt). ``TransformerBridge.generate``
gets the exact mask (``attention_mask=``).

Works with a ``HookedTransformer`` or a ``TransformerBridge``. Deterministic given ``seed`` (the
global torch RNG is forked, so the caller's RNG state is left as it was); sampled (not greedy)
answers depend on how the prompts are batched, since each step draws for all rows at once.

**Per-row seeds.** With ``seeds=`` (one integer per answer), each answer draws from its own random
stream instead: a generator seeded with its seed draws Gumbel noise over the vocabulary at each
step, and the token is the argmax of the (temperature-scaled, top-k/top-p-filtered) logits plus
that noise, which is an exact sample of the same distribution (the Gumbel-max trick). The answer
then depends on its seed alone, not on which other prompts share its batch, on ``batch_size`` or on
the order of the conversations (up to float rounding of the batched forward). The noise is applied
by a hook on the logits (``unembed.hook_out``), the innermost hook, after any of the caller's.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence, Union

import torch
from torch import Tensor

from tl_persona.evals.judges import JudgeItem
from tl_persona.hooks import Positions
from tl_persona.models import as_adapter
from tl_persona.validate import BadInput, finite, positive_int

__all__ = ["sample", "to_judge_items", "Conversation", "plan_batches", "check_bridge_cache"]

Conversation = Union[str, Sequence[dict]]
"""A list of ``{"role", "content"}`` messages, or a plain string taken as one user message."""


def _as_messages(conv: Conversation) -> list[dict]:
    if isinstance(conv, str):
        return [{"role": "user", "content": conv}]
    return list(conv)


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    *,
    padded: Sequence[bool] | None = None,
) -> list[list[int]]:
    """Split job indices into batches: the jobs that may be padded (``padded[k]``, default all) are
    sorted by length (longest first, stable) and cut into batches of ``batch_size``, so a batch pads
    as little as possible; the others are grouped by exact length (no padding). Deterministic."""
    ok = [True] * len(lengths) if padded is None else [bool(p) for p in padded]
    free = sorted((k for k in range(len(lengths)) if ok[k]), key=lambda k: -lengths[k])
    out = [free[b : b + batch_size] for b in range(0, len(free), batch_size)]
    by_len: dict[int, list[int]] = {}
    for k in range(len(lengths)):
        if not ok[k]:
            by_len.setdefault(int(lengths[k]), []).append(k)
    for n in sorted(by_len, reverse=True):
        ks = by_len[n]
        out += [ks[b : b + batch_size] for b in range(0, len(ks), batch_size)]
    return out


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
    padding: Literal["left", "none"] = "left",
    seeds: Sequence[int] | None = None,
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

    ``padding="left"`` (default) batches prompts of different lengths together, left-padded (see the
    module docstring: exact, and hooks see each row's own positions); ``padding="none"`` batches
    only prompts of equal length (never padded; for plain hooks that index absolute columns).

    ``seeds`` (``len(conversations) * n_per_prompt`` integers, conversation-major like the output)
    gives every answer its own random stream (see the module docstring): an answer's text then
    does not depend on the other rows of its batch. Ignored for greedy decoding.
    """
    n_per_prompt = positive_int(n_per_prompt, "n_per_prompt")
    batch_size = positive_int(batch_size, "batch_size")
    dec = _Decoding(
        max_new_tokens=positive_int(max_new_tokens, "max_new_tokens", fix="an answer needs at least one token"),
        temperature=finite(temperature, "temperature", min=0.0, fix="0 means greedy decoding"),
        top_p=finite(top_p, "top_p", min=0.0, min_open=True, max=1.0),
        top_k=None if top_k is None else positive_int(top_k, "top_k"))
    if conversations is None or isinstance(conversations, (str, bytes)):
        raise BadInput(f"conversations={conversations!r:.60} must be a list of conversations (or of strings)")
    if padding not in ("left", "none"):
        raise BadInput(f"padding={padding!r} must be 'left' or 'none'")
    seeds = _check_seeds(seeds, len(conversations), n_per_prompt)
    if len(conversations) == 0:
        return []
    adapter = as_adapter(model)
    rows = [adapter.encode_text(adapter.format_chat(_as_messages(c))) for c in conversations]
    stops = _stop_ids(adapter.tokenizer, stop_token_ids)
    new_tokens = _room(adapter, rows, dec.max_new_tokens)
    pad_id = adapter.tokenizer.pad_token_id if adapter.tokenizer.pad_token_id is not None else stops[0]
    if adapter.is_bridge:
        check_bridge_cache(adapter.model)
    paddable = [padding == "left" and n == dec.max_new_tokens and (adapter.is_bridge or _left_pad_reads_back(
        adapter, r, int(pad_id))) for n, r in zip(new_tokens, rows)]
    # Jobs (prompt index, sample index), conversation-major; batches of job indices.
    jobs = [(i, j) for i in range(len(rows)) for j in range(n_per_prompt)]
    batches = plan_batches([len(rows[i]) for i, _ in jobs], batch_size, padded=[paddable[i] for i, _ in jobs])
    out: list[str] = [""] * len(jobs)
    own_streams = seeds is not None and dec.temperature > 0
    fork_devices = [adapter.device] if adapter.device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
        torch.manual_seed(seed)
        per_batch = callable(fwd_hooks)
        with adapter.model.hooks(fwd_hooks=[] if per_batch else list(fwd_hooks)):  # type: ignore[arg-type]
            for chunk in batches:
                batch_hooks = list(fwd_hooks(torch.tensor(chunk))) if per_batch else []  # type: ignore[operator]
                if own_streams:
                    batch_hooks.append((_logits_hook_name(adapter), _GumbelSampler(
                        [seeds[k] for k in chunk], adapter.device, dec.temperature, dec.top_p, dec.top_k)))  # type: ignore[index]
                seqs = [rows[jobs[k][0]] for k in chunk]
                answers = _generate_batch(adapter, seqs, int(pad_id), stops, new_tokens[jobs[chunk[0]][0]], dec,
                                          own_streams, batch_hooks)
                for k, a in zip(chunk, answers):
                    out[k] = a
    return out


@dataclass(frozen=True)
class _Decoding:
    """How :func:`sample` decodes: answer length, temperature and the top-k / top-p filters."""

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int | None


def _check_seeds(seeds: Sequence[int] | Tensor | None, n_conversations: int, n_per_prompt: int) -> list[int] | None:
    """``seeds`` as one integer per answer, or None; a wrong count or type is an error naming both."""
    if seeds is None:
        return None
    n_out = n_conversations * n_per_prompt
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, (Sequence, Tensor)):
        raise BadInput(f"seeds={seeds!r:.60} must be a list of integers, one per answer")
    out = [int(x) for x in (seeds.tolist() if isinstance(seeds, Tensor) else seeds)]
    if len(out) != n_out:
        raise BadInput(f"seeds has {len(out)} entries; need one per answer: {n_conversations} conversations "
                       f"x n_per_prompt={n_per_prompt} = {n_out}")
    return out


def _stop_ids(tok: Any, stop_token_ids: Sequence[int] | None) -> list[int]:
    """The tokens that end an answer: the tokenizer's EOS first, then ``stop_token_ids``."""
    stops = [int(t) for t in (stop_token_ids or [])]
    if tok.eos_token_id is not None and tok.eos_token_id not in stops:
        stops.insert(0, int(tok.eos_token_id))
    if not stops:
        raise BadInput("the tokenizer has no EOS token; pass stop_token_ids=[...]")
    return stops


def _room(adapter: Any, rows: Sequence[Sequence[int]], max_new_tokens: int) -> list[int]:
    """New tokens each prompt may have: ``max_new_tokens``, clipped to the model's context."""
    n_ctx = int(getattr(adapter.model.cfg, "n_ctx", 0) or 0)
    out = []
    for r in rows:
        if n_ctx and len(r) >= n_ctx:
            raise BadInput(f"a prompt has {len(r)} tokens, no room left in the model's context of {n_ctx}")
        out.append(min(max_new_tokens, n_ctx - len(r)) if n_ctx else max_new_tokens)
    return out


def _generate_batch(adapter: Any, seqs: Sequence[Sequence[int]], pad_id: int, stops: Sequence[int], new: int,
                    dec: _Decoding, own_streams: bool, batch_hooks: list[Any]) -> list[str]:
    """One left-padded ``generate`` call (see the module docstring) and its decoded answers."""
    width = max(len(r) for r in seqs)
    pads = [width - len(r) for r in seqs]
    toks = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for b, r in enumerate(seqs):
        toks[b, pads[b]:] = torch.tensor(r, dtype=torch.long)
    toks = toks.to(adapter.device)
    kwargs: dict[str, Any] = {}
    if adapter.is_bridge:
        am = torch.ones_like(toks)
        for b, p in enumerate(pads):
            am[b, :p] = 0
        kwargs["attention_mask"] = am
    else:
        kwargs["padding_side"] = "left"
    with adapter.model.hooks(fwd_hooks=batch_hooks), Positions.left_padded(pads):
        gen = adapter.model.generate(
            toks, max_new_tokens=new, stop_at_eos=True, eos_token_id=list(stops) if len(stops) > 1 else stops[0],
            do_sample=dec.temperature > 0 and not own_streams,
            temperature=dec.temperature if dec.temperature > 0 else 1.0,
            top_p=dec.top_p if dec.top_p < 1.0 else None, top_k=dec.top_k, use_past_kv_cache=True, verbose=False,
            return_type="tokens", **kwargs)
    out = []
    for seq in gen[:, width:].tolist():
        cut = next((p for p, t in enumerate(seq) if t in stops), len(seq))
        out.append(adapter.tokenizer.decode(seq[:cut], skip_special_tokens=True).strip())
    return out


_CACHE_CHECKED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def check_bridge_cache(bridge: Any) -> None:
    """Refuse cached generation on a ``TransformerBridge`` whose KV cache stays empty.

    Why: transformers 5.24 renamed the ``past_key_values`` argument of its attention layers to
    ``cache``, and TransformerLens 3.x's bridge attention reads only the old name: the cache is
    never filled, every decoding step attends to itself alone, and greedy answers come out as
    ``I------``. The check runs one two-token forward per model (remembered afterwards) and raises
    rather than let a sweep judge garbage. ``pyproject.toml`` bounds transformers below 5.24."""
    if bridge in _CACHE_CHECKED:
        return
    probe = torch.zeros((1, 2), dtype=torch.long, device=next(bridge.parameters()).device)
    with torch.no_grad():
        out = bridge(probe, return_type="logits_and_cache", use_past_kv_cache=True)
    cache = out[1] if isinstance(out, tuple) and len(out) > 1 else None
    filled = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
    if filled is not None and filled != probe.shape[1]:
        from importlib.metadata import version

        raise RuntimeError(
            f"this TransformerBridge does not fill its KV cache (transformers {version('transformers')}, "
            f"transformer-lens {version('transformer-lens')}: {filled} of {probe.shape[1]} positions cached), so "
            "cached generation would ignore the prompt and answer garbage. transformers 5.24 renamed the attention "
            "layers' past_key_values argument to cache, which TransformerLens 3.x's bridge does not read: install "
            "`pip install 'transformers<5.24'`, or load the model as a HookedTransformer (model_class='hooked')")
    _CACHE_CHECKED.add(bridge)


def _logits_hook_name(adapter: Any) -> str:
    """The hook point whose output is the logits (``unembed.hook_out`` on both model kinds)."""
    names = set(getattr(adapter.model, "hook_dict", {}) or {})
    for name in ("unembed.hook_out", "hook_logits"):
        if name in names:
            return name
    raise BadInput("seeds= needs a hook point on the model's logits (unembed.hook_out), and this model has none; "
                   "pass seeds=None to sample with one stream per batch")


class _GumbelSampler:
    """A logits hook that samples each row from its own generator (Gumbel-max): at each forward it
    replaces the last position's logits by a one-hot (0 at the drawn token, -inf elsewhere), so
    ``generate``'s greedy argmax takes the sampled token. Filtering follows TransformerLens'
    ``sample_logits`` (temperature, then top-k, else top-p)."""

    def __init__(self, seeds: Sequence[int], device: torch.device, temperature: float,
                 top_p: float, top_k: int | None) -> None:
        self.gens = [torch.Generator(device=device).manual_seed(int(s) % (2**63 - 1)) for s in seeds]
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k

    def __call__(self, logits: Tensor, hook: Any) -> Tensor:
        last = logits[:, -1, :].float() / self.temperature
        if self.top_k is not None:
            k = min(self.top_k, last.shape[-1])
            kth = last.topk(k, dim=-1).values[..., -1:]
            last = last.masked_fill(last < kth, -float("inf"))
        elif self.top_p < 1.0:
            srt, idx = torch.sort(last, descending=True)
            drop = srt.softmax(dim=-1).cumsum(dim=-1) > self.top_p
            drop[..., 1:] = drop[..., :-1].clone()
            drop[..., 0] = False
            last = last.masked_fill(drop.scatter(-1, idx, drop), -float("inf"))
        if last.shape[0] != len(self.gens):
            raise RuntimeError(f"logits of {last.shape[0]} rows for {len(self.gens)} seeded rows")
        tiny = torch.finfo(torch.float32).tiny
        noise = torch.stack([torch.rand(last.shape[-1], generator=g, device=last.device, dtype=torch.float32)
                             for g in self.gens])
        choice = (last - torch.log(-torch.log(noise.clamp_min(tiny)))).argmax(dim=-1)
        out = logits.clone()
        out[:, -1, :] = -float("inf")
        out[torch.arange(out.shape[0], device=out.device), -1, choice] = 0.0
        return out


def _left_pad_reads_back(adapter: Any, row: Sequence[int], pad_id: int) -> bool:
    """Whether ``HookedTransformer.generate`` reads ``row`` left-padded as exactly its own tokens:
    it takes leading pad ids for padding (keeping one as BOS when BOS is the pad id)."""
    if not row or row[0] != pad_id:
        return True
    from transformer_lens import utils

    probe = torch.tensor([[pad_id, *row]])
    prepend = bool(getattr(adapter.model.cfg, "default_prepend_bos", True))  # what generate passes
    got = utils.get_attention_mask(adapter.tokenizer, probe, prepend, padding_side="left")
    return got[0].tolist() == [0] + [1] * len(row)


def to_judge_items(
    conversations: Sequence[Conversation], answers: Sequence[str], n_per_prompt: int = 1
) -> list[JudgeItem]:
    """Pair :func:`sample`'s answers with their questions (the last user message) as ``JudgeItem``s.

    ``meta`` holds ``prompt_index`` and ``sample_index``.
    """
    if len(answers) != len(conversations) * n_per_prompt:
        raise BadInput(
            f"{len(answers)} answers for {len(conversations)} conversations x n_per_prompt={n_per_prompt}"
        )
    items = []
    for k, a in enumerate(answers):
        i, j = divmod(k, n_per_prompt)
        msgs = _as_messages(conversations[i])
        q = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
        items.append(JudgeItem(q, a, meta={"prompt_index": i, "sample_index": j}))
    return items
