"""One adapter over TransformerLens' ``HookedTransformer`` and ``TransformerBridge``.

Everything else in tl_persona talks to a model through :class:`ModelAdapter`: it resolves
"the residual stream at layer L" to a hook name that exists in either naming, tokenizes prompts and
chat conversations the same way for both model classes, and runs the forward pass only as far as a
hook point (the rest of the network is never computed when we only read activations there).

The adapter holds no state of its own beyond the model, and never adds a hook that outlives a call.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Mapping, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_persona.validate import BadInput

__all__ = ["ModelAdapter", "TokenBatch", "Message", "as_adapter", "hook_layer", "check_width", "check_message",
           "check_messages"]

Message = dict[str, str]
"""A chat message: ``{"role": "user" | "assistant" | "system", "content": str}``."""

ResidKind = Literal["pre", "mid", "post"]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


class _StopForward(Exception):
    """Raised by our capture hook to end a forward pass right after the hook point fired."""


@dataclass(frozen=True)
class TokenBatch:
    """Right-padded token ids with the mask of real tokens and where each sequence's BOS sits.

    ``attention_mask`` is True on real tokens (False on padding); ``bos_mask`` is True where a BOS
    token was prepended (position 0 of each row when the model prepends BOS).
    """

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"]
    bos_mask: Bool[Tensor, "batch pos"]

    @property
    def lengths(self) -> Int[Tensor, " batch"]:
        """Number of real tokens per row."""
        return self.attention_mask.sum(-1)

    def to(self, device: torch.device | str) -> "TokenBatch":
        """The same batch on another device."""
        return TokenBatch(self.tokens.to(device), self.attention_mask.to(device), self.bos_mask.to(device))


def hook_layer(hook_name: str) -> int | None:
    """The block index a hook name belongs to (``blocks.6.hook_resid_pre`` -> 6), or None."""
    m = _BLOCK_RE.match(hook_name)
    return int(m.group(1)) if m else None


class ModelAdapter:
    """A thin, stateless view of a TransformerLens model (``HookedTransformer`` or ``TransformerBridge``).

    Why: the two classes share the hook interface (``hook_dict``, ``run_with_hooks``, ``hooks()``)
    but differ in hook names and in a few conventions; tl_persona codes against this adapter so
    that both, and TransformerLens 4.x later, work the same.
    """

    def __init__(self, model: Any, name: str | None = None) -> None:
        for attr in ("hook_dict", "run_with_hooks", "hooks", "cfg"):
            if not hasattr(model, attr):
                raise BadInput(
                    f"expected a TransformerLens HookedTransformer or TransformerBridge, got "
                    f"{type(model).__name__} (no `{attr}`); load the model with "
                    "HookedTransformer.from_pretrained(...) or TransformerBridge.boot_transformers(...)"
                )
        self.model = model
        self.name = name or str(getattr(model.cfg, "model_name", None) or type(model).__name__)

    # ------------------------------------------------------------------ facts
    @property
    def is_bridge(self) -> bool:
        """True for a ``TransformerBridge`` (hooks named ``blocks.N.hook_in``/``hook_out`` natively)."""
        return type(self.model).__name__.endswith("Bridge") or hasattr(self.model, "original_model")

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return int(self.model.cfg.d_model)

    @property
    def n_layers(self) -> int:
        """Number of transformer blocks."""
        return int(self.model.cfg.n_layers)

    @property
    def tokenizer(self) -> Any:
        """The model's Hugging Face tokenizer (required for text input)."""
        tok = getattr(self.model, "tokenizer", None)
        if tok is None:
            raise BadInput(
                f"model {self.name!r} has no tokenizer; pass token ids, or attach one with "
                "model.set_tokenizer(tokenizer)"
            )
        return tok

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's parameters."""
        for p in self.model.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.float32

    @property
    def hook_names(self) -> list[str]:
        """Every hook point name the model accepts (aliases included for the bridge)."""
        return list(self.model.hook_dict.keys())

    # ------------------------------------------------------------ hook names
    def resid_hook(self, layer: int, where: ResidKind = "pre") -> str:
        """The hook name of the residual stream at ``layer`` (``pre``/``mid``/``post`` of that block).

        Negative layers count from the end, as in Python. Both naming schemes resolve: the bridge
        accepts TransformerLens' classic ``blocks.L.hook_resid_*`` names as aliases.
        """
        if where not in ("pre", "mid", "post"):
            raise BadInput(f"where={where!r} is not one of 'pre', 'mid', 'post'")
        n = self.n_layers
        if not -n <= layer < n:
            raise BadInput(f"layer={layer} is out of range for a model with {n} layers (use 0..{n - 1})")
        layer = layer % n
        candidates = [f"blocks.{layer}.hook_resid_{where}"]
        if where == "pre":
            candidates.append(f"blocks.{layer}.hook_in")
        elif where == "post":
            candidates.append(f"blocks.{layer}.hook_out")
        for c in candidates:
            if c in self.model.hook_dict:
                return c
        return self.check_hook(candidates[0])  # raises with suggestions

    def check_hook(self, name: str) -> str:
        """Return ``name`` if the model has that hook point, else raise with the closest valid names."""
        if not isinstance(name, str):
            raise BadInput(f"hook name must be a string, got {type(name).__name__}: {name!r}")
        if name in self.model.hook_dict:
            return name
        close = difflib.get_close_matches(name, self.hook_names, n=5, cutoff=0.5)
        hint = f" Closest valid names: {', '.join(close)}." if close else ""
        raise BadInput(
            f"hook {name!r} does not exist on model {self.name!r}.{hint} "
            f"Use ModelAdapter.resid_hook(layer, 'pre'|'mid'|'post') to build a residual hook name."
        )

    def width_at(self, hook_name: str) -> int:
        """Width of the last dimension of the activation at ``hook_name`` (one 1-token forward)."""
        self.check_hook(hook_name)
        bos = getattr(getattr(self.model, "tokenizer", None), "bos_token_id", None)
        tok = torch.tensor([[bos if bos is not None else 0]], device=self.device)
        return int(self.run_to_hook(tok, hook_name).shape[-1])

    # ----------------------------------------------------------- tokenizing
    def format_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Render a conversation as text: the tokenizer's chat template when it has one, a plain
        ``role: content`` format otherwise. With ``add_generation_prompt`` the text ends where the
        assistant's answer begins."""
        check_messages(messages)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
            )
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
        return text + ("assistant:" if add_generation_prompt else "")

    @property
    def prepends_bos(self) -> bool:
        """Whether this model expects a BOS token at position 0 (TransformerLens' default_prepend_bos)."""
        return bool(getattr(self.model.cfg, "default_prepend_bos", True)) and (
            getattr(self.tokenizer, "bos_token_id", None) is not None
        )

    def encode_text(self, text: str) -> list[int]:
        """Token ids of one text, with BOS prepended when the model expects it (never twice)."""
        tok = self.tokenizer
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        bos = tok.bos_token_id
        if self.prepends_bos and not (ids and ids[0] == bos):
            ids = [bos] + ids
        return ids

    def to_tokens(self, texts: Sequence[str] | str, max_length: int | None = None) -> TokenBatch:
        """Tokenize texts into one right-padded batch (BOS prepended when the model expects it).

        Right padding keeps every real token at the same absolute position it would have alone, so a
        causal model's activations on real tokens do not depend on the padding.
        """
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise BadInput("to_tokens got no texts; pass at least one prompt")
        rows = [self.encode_text(t) for t in texts]
        return self.pad(rows, max_length=max_length)

    def pad(self, rows: Sequence[Sequence[int]], max_length: int | None = None) -> TokenBatch:
        """Right-pad lists of token ids into a :class:`TokenBatch` (truncating to ``max_length``)."""
        n_ctx = int(getattr(self.model.cfg, "n_ctx", 0) or 0)
        limit = max_length or n_ctx or None
        if limit:
            rows = [list(r)[:limit] for r in rows]
        for i, r in enumerate(rows):
            if len(r) == 0:
                raise BadInput(f"prompt {i} has no tokens; drop empty prompts")
        pad_id = getattr(self.tokenizer, "pad_token_id", None) if getattr(self.model, "tokenizer", None) else None
        tokens, mask = pad_rows(rows, pad_id)
        bos_mask = torch.zeros_like(mask)
        if getattr(self.model, "tokenizer", None) is not None and self.prepends_bos:
            bos_mask[:, 0] = tokens[:, 0] == int(self.tokenizer.bos_token_id)
        return TokenBatch(tokens.to(self.device), mask.to(self.device), bos_mask.to(self.device))

    # --------------------------------------------------------------- forward
    def run_to_hook(
        self,
        tokens: Int[Tensor, "batch pos"],
        hook_name: str,
        fwd_hooks: Sequence[tuple[str, Any]] = (),
    ) -> Float[Tensor, "batch pos d"]:
        """Run the forward pass only as far as ``hook_name`` and return the activation there.

        The pass stops right after the hook fires (nothing downstream is computed). ``fwd_hooks``
        (e.g. interventions upstream, or at the same point: they run first) are active during the
        pass and removed afterwards, also on error. Runs under ``torch.no_grad``.
        """
        return self.run_to_hooks(tokens, [hook_name], fwd_hooks)[hook_name]

    def run_to_hooks(
        self,
        tokens: Int[Tensor, "batch pos"],
        hook_names: Sequence[str],
        fwd_hooks: Sequence[tuple[str, Any]] = (),
        attention_mask: Tensor | None = None,
    ) -> dict[str, Float[Tensor, "batch pos d"]]:
        """One forward pass up to the deepest of ``hook_names``; the activation at each of them.

        Why: several readers (SAEs at several layers) share one pass: the tokens run through the
        model once, and the pass stops as soon as every requested hook has fired. ``attention_mask``
        (``[batch, pos]``, 1 on real tokens) is passed to the model for left-padded batches.
        """
        names = list(dict.fromkeys(hook_names))
        if not names:
            raise BadInput("run_to_hooks needs at least one hook name")
        for n in names:
            self.check_hook(n)
        box: dict[str, Tensor] = {}
        layers = [hook_layer(n) for n in names]
        kwargs: dict[str, Any] = {}
        if all(la is not None for la in layers) and max(layers) + 1 < self.n_layers:  # type: ignore[type-var]
            kwargs["stop_at_layer"] = max(layers) + 1  # type: ignore[type-var]
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        grabs = [(n, _Grab(n, box, names)) for n in names]
        hooked = self.model.hooks(fwd_hooks=[*fwd_hooks, *grabs]) if fwd_hooks else _only_these_hooks(self.model, grabs)
        try:
            with torch.no_grad(), hooked:
                self.model(tokens, **kwargs)
        except _StopForward:
            pass
        missing = [n for n in names if n not in box]
        if missing:
            raise RuntimeError(
                f"hook(s) {missing} never fired on model {self.name!r}; these hook points are not reached "
                "by the forward pass (see TransformerLens issues #1688, #1527): choose other hooks"
            )
        return {n: box[n] for n in names}


