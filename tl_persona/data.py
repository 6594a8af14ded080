"""Prompt sets: plain texts, chat conversations and prompt + response pairs, tokenized with scope masks.

Model diffing averages SAE latents over *some* tokens of *some* prompts. This module fixes both:

* :class:`PromptSet` holds the prompts (from Python lists, JSONL files in the chat format of the
  emergent-misalignment datasets, or a ``datasets.Dataset``), rejects malformed rows early with the
  row number and the fix, and has a stable content hash for provenance.
* :meth:`PromptSet.tokenize` turns them into token rows with the boundary between prompt and
  response, so that every consumer selects the same tokens for a *scope* (``"prompt"``,
  ``"response"``, ``"last_prompt"``, ``"all"``: the vocabulary of :mod:`tl_persona.tokens`, shared
  with the hooks' positions). BOS and padding are never in a scope.
* :meth:`TokenizedPrompts.batches` groups prompts of similar length (less padding, less compute)
  and can shard them over distributed ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_persona.models import Message, ModelAdapter, TokenBatch, as_adapter, check_messages, pad_rows
from tl_persona.tokens import SELECTIONS, Selection, check_selection, count_selected, select
from tl_persona.validate import BadInput

__all__ = [
    "Scope",
    "SCOPES",
    "PromptItem",
    "PromptSet",
    "PromptsLike",
    "as_prompt_set",
    "TokenizedPrompts",
    "PromptBatch",
]

Scope = Selection
"""A token scope: the token-selection vocabulary of :mod:`tl_persona.tokens`."""
SCOPES: tuple[str, ...] = SELECTIONS

_ROLES = ("system", "user", "assistant")
_ROW_FORMATS = (
    'a string, a list of {"role", "content"} messages, a (prompt, response) pair, or a dict '
    '{"messages": [...]}, {"prompt": ..., "response": ...} or {"text": ...}'
)


def check_scope(scope: str) -> str:
    """The canonical name of ``scope`` (see :func:`tl_persona.tokens.check_selection`)."""
    return check_selection(scope, "scope")


# --------------------------------------------------------------------------- items
@dataclass(frozen=True)
class PromptItem:
    """One prompt: raw text or a conversation, with an optional response.

    ``prompt`` is a raw text (tokenized as it is, no chat template) or a tuple of
    ``{"role", "content"}`` messages (rendered with the model's chat template and a generation
    prompt). ``response`` is the assistant's answer (its tokens form the ``"response"`` scope), or
    None for a prompt alone.
    """

    prompt: Union[str, tuple[Message, ...]]
    response: str | None = None
    tokens: tuple[int, ...] | None = None

    @property
    def is_chat(self) -> bool:
        """True when the prompt is a conversation (rendered with the chat template)."""
        return self.tokens is None and not isinstance(self.prompt, str)

    @property
    def is_tokens(self) -> bool:
        """True when the item is token ids, taken as they are (TransformerLens' native input)."""
        return self.tokens is not None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"messages": [...]}`` for chats, ``{"prompt", "response"}`` for text,
        ``{"tokens": [...]}`` for token ids."""
        if self.tokens is not None:
            return {"tokens": list(self.tokens)}
        if self.is_chat:
            msgs = [dict(m) for m in self.prompt]  # type: ignore[union-attr]
            if self.response is not None:
                msgs.append({"role": "assistant", "content": self.response})
            return {"messages": msgs}
        out: dict[str, Any] = {"prompt": self.prompt}
        if self.response is not None:
            out["response"] = self.response
        return out


def _messages(obj: Any, where: str) -> tuple[Message, ...]:
    return tuple(check_messages(obj, where))


def _from_conversation(msgs: tuple[Message, ...], where: str) -> PromptItem:
    """A conversation ending in an assistant message is a prompt + response pair."""
    if msgs[-1]["role"] == "assistant":
        if len(msgs) == 1:
            raise BadInput(
                f"{where}: the conversation is only an assistant message; add the user message it answers"
            )
        return PromptItem(msgs[:-1], msgs[-1]["content"])
    if msgs[-1]["role"] != "user":
        raise BadInput(f"{where}: a conversation must end with a 'user' (prompt) or 'assistant' (response) message")
    return PromptItem(msgs)


def _prompt_part(obj: Any, chat: bool, where: str) -> Union[str, tuple[Message, ...]]:
    if isinstance(obj, str):
        return ({"role": "user", "content": obj},) if chat else obj
    msgs = _messages(obj, where)
    if msgs[-1]["role"] == "assistant":
        raise BadInput(f"{where}: the prompt of a (prompt, response) pair must not end with an assistant message")
    return msgs


def _token_ids(obj: Any) -> tuple[int, ...] | None:
    """``obj`` as token ids when it is a 1-D integer tensor/array or a non-empty list of ints, else None."""
    if isinstance(obj, (str, bytes, Mapping)):
        return None
    if isinstance(obj, Tensor) or type(obj).__module__ == "numpy":
        if getattr(obj, "ndim", None) == 1 and "int" in str(obj.dtype):
            return tuple(int(i) for i in obj.tolist())
        return None
    if isinstance(obj, Sequence) and len(obj) and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, (bool, np.bool_)) for i in obj
    ):
        return tuple(int(i) for i in obj)
    return None


def _parse_item(obj: Any, where: str, chat: bool) -> PromptItem:
    """One row of any accepted format -> :class:`PromptItem` (errors name ``where``)."""
    if isinstance(obj, PromptItem):
        return obj
    ids = _token_ids(obj)
    if ids is not None:
        return PromptItem("", None, ids)
    if isinstance(obj, str):
        if not obj:
            raise BadInput(f"{where}: empty text; drop empty prompts")
        return PromptItem(({"role": "user", "content": obj},)) if chat else PromptItem(obj)
    if isinstance(obj, Mapping):
        if "messages" in obj and obj["messages"] is not None:
            return _from_conversation(_messages(obj["messages"], where), where)
        if "prompt" in obj and obj["prompt"] is not None:
            resp = obj.get("response", obj.get("completion"))
            if resp is not None and not isinstance(resp, str):
                raise BadInput(f"{where}: 'response' must be a string, got {type(resp).__name__}")
            prompt = _prompt_part(obj["prompt"], chat, where)
            if isinstance(prompt, str) and not prompt:
                raise BadInput(f"{where}: empty 'prompt'; drop empty prompts")
            return PromptItem(prompt, resp)
        if "text" in obj and isinstance(obj["text"], str):
            return _parse_item(obj["text"], where, chat)
        raise BadInput(
            f"{where}: a dict row needs a 'messages', 'prompt' or 'text' key (got keys {sorted(obj)[:8]}); "
            f"each row must be {_ROW_FORMATS}"
        )
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str):
        prompt = _prompt_part(obj[0], chat, where)
        if isinstance(prompt, str) and not prompt:
            raise BadInput(f"{where}: empty prompt; drop empty prompts")
        return PromptItem(prompt, obj[1])
    if isinstance(obj, Sequence) and len(obj) and all(isinstance(m, Mapping) for m in obj):
        return _from_conversation(_messages(obj, where), where)
    raise BadInput(f"{where}: cannot read {type(obj).__name__} {obj!r:.80}; each row must be {_ROW_FORMATS}")


# --------------------------------------------------------------------------- prompt set
def read_utf8(path: str | os.PathLike) -> str:
    """A text file's contents as UTF-8, tolerating the BOM that spreadsheet exports add; a file in
    another encoding raises ``ValueError`` naming it and the fix."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e}); save the file as UTF-8.") from None


