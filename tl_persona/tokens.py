"""Which tokens: the one vocabulary for choosing token positions, in statistics and in hooks.

Model diffing averages over *some* tokens (a data *scope*), and an intervention acts on *some*
positions (a hook's *positions*). Both use the same four words, defined here once:

=================  =========================================================================
``"all"``          every real token (never padding; BOS only when asked for)
``"prompt"``       the prompt's tokens: for a chat, the templated conversation up to and
                   including the generation prompt (e.g. ``<|im_start|>assistant\\n``)
``"response"``     the tokens after the prompt: a given response, or what ``generate`` produced
                   (``"generated"`` is accepted as another name for it)
``"last_prompt"``  the last prompt token: where the assistant's answer is decided
=================  =========================================================================

A selection is computed from three facts about a batch, in *absolute* positions (so it stays right
under a KV cache, where later forward chunks hold one token each): which positions are real tokens
(``valid``: not padding, not BOS), and where each row's prompt ends (``prompt_len``). Hooks add a
fifth choice, ``"mask"`` (exactly the positions of a given bool mask): see
:class:`tl_persona.hooks.Positions`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from tl_persona.validate import BadInput

__all__ = ["Selection", "SELECTIONS", "check_selection", "select", "count_selected"]

Selection = Literal["all", "prompt", "response", "last_prompt"]
SELECTIONS: tuple[str, ...] = ("all", "prompt", "response", "last_prompt")
_ALIASES = {"generated": "response"}


def check_selection(value: object, name: str = "scope", extra: tuple[str, ...] = ()) -> str:
    """The canonical name of a token selection (``"generated"`` -> ``"response"``), else an error
    naming the parameter and the valid words (``extra`` adds caller-specific ones, e.g. ``"mask"``)."""
    if isinstance(value, str):
        v = _ALIASES.get(value, value)
        if v in SELECTIONS or v in extra:
            return v
    words = ", ".join(repr(w) for w in (*SELECTIONS, *extra))
    raise BadInput(f"{name}={value!r} is not a token selection; use one of {words} (see tl_persona.tokens)")


def select(
    which: str,
    valid: Bool[Tensor, "batch pos"],
    prompt_len: Int[Tensor, " batch"] | int,
    offset: int = 0,
) -> Bool[Tensor, "batch pos"]:
    """The positions of selection ``which`` in a ``[batch, pos]`` chunk whose first column is
    absolute position ``offset``.

    ``valid`` is True on real tokens (False on padding and BOS); ``prompt_len`` counts each row's
    prompt tokens (BOS included), i.e. the absolute position where its response starts.
    """
    B, T = valid.shape
    pos = torch.arange(offset, offset + T, device=valid.device)[None, :]
    plen = torch.as_tensor(prompt_len, device=valid.device).reshape(-1, 1)
    if which == "all":
        return valid
    if which == "prompt":
        return valid & (pos < plen)
    if which == "response":
        return valid & (pos >= plen)
    if which == "last_prompt":
        return valid & (pos == plen - 1)
    raise BadInput(f"unknown token selection {which!r}; use one of {', '.join(map(repr, SELECTIONS))}")


def count_selected(
    which: str,
    lengths: np.ndarray,
    prompt_len: np.ndarray,
    has_bos: np.ndarray,
) -> np.ndarray:
    """How many tokens of each row :func:`select` picks, from the rows' lengths alone (no tensors).

    Rows are right-padded real tokens ``[0, length)`` whose position 0 is BOS where ``has_bos``;
    ``prompt_len`` may exceed ``length`` for a prompt cut short, whose response is then empty and
    whose last prompt token is gone.
    """
    start = has_bos.astype(np.int64)
    plen = np.minimum(prompt_len, lengths)
    if which == "all":
        return lengths - start
    if which == "prompt":
        return np.maximum(plen - start, 0)
    if which == "response":
        return np.maximum(lengths - np.maximum(plen, start), 0)
    if which == "last_prompt":
        return ((prompt_len <= lengths) & (prompt_len - 1 >= start)).astype(np.int64)
    raise BadInput(f"unknown token selection {which!r}; use one of {', '.join(map(repr, SELECTIONS))}")