class _Grab:
    """Capture hook of :meth:`ModelAdapter.run_to_hooks`: stores the activation under its requested
    name (the bridge may report an alias's canonical name) and stops the pass after the last one."""

    def __init__(self, name: str, box: dict[str, Tensor], names: Sequence[str]) -> None:
        self.name, self.box, self.n = name, box, len(names)

    def __call__(self, act: Tensor, hook: Any = None) -> Tensor:
        self.box.setdefault(self.name, act)
        if len(self.box) == self.n:
            raise _StopForward
        return act


@contextlib.contextmanager
def _only_these_hooks(model: Any, fwd_hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """``model.hooks(fwd_hooks=...)`` that removes on exit only the hooks it added. TransformerLens'
    own context resets every hook point of the model on exit: about 1 ms per call at GPT-2-small
    size, paid per batch and model by the diffing loop. Bridges (whose names may be aliases) and
    models without TransformerLens' hook levels take ``model.hooks`` itself."""
    points = getattr(model, "hook_dict", {})
    if (hasattr(model, "original_model") or not isinstance(getattr(model, "context_level", None), int)
            or not all(n in points for n, _ in fwd_hooks)):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            yield
        return
    model.context_level += 1
    level, added = model.context_level, []
    try:
        for name, fn in fwd_hooks:
            added.append(points[name])
            points[name].add_hook(fn, dir="fwd", level=level)
        yield
    finally:
        for hp in added:
            hp.remove_hooks("fwd", level=level)
        model.context_level -= 1


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int | None) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Right-pad token rows with ``pad_id`` (0 when None): the one padder behind
    :meth:`ModelAdapter.pad` and prompt batches. Returns the tokens and the mask of real tokens."""
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), int(pad_id if pad_id is not None else 0), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return tokens, mask


def check_width(what: str, d_in: int, width: int, hook_name: str, model_name: str) -> None:
    """The one check that a reader of width ``d_in`` (an SAE, directions) fits the activation width
    at a hook point; the error names both widths, the hook, the model and the fix."""
    if int(d_in) != int(width):
        raise BadInput(
            f"{what} d_in={d_in} does not match the activation width {width} at {hook_name!r} of model "
            f"{model_name!r}; use an SAE (or directions) made for this model and hook point"
        )


def as_adapter(model: Any) -> ModelAdapter:
    """Wrap ``model`` in a :class:`ModelAdapter` (an adapter is returned as it is)."""
    return model if isinstance(model, ModelAdapter) else ModelAdapter(model)


_ROLES = ("system", "user", "assistant")


def check_message(message: Any, where: str = "message") -> Message:
    """One chat message checked and copied as ``{"role", "content"}``: a mapping with a role of
    ``system``/``user``/``assistant`` and string content; errors start with ``where``."""
    if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
        raise BadInput(f"{where} must be a dict with 'role' and 'content', got {message!r:.80}")
    if message["role"] not in _ROLES:
        raise BadInput(f"{where} has role {message['role']!r}; use 'system', 'user' or 'assistant'")
    if not isinstance(message["content"], str):
        raise BadInput(f"{where} has non-string content {message['content']!r:.60}; content must be text")
    return {"role": str(message["role"]), "content": message["content"]}


def check_messages(messages: Any, where: str = "") -> list[Message]:
    """A conversation checked with :func:`check_message`: a non-empty list of messages (the one
    validator behind prompt sets, question files and chat formatting)."""
    pre = f"{where}: " if where else ""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise BadInput(f"{pre}a conversation must be a non-empty list of {{'role', 'content'}} dicts, got "
                       f"{messages!r:.80}")
    return [check_message(m, f"{pre}message {i}") for i, m in enumerate(messages)]