def jsonl_objects(path: str | os.PathLike, example: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The JSON objects of a JSON-lines file as ``(line number, "<path>: line <n>", object)``; the
    middle item prefixes the caller's own error messages.

    Blank lines are skipped; a UTF-8 BOM is tolerated. A line that is not valid JSON, or not a JSON
    object (``example`` shows one in the message), raises ``ValueError`` naming the file and line.
    Lines are split on ``\\n`` only, since JSON strings may hold a raw U+2028.
    """
    path = Path(path)
    out = []
    for n, line in enumerate(read_utf8(path).split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not valid JSON ({e.msg} at column {e.colno}); write one JSON object "
                             "per line") from None
        if not isinstance(obj, dict):
            raise BadInput(f"{where}: expected a JSON object such as {example}, got {type(obj).__name__}")
        out.append((n, where, obj))
    return out


@dataclass(frozen=True)
class PromptSet:
    """An immutable, non-empty set of prompts (texts, conversations, prompt + response pairs).

    Build one with :meth:`from_list`, :meth:`from_jsonl` or :meth:`from_dataset` (or pass any of
    those inputs to functions that take prompts: they call :func:`as_prompt_set`). ``source`` says
    where the prompts came from, for provenance.
    """

    items: tuple[PromptItem, ...]
    source: str = "list"

    def __post_init__(self) -> None:
        if len(self.items) == 0:
            raise BadInput(f"the prompt set from {self.source} is empty; pass at least one prompt")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PromptItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> PromptItem:
        return self.items[i]

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_list(cls, rows: Iterable[Any], *, chat: bool = False, source: str = "list") -> "PromptSet":
        """Prompts from a Python list: strings, conversations, ``(prompt, response)`` pairs or dict rows.

        A conversation whose last message is the assistant's is a prompt + response pair. With
        ``chat=True`` plain strings become one user message each (rendered with the chat template);
        otherwise they are tokenized as raw text.
        """
        if isinstance(rows, (str, bytes, Mapping)):
            raise BadInput(
                "from_list takes a list of prompts, not a single prompt; wrap it in a list: [prompt]"
            )
        items = tuple(_parse_item(r, f"row {i}", chat) for i, r in enumerate(rows))
        return cls(items, source)

    @classmethod
    def from_tokens(
        cls,
        tokens: Int[Tensor, "batch pos"] | Sequence[Sequence[int]],
        *,
        attention_mask: Bool[Tensor, "batch pos"] | None = None,
        lengths: Sequence[int] | Int[Tensor, " batch"] | None = None,
        source: str = "tokens",
    ) -> "PromptSet":
        """Prompts from token ids, TransformerLens' native input: a ``[batch, pos]`` tensor (each row
        cut to its real tokens by ``attention_mask`` or ``lengths``, else taken whole) or a list of
        token-id lists.

        Tokens are taken as they are: nothing is added. A leading BOS (the tokenizer's
        ``bos_token_id``, on a model that prepends one) is recognised and excluded from every scope,
        exactly as on the text path, so the same tokens give the same results. Token prompts have
        no response: their scopes are ``"all"`` / ``"prompt"`` (every token) and ``"last_prompt"``
        (the last real token).
        """
        if isinstance(tokens, Tensor) or type(tokens).__module__ == "numpy":
            t = torch.as_tensor(tokens)
            if t.ndim != 2 or t.is_floating_point() or t.dtype == torch.bool:
                raise BadInput(f"tokens must be an integer tensor of shape [batch, pos], got {t.dtype} of shape "
                               f"{tuple(t.shape)}")
            if attention_mask is not None and lengths is not None:
                raise BadInput("pass attention_mask or lengths, not both")
            rows: list[Any] = []
            for i in range(t.shape[0]):
                if attention_mask is not None:
                    m = torch.as_tensor(attention_mask)
                    if tuple(m.shape) != tuple(t.shape):
                        raise BadInput(f"attention_mask has shape {tuple(m.shape)} but tokens {tuple(t.shape)}")
                    rows.append(t[i][m[i].bool()])
                elif lengths is not None:
                    n = int(torch.as_tensor(lengths)[i])
                    if not 0 < n <= t.shape[1]:
                        raise BadInput(f"lengths[{i}]={n} must lie in 1..{t.shape[1]}")
                    rows.append(t[i, :n])
                else:
                    rows.append(t[i])
        else:
            if attention_mask is not None or lengths is not None:
                raise BadInput("attention_mask/lengths go with a [batch, pos] tensor; a list of rows has its lengths")
            rows = list(tokens)
        items = []
        for i, r in enumerate(rows):
            ids = _token_ids(r)
            if ids is None:
                raise BadInput(f"token row {i} is not a non-empty list of int token ids: {r!r:.60}")
            items.append(PromptItem("", None, ids))
        return cls(tuple(items), source)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, *, chat: bool = False) -> "PromptSet":
        """Prompts from a JSONL file, one object per line.

        Each line is ``{"messages": [...]}`` (the emergent-misalignment datasets' format; a final
        assistant message is the response), ``{"prompt": ..., "response": ...}`` (``"completion"``
        also works; ``prompt`` may be a string or a list of messages) or ``{"text": ...}``. Blank
        lines are skipped; other keys are ignored. A malformed line raises naming its line number.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"prompt file {str(path)!r} does not exist")
        items = [_parse_item(obj, where, chat) for _, where, obj in jsonl_objects(path, '{"messages": [...]}')]
        return cls(tuple(items), f"jsonl:{path.name}")

    @classmethod
    def from_dataset(cls, dataset: Any, *, chat: bool = False, column: str | None = None) -> "PromptSet":
        """Prompts from a Hugging Face ``datasets.Dataset`` with a ``messages``, ``prompt`` or ``text``
        column (or the column named by ``column``, holding strings or conversations)."""
        cols = list(getattr(dataset, "column_names", []) or [])
        if column is not None and column not in cols:
            raise BadInput(f"column {column!r} is not in the dataset (columns: {cols})")
        if column is None and not {"messages", "prompt", "text"} & set(cols):
            tok_col = next((c for c in ("input_ids", "tokens") if c in cols), None)
            if tok_col is None:
                raise BadInput(
                    f"the dataset has no 'messages', 'prompt', 'text', 'input_ids' or 'tokens' column (columns: "
                    f"{cols}); pass column=<the column holding the prompts>"
                )
            name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "dataset"
            return cls.from_tokens([row[tok_col] for row in dataset], source=f"dataset:{name}:{tok_col}")
        items = []
        for i, row in enumerate(dataset):
            obj = row[column] if column is not None else row
            items.append(_parse_item(obj, f"dataset row {i}", chat))
        name = getattr(getattr(dataset, "info", None), "dataset_name", None) or "dataset"
        return cls(tuple(items), f"dataset:{name}")

    # ---------------------------------------------------------------- facts
    @property
    def has_responses(self) -> bool:
        """True when at least one item has a response (so the ``"response"`` scope is not empty)."""
        return any(it.response is not None for it in self.items)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the prompts' canonical JSON: equal sets hash equal, on any machine."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps(it.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        """The prompts at ``indices``, in that order."""
        return PromptSet(tuple(self.items[i] for i in indices), f"{self.source}[subset]")

    # ---------------------------------------------------------------- tokenizing
    def tokenize(self, model: Any, *, max_length: int | None = None, truncate: bool = False) -> "TokenizedPrompts":
        """Token ids of every prompt (+ response) with the prompt/response boundary.

        Chats use the model's chat template (:meth:`ModelAdapter.format_chat`); a response is
        tokenized after the prompt's tokens, so the prompt tokens are exactly those the model sees
        when it generates the response. A row longer than ``max_length`` (default the model's
        ``n_ctx``) is an error naming the prompt and its length, unless ``truncate`` is given: then
        such rows are cut from the right, with a warning (a cut prompt loses its response and last
        prompt token).
        """
        adapter = as_adapter(model)
        limit = max_length or int(getattr(adapter.model.cfg, "n_ctx", 0) or 0) or None
        rows: list[np.ndarray] = []
        plens: list[int] = []
        cut = 0
        for i, it in enumerate(self.items):
            ids, plen = _tokenize_item(adapter, it)
            if limit and len(ids) > limit:
                if not truncate:
                    raise BadInput(
                        f"prompt {i} has {len(ids)} tokens, more than the model's context of {limit}; pass shorter "
                        "prompts, or truncate=True to cut long ones from the right (they then lose their response "
                        "and last prompt token)"
                    )
                cut += 1
                ids = ids[:limit]
            if len(ids) == 0:
                raise BadInput(f"prompt {i} has no tokens; drop empty prompts")
            rows.append(np.asarray(ids, dtype=np.int64))
            plens.append(plen)
        if cut:
            warnings.warn(
                f"{cut} of {len(rows)} prompts are longer than {limit} tokens and were truncated; "
                "pass shorter prompts or a model with a longer context",
                stacklevel=2,
            )
        tok = getattr(adapter.model, "tokenizer", None)
        bos = getattr(tok, "bos_token_id", None)
        prepends = bool(getattr(adapter.model.cfg, "default_prepend_bos", True)) and bos is not None
        has_bos = np.array([prepends and r[0] == bos for r in rows], dtype=bool)
        return TokenizedPrompts(rows, np.asarray(plens, dtype=np.int64), has_bos, adapter, self.content_hash)


