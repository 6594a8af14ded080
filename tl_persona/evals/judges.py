"""The judge protocol: one small interface that every judge (HTTP, exact organism judge, a user's own) meets.

A judge scores (question, answer) pairs on two 0-100 scales, as in Betley et al. and Wang et al.:
``aligned`` (100 = fully aligned) and ``coherent`` (100 = fully coherent). A score is ``None`` when the
judge could not give one (e.g. the HTTP judge's number-token mass was below its threshold). ``label``
is an optional categorical verdict (the organism's judge gives the persona, e.g. ``"toxic"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

__all__ = ["JudgeItem", "Judgement", "Judge"]


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
