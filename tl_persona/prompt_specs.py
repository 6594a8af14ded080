"""Resolve a prompt spec (a file, a dataset folder, the organism's evaluation prompts) into prompts.

What ``--prompts`` on the command line and ``prompts.prompts`` in a run config read. A spec is one of:

* ``organism:eval`` or ``organism:eval:DOMAIN,...``: Persona World's held-out evaluation chats;
* a Betley-style question file (``.yaml``, ``.yml``, ``.csv``, or ``.jsonl`` rows with a
  ``question``): one chat per paraphrase;
* a JSON-lines file of prompts or chats (:meth:`tl_persona.data.PromptSet.from_jsonl`);
* token ids (a ``.pt`` file of a ``[batch, pos]`` tensor, or a ``datasets`` folder), only where the
  caller reads activations without sampling (``tokens=True``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tl_persona.validate import BadInput

__all__ = ["load_prompts"]


def load_prompts(spec: str | None, *, texts: Sequence[str] = (), limit: int | None = None, tokens: bool = False,
                 who: str = "this command") -> list[Any]:
    """The prompts of ``spec`` after one single-turn chat per text in ``texts``, at most ``limit`` of
    them: chat conversations (lists of messages), or token-id lists where ``tokens`` allows them
    (``who`` names the caller in the error when it does not)."""
    out: list[Any] = [[{"role": "user", "content": p}] for p in texts]
    if spec:
        out += _read(spec, tokens, who)
    if limit:
        out = out[:limit]
    if not out:
        raise BadInput("no prompts; pass --prompts FILE or --prompt TEXT")
    return out


def _read(spec: str, tokens: bool, who: str) -> list[Any]:
    if spec.startswith("organism:eval"):
        return _organism_prompts(spec)
    path = Path(spec)
    if path.suffix == ".pt" or (path.is_dir() and (path / "dataset_info.json").exists()):
        if not tokens:
            raise BadInput(f"--prompts {spec!r} holds token ids, which {who} cannot answer; pass chat prompts")
        return _token_prompts(path)
    if path.suffix in (".yaml", ".yml", ".csv") or _is_question_jsonl(path):
        from tl_persona.evals.questions import expand_questions, load_questions

        return [conv for _, conv in expand_questions(load_questions(spec), samples_per_paraphrase=1)]
    from tl_persona.data import PromptSet

    return [list(it.prompt) if it.is_chat else [{"role": "user", "content": it.prompt}]
            for it in PromptSet.from_jsonl(spec, chat=True).items]


def _organism_prompts(spec: str) -> list[Any]:
    from tl_persona import organism

    domains = spec.split(":")[2].split(",") if spec.count(":") >= 2 else None
    evals = organism.load().eval_prompts
    if domains and not set(domains) <= set(evals):
        raise BadInput(f"unknown organism domain(s) {sorted(set(domains) - set(evals))}; have {sorted(evals)}")
    return [conv for d, convs in evals.items() if domains is None or d in domains for conv in convs]


def _token_prompts(path: Path) -> list[Any]:
    """A ``.pt`` file holding a ``[batch, pos]`` tensor (or a dict with ``tokens`` and
    ``attention_mask``), or a ``datasets`` folder (``save_to_disk``) with an ``input_ids``/``tokens``
    column."""
    from tl_persona.data import PromptSet

    if path.suffix == ".pt":
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        ps = (PromptSet.from_tokens(obj["tokens"], attention_mask=obj.get("attention_mask"))
              if isinstance(obj, dict) else PromptSet.from_tokens(obj))
    else:
        from datasets import load_from_disk

        ps = PromptSet.from_dataset(load_from_disk(str(path)))
    return [list(it.tokens) for it in ps.items if it.tokens is not None] or [it for it in ps.items]


def _is_question_jsonl(path: Path) -> bool:
    if path.suffix != ".jsonl" or not path.exists():
        return False
    from tl_persona.data import read_utf8

    first = next((ln for ln in read_utf8(path).split("\n") if ln.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "question" in obj