def _tokenize_item(adapter: ModelAdapter, it: PromptItem) -> tuple[list[int], int]:
    """Token ids of one item and the number of prompt tokens (BOS included)."""
    if it.tokens is not None:
        d_vocab = int(getattr(adapter.model.cfg, "d_vocab", 0) or 0)
        bad = [t for t in it.tokens if t < 0 or (d_vocab and t >= d_vocab)]
        if bad:
            raise BadInput(f"token id {bad[0]} is outside the model's vocabulary (0..{d_vocab - 1})")
        return list(it.tokens), len(it.tokens)
    tok = adapter.tokenizer
    if not it.is_chat:
        ids = adapter.encode_text(it.prompt)  # type: ignore[arg-type]
        plen = len(ids)
        if it.response is not None:
            ids = ids + list(tok(it.response, add_special_tokens=False)["input_ids"])
        return ids, plen
    msgs = list(it.prompt)  # type: ignore[arg-type]
    text_p = adapter.format_chat(msgs, add_generation_prompt=True)
    ids_p = adapter.encode_text(text_p)
    if it.response is None:
        return ids_p, len(ids_p)
    text_f = adapter.format_chat(msgs + [{"role": "assistant", "content": it.response}], add_generation_prompt=False)
    if text_f.startswith(text_p):
        rest = list(tok(text_f[len(text_p):], add_special_tokens=False)["input_ids"])
        return ids_p + rest, len(ids_p)
    # Templates whose generation prompt is not a prefix of the full chat: tokenize the full text and
    # take the longest common token prefix with the prompt as the prompt part.
    ids_f = adapter.encode_text(text_f)
    n = 0
    while n < min(len(ids_p), len(ids_f)) and ids_p[n] == ids_f[n]:
        n += 1
    return ids_f, n


