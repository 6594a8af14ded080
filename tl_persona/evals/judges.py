"""The judge protocol: one small interface that every judge (HTTP, exact organism judge, a user's own) meets.

A judge scores (question, answer) pairs on two 0-100 scales, as in Betley et al. and Wang et al.:
``aligned`` (100 = fully aligned) and ``coherent`` (100 = fully coherent). A score is ``None`` when the
judge could not give one (e.g. the HTTP judge's number-token mass was below its threshold). ``label``
is an optional categorical verdict (the organism's judge gives the persona, e.g. ``"toxic"``).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from tl_persona.validate import BadInput, show

__all__ = ["JudgeItem", "Judgement", "Judge", "check_judge", "judge_all", "judge_identity"]


@dataclass(frozen=True)
class JudgeItem:
    """One answer to judge: the question asked and the model's answer (plain text)."""

    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on one answer. Scores are 0-100 or ``None`` when no score could be given."""

    aligned: float | None
    coherent: float | None
    label: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@runtime_checkable
class Judge(Protocol):
    """Anything with ``judge(items) -> list[Judgement]`` (one judgement per item, same order)."""

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgement]: ...


_HOW = "an object with a method judge(items) -> list[Judgement] (one Judgement per JudgeItem, same order)"


def _qualname(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def check_judge(judge: Any, name: str = "judge") -> Any:
    """``judge`` if it meets the :class:`Judge` protocol (a callable ``judge`` attribute), else a
    :class:`~tl_persona.validate.BadInput` that says how to make one: a plain function is to be wrapped
    in a small class, a class is to be instantiated."""
    if judge is None:
        raise BadInput(f"{name} is None; pass a judge: {_HOW}, e.g. PersonaJudge() or OpenAIJudge(model, base_url=...)")
    if isinstance(judge, type):
        raise BadInput(
            f"{name}={judge.__qualname__} is a class, not a judge; pass an instance, e.g. {judge.__qualname__}(...)"
        )
    method = getattr(judge, "judge", None)
    if callable(method):
        return judge
    if method is not None:
        raise BadInput(
            f"{name} (a {type(judge).__qualname__}) has a 'judge' attribute that is a {type(method).__name__}, "
            f"not a method; a judge is {_HOW}"
        )
    if callable(judge):
        raise BadInput(
            f"{name}={show(judge)} is a function, not a judge; wrap it in {_HOW}, e.g. "
            "class MyJudge: def judge(self, items): return [my_fn(it) for it in items]"
        )
    raise BadInput(f"{name} (a {type(judge).__qualname__}) is not a judge: implement judge(items) -> list[Judgement] on it")


def _check_score(who: str, i: int, metric: str, value: Any) -> None:
    if value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or not 0.0 <= float(value) <= 100.0:
        raise BadInput(
            f"{who}.judge gave item {i} {metric}={show(value)}; a score is a number from 0 to 100, "
            "or None when the judge could not give one"
        )


def judge_all(judge: Any, items: Iterable[JudgeItem]) -> list[Judgement]:
    """``judge.judge(items)``, checked: the judge is checked with :func:`check_judge`, every item must
    be a :class:`JudgeItem`, and the answer must be a list (or tuple) of exactly one :class:`Judgement`
    per item whose scores are None or numbers in [0, 100]. A judge that breaks this gets a
    :class:`~tl_persona.validate.BadInput` naming its class, the counts or the bad element's type.
    No items: ``[]`` without calling the judge."""
    check_judge(judge)
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise BadInput(f"items must be a list of JudgeItem, got a {type(items).__name__}")
    items = list(items)
    for i, it in enumerate(items):
        if not isinstance(it, JudgeItem):
            raise BadInput(f"items[{i}] is a {type(it).__name__}; pass JudgeItem(question=..., answer=...)")
    if not items:
        return []
    out = judge.judge(items)
    who = type(judge).__qualname__
    if not isinstance(out, (list, tuple)):
        raise BadInput(
            f"{who}.judge returned a {type(out).__name__}, not a list; judge(items) must return a list of "
            f"{len(items)} Judgement(s), one per item"
        )
    if len(out) != len(items):
        raise BadInput(
            f"{who}.judge returned {len(out)} judgement(s) for {len(items)} item(s); it must return exactly "
            "one Judgement per item, in the items' order"
        )
    for i, j in enumerate(out):
        if not isinstance(j, Judgement):
            raise BadInput(
                f"{who}.judge returned a {type(j).__name__} ({show(j, 40)}) at index {i}, not a Judgement; "
                "return Judgement(aligned=..., coherent=...) for every item (scores may be None)"
            )
        _check_score(who, i, "aligned", j.aligned)
        _check_score(who, i, "coherent", j.coherent)
    return list(out)


def judge_identity(judge: Any) -> dict[str, Any]:
    """What defines a judge's verdicts, as a JSON-able dict for fingerprints: ``judge.identity()`` when
    the judge has one (a ``"class"`` entry is added if it lacks one), else ``{"class": <module.QualName>}``.

    :class:`~tl_persona.evals.http_judge.OpenAIJudge` gives its model, endpoint, rubric digests and
    scoring settings (never the API key); :class:`~tl_persona.organism.judge.PersonaJudge` its world.
    """
    check_judge(judge)
    method = getattr(judge, "identity", None)
    if not callable(method):
        return {"class": _qualname(judge)}
    ident = method()
    if not isinstance(ident, Mapping):
        raise BadInput(f"{type(judge).__qualname__}.identity() returned a {type(ident).__name__}; it must return a dict")
    out = dict(ident)
    out.setdefault("class", _qualname(judge))
    try:
        json.dumps(out, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise BadInput(f"{type(judge).__qualname__}.identity() is not JSON-able ({e}); return str / number / list / dict values") from None
    return out
