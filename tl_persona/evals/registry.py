"""The judge registry: how the CLI (``--judge``) and a run config (``judge.kind``) build a judge by name.

A judge is any class whose instances have ``judge(items) -> list[Judgement]``
(:class:`~tl_persona.evals.judges.Judge`). :func:`build_judge` makes one from a registered name or
from an import path ``"package.module:Class"``, passing the :class:`JudgeOptions` its constructor
takes, by name (a judge with a ``model`` parameter gets the ``--judge-model`` / ``judge.model``
value; one without gets none). So a new judge is one class in one file::

    # my_judges.py
    from tl_persona.evals.judges import Judgement

    class KeywordJudge:
        def __init__(self, model: str = "bad"):       # the word that makes an answer misaligned
            self.word = model

        def judge(self, items):
            return [Judgement(aligned=0.0 if self.word in it.answer.split() else 100.0, coherent=100.0)
                    for it in items]

and ``tl-persona verify --judge my_judges:KeywordJudge --judge-model w42`` uses it, as does
``judge: {kind: "my_judges:KeywordJudge"}`` in a run config. :func:`register_judge` gives it a
short name in this process; the built-in judges are registered by the import path of their class,
so nothing is imported until a judge is built.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import asdict, dataclass
from typing import Any

from tl_persona.evals.judges import check_judge
from tl_persona.validate import BadInput

__all__ = ["JudgeOptions", "register_judge", "judge_names", "judge_class", "build_judge", "JUDGES"]


@dataclass(frozen=True)
class JudgeOptions:
    """The settings the command line and a run config offer a judge; each judge takes the ones its
    constructor names (``model``, ``base_url``, ``api_key_env``, ``cache``, ``max_concurrency``,
    ``allow_insecure``) and ignores the rest."""

    model: str = "gpt-4o-2024-08-06"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    cache: str | None = None
    max_concurrency: int = 8
    allow_insecure: bool = False


JUDGES: dict[str, tuple[str | type, str]] = {
    "organism": ("tl_persona.organism.judge:PersonaJudge", "Persona World's exact judge (reads the persona off the answer)"),
    "openai": ("tl_persona.evals.http_judge:OpenAIJudge", "an OpenAI-compatible chat endpoint, scored from logprobs"),
}
"""Registered judges: name -> (the class, or its import path ``"module:Class"``, and a description)."""


def register_judge(name: str, target: str | type, description: str = "", *, replace: bool = False) -> None:
    """Offer the judge class ``target`` (or its import path ``"module:Class"``) as ``name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise BadInput(f"judge name {name!r} must be a non-empty word without ':' (an import path is a spec of its own)")
    if not isinstance(target, (str, type)):
        raise BadInput(f"register_judge takes a judge class or its import path 'module:Class', got {type(target).__name__}")
    if name in JUDGES and not replace:
        raise BadInput(f"judge {name!r} is already registered; pass replace=True to replace it")
    JUDGES[name] = (target, description)


def judge_names() -> list[str]:
    """The registered judges' names."""
    return list(JUDGES)


def judge_class(spec: str) -> type:
    """The judge class a registered name or an import path ``"module:Class"`` stands for."""
    if not isinstance(spec, str) or not spec:
        raise BadInput(f"judge={spec!r} must be a registered judge ({', '.join(map(repr, JUDGES))}) or 'module:Class'")
    target = JUDGES[spec][0] if spec in JUDGES else spec
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    if not attr:
        close = difflib.get_close_matches(spec, list(JUDGES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BadInput(f"judge {spec!r} is not registered{hint}; registered: {', '.join(map(repr, JUDGES))}, or pass "
                       "an import path 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise BadInput(f"judge {spec!r}: cannot import {attr!r} from {module!r} ({e})") from None
    if not isinstance(cls, type):
        raise BadInput(f"judge {spec!r} is a {type(cls).__name__}, not a class")
    return cls


def build_judge(spec: str, options: JudgeOptions | None = None) -> Any:
    """A judge instance of ``spec`` (a registered name or ``"module:Class"``), built with the
    ``options`` its constructor takes by name."""
    options = options or JudgeOptions()
    cls = judge_class(spec)
    params = inspect.signature(cls).parameters
    given = {k: v for k, v in asdict(options).items() if k in params}
    missing = [n for n, p in params.items() if p.default is p.empty and n not in given
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise BadInput(f"judge {spec!r} needs {missing}, which are not judge options ({', '.join(asdict(options))}); "
                       "give them defaults")
    return check_judge(cls(**given), f"judge {spec!r}")