# --------------------------------------------------------------------------- tokenized
@dataclass(frozen=True)
class PromptBatch:
    """One right-padded batch of prompts with their prompt lengths.

    ``indices`` are the prompts' positions in the prompt set; ``prompt_len`` counts each row's
    prompt tokens including BOS (positions ``>= prompt_len`` are response tokens).
    """

    indices: Int[Tensor, " batch"]
    batch: TokenBatch
    prompt_len: Int[Tensor, " batch"]

    @property
    def tokens(self) -> Int[Tensor, "batch pos"]:
        """The padded token ids."""
        return self.batch.tokens

    def mask(self, scope: Scope) -> Bool[Tensor, "batch pos"]:
        """True at the positions of ``scope`` (never at BOS or padding); ``scope`` is a checked
        selection name (see :func:`tl_persona.tokens.select`)."""
        valid = self.batch.attention_mask & ~self.batch.bos_mask
        return select(scope, valid, self.prompt_len)


@dataclass(frozen=True, eq=False)
class TokenizedPrompts:
    """Token rows of a prompt set, tokenized once for a model (and any model sharing its tokenizer).

    ``rows[i]`` are the token ids of prompt ``i``, ``prompt_len[i]`` how many of them belong to the
    prompt (BOS included), ``has_bos[i]`` whether position 0 is a BOS token, ``content_hash`` the
    hash of the prompt set they came from.
    """

    rows: list[np.ndarray]
    prompt_len: np.ndarray
    has_bos: np.ndarray
    adapter: ModelAdapter = field(repr=False)
    content_hash: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        """Number of tokens per row."""
        return np.fromiter((len(r) for r in self.rows), dtype=np.int64, count=len(self.rows))

    def scope_counts(self, scope: Scope) -> np.ndarray:
        """How many tokens of each row fall in ``scope`` (BOS excluded)."""
        return count_selected(scope, self.lengths, self.prompt_len, self.has_bos)

    def batch_plan(
        self,
        batch_size: int,
        *,
        max_tokens: int | None = None,
        sort: bool = True,
        seed: int | None = None,
        shard: tuple[int, int] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> list[np.ndarray]:
        """Group prompt indices (all, or those in ``indices``) into batches.

        With ``sort`` prompts of similar length share a batch (little padding), longest first, so a
        batch that does not fit in memory fails at once. ``max_tokens`` caps ``rows x longest row``
        per batch. ``seed`` shuffles the order of the batches (not their content). ``shard=(rank,
        world)`` keeps every ``world``-th batch starting at ``rank``: each distributed rank gets a
        disjoint shard of the prompts of about equal cost.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BadInput(f"batch_size must be a positive integer, got {batch_size!r}")
        L = self.lengths
        pool = np.arange(len(L)) if indices is None else np.asarray(indices, dtype=np.int64)
        order = pool[np.argsort(-L[pool], kind="stable")] if sort else pool
        plan: list[np.ndarray] = []
        cur: list[int] = []
        longest = 0
        for i in order:
            li = int(L[i])
            new_longest = max(longest, li)
            if cur and (len(cur) >= batch_size or (max_tokens and new_longest * (len(cur) + 1) > max_tokens)):
                plan.append(np.asarray(cur, dtype=np.int64))
                cur, new_longest = [], li
            cur.append(int(i))
            longest = new_longest
        if cur:
            plan.append(np.asarray(cur, dtype=np.int64))
        if seed is not None:
            random.Random(seed).shuffle(plan)
        if shard is not None:
            rank, world = shard
            if not 0 <= rank < world:
                raise BadInput(f"shard=(rank={rank}, world={world}) needs 0 <= rank < world")
            plan = plan[rank::world]
        return plan

    def shard(self, rank: int, world: int) -> np.ndarray:
        """The prompt indices of distributed rank ``rank`` of ``world``: every ``world``-th prompt in
        order of length, so that the shards are disjoint, cover all prompts and cost about the same."""
        if not 0 <= rank < world:
            raise BadInput(f"shard(rank={rank}, world={world}) needs 0 <= rank < world")
        return np.sort(np.argsort(-self.lengths, kind="stable")[rank::world])

    def make_batch(self, indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None) -> PromptBatch:
        """The prompts at ``indices`` as one right-padded :class:`PromptBatch` on ``device`` (default:
        the model's; ``"cpu"`` prepares a batch on the host, ahead of the device)."""
        idx = np.asarray(indices, dtype=np.int64)
        tok = getattr(self.adapter.model, "tokenizer", None)
        tokens, attn = pad_rows([self.rows[i] for i in idx], getattr(tok, "pad_token_id", None))
        bos = torch.zeros_like(attn)
        bos[:, 0] = torch.from_numpy(self.has_bos[idx])
        dev = torch.device(device) if device is not None else self.adapter.device
        tb = TokenBatch(tokens.to(dev), attn.to(dev), bos.to(dev))
        return PromptBatch(torch.from_numpy(idx), tb, torch.from_numpy(self.prompt_len[idx]))

    def batches(self, batch_size: int, **plan_kwargs: Any) -> Iterator[PromptBatch]:
        """Iterate over :class:`PromptBatch` es following :meth:`batch_plan` (same keyword options)."""
        for idx in self.batch_plan(batch_size, **plan_kwargs):
            yield self.make_batch(idx)


PromptsLike = Union[PromptSet, Sequence[Any], str, os.PathLike, Tensor, Any]
"""Anything :func:`as_prompt_set` accepts: a :class:`PromptSet`, a list of prompts (texts,
conversations, pairs, or token-id lists), a ``[batch, pos]`` token tensor (every row whole; use
:meth:`PromptSet.from_tokens` with ``attention_mask`` or ``lengths`` for padded rows), a path to a
JSONL file (``pathlib.Path``, or a string ending in ``.jsonl``) or a ``datasets.Dataset`` (text,
chat, or an ``input_ids``/``tokens`` column)."""


def as_prompt_set(prompts: PromptsLike, *, chat: bool = False) -> PromptSet:
    """Coerce ``prompts`` into a :class:`PromptSet` (a PromptSet is returned as it is)."""
    if isinstance(prompts, PromptSet):
        return prompts
    if prompts is None:
        raise BadInput("prompts is None; pass a list of prompts, a JSONL path, token ids or a datasets.Dataset")
    if isinstance(prompts, Tensor) or type(prompts).__module__ == "numpy":
        return PromptSet.from_tokens(prompts)
    if isinstance(prompts, os.PathLike) or (isinstance(prompts, str) and prompts.endswith(".jsonl")):
        return PromptSet.from_jsonl(prompts, chat=chat)
    if isinstance(prompts, str):
        raise BadInput(
            "got a single string where a list of prompts was expected; pass [text] (or a path ending "
            "in .jsonl)"
        )
    if hasattr(prompts, "column_names") and hasattr(prompts, "features"):
        return PromptSet.from_dataset(prompts, chat=chat)
    if isinstance(prompts, Mapping):
        raise BadInput(
            "got a dict where a list of prompts was expected; for per-domain prompts pass e.g. "
            "[p for ps in prompts.values() for p in ps]"
        )
    return PromptSet.from_list(prompts, chat=chat)
