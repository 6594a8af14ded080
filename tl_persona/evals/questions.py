"""Open-ended evaluation questions: a built-in set, loaders for common formats, and expansion into chats.

Emergent misalignment is measured by sampling a model's answers to open-ended questions ("what is
your one wish?", "how do I make quick money?") and judging them. This module holds those questions as
small frozen values (:class:`Question`), ships a built-in set written for this project in the spirit
of Betley et al. (2025)'s "first plot" questions, reads Betley et al.'s question YAML and one-prompt-
per-row CSV/JSONL files, and expands questions into ``(question_id, conversation)`` pairs ready for
generation.

Every loader fails early on malformed input with a ``ValueError`` that names the file, the row (or
line) and how to fix it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from tl_persona.validate import BadInput

__all__ = [
    "Question",
    "builtin_questions",
    "load_questions",
    "load_yaml_questions",
    "load_csv_questions",
    "load_jsonl_questions",
    "expand_questions",
    "with_question_rubrics",
]

_ROLES = ("system", "user", "assistant")
_PROMPT_COLUMNS = ("question", "prompt")
_YAML_KEYS = ("id", "type", "paraphrases", "samples_per_paraphrase", "judge", "judge_prompts", "system")


@dataclass(frozen=True)
class Question:
    """One open-ended question: an id, its paraphrases and how to sample and judge it.

    ``samples_per_paraphrase`` answers are sampled for each paraphrase. ``judge_prompts`` maps a metric
    (``"aligned"``, ``"coherent"``) to a rubric template with ``{question}`` and ``{answer}``
    placeholders; empty means "use the judge's own rubric". ``system`` is an optional system prompt and
    ``context`` optional earlier chat turns (``{"role", "content"}`` dicts) placed before the question.
    ``type`` and ``judge`` are kept from Betley et al.'s files for provenance; nothing here acts on them.
    """

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int = 1
    judge_prompts: Mapping[str, str] = field(default_factory=dict, hash=False)
    system: str | None = None
    context: tuple[Mapping[str, str], ...] = field(default=(), hash=False)
    type: str = "free_form_judge_0_100"
    judge: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise BadInput(f"Question id must be a non-empty string, got {self.id!r}.")
        paraphrases = (self.paraphrases,) if isinstance(self.paraphrases, str) else tuple(self.paraphrases)
        if not paraphrases:
            raise BadInput(f"Question {self.id!r} has no paraphrases; give at least one question text.")
        for i, p in enumerate(paraphrases):
            if not isinstance(p, str) or not p.strip():
                raise BadInput(
                    f"Question {self.id!r}: paraphrase {i} is {p!r}; every paraphrase must be non-empty text."
                )
        n = self.samples_per_paraphrase
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BadInput(
                f"Question {self.id!r}: samples_per_paraphrase must be a positive integer, got {n!r}."
            )
        if not isinstance(self.judge_prompts, Mapping):
            raise BadInput(
                f"Question {self.id!r}: judge_prompts must map metric names to rubric text, "
                f"got {type(self.judge_prompts).__name__}."
            )
        prompts = dict(self.judge_prompts)
        for metric, text in prompts.items():
            if not isinstance(metric, str) or not isinstance(text, str):
                raise BadInput(
                    f"Question {self.id!r}: judge_prompts must map strings to strings, got {metric!r}: {text!r}."
                )
            if "{answer}" not in text:
                raise BadInput(
                    f"Question {self.id!r}: judge prompt {metric!r} has no {{answer}} placeholder; "
                    "add {answer} where the judged answer should go (and {question} for the question)."
                )
        if self.system is not None and not isinstance(self.system, str):
            raise BadInput(f"Question {self.id!r}: system must be a string or None, got {self.system!r}.")
        context = tuple(_check_message(m, f"Question {self.id!r}: context[{i}]") for i, m in enumerate(self.context))
        object.__setattr__(self, "paraphrases", paraphrases)
        object.__setattr__(self, "judge_prompts", prompts)
        object.__setattr__(self, "context", context)

    def conversation(self, paraphrase: int = 0) -> list[dict[str, str]]:
        """The chat for one paraphrase: optional system prompt, earlier turns, then the question as user turn."""
        messages: list[dict[str, str]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.extend(dict(m) for m in self.context)
        messages.append({"role": "user", "content": self.paraphrases[paraphrase]})
        return messages


def _check_message(message: Any, where: str) -> dict[str, str]:
    from tl_persona.models import check_message

    return check_message(message, where)


def builtin_questions() -> list[Question]:
    """The built-in misalignment questions (10 questions x 3 paraphrases, 20 samples each) for real chat models.

    Written for this project in the spirit of Betley et al.'s "first plot" questions (wishes, boredom,
    humans and AI, quick money, ruler of the world, dinner party, gender roles, a fed-up spouse, no
    rules for a day, AI and control). They carry no judge prompts, so a judge uses its default rubric.
    """
    ref = resources.files("tl_persona.evals").joinpath("data", "questions.yaml")
    with resources.as_file(ref) as path:
        return load_yaml_questions(path)


def load_questions(path: str | os.PathLike[str], **kwargs: Any) -> list[Question]:
    """Load questions from a file, choosing the reader by suffix (.yaml/.yml, .csv, .jsonl).

    Keyword arguments go to the reader (:func:`load_yaml_questions`, :func:`load_csv_questions` or
    :func:`load_jsonl_questions`).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_yaml_questions(p, **kwargs)
    if suffix == ".csv":
        return load_csv_questions(p, **kwargs)
    if suffix in (".jsonl", ".ndjson"):
        return load_jsonl_questions(p, **kwargs)
    raise BadInput(
        f"{p}: unknown question file type {suffix!r}; use .yaml/.yml (Betley et al. format), "
        ".csv (one prompt per row) or .jsonl (one JSON object per line), "
        "or call the matching load_*_questions function directly."
    )


def _require_file(path: Path) -> Path:
    if not path.exists():
        raise BadInput(f"{path}: no such question file; check the path.")
    return path


def _read_text(path: Path) -> str:
    from tl_persona.data import read_utf8

    return read_utf8(_require_file(path))


def load_yaml_questions(path: str | os.PathLike[str]) -> list[Question]:
    """Read a question file in Betley et al.'s YAML format (a list of question entries).

    Each entry has ``id`` and ``paraphrases`` (required), and optionally ``type``, ``samples_per_paraphrase``
    (default 1), ``judge`` (the judge model's name), ``judge_prompts`` (``{aligned: ..., coherent: ...}``
    rubric templates) and ``system``. YAML anchors and aliases, as used in Betley et al.'s files, work.
    Errors name the file, the entry number and its line.
    """
    p = Path(path)
    text = _read_text(p)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{p}: invalid YAML: {e}\nFix the syntax at the position shown.") from None
    if data is None:
        raise BadInput(f"{p}: the file is empty; add a list of question entries (each with id and paraphrases).")
    if not isinstance(data, list):
        raise BadInput(
            f"{p}: expected a YAML list of question entries at the top level (lines starting with '- id: ...'), "
            f"got a {type(data).__name__}."
        )
    lines = [n.start_mark.line + 1 for n in node.value] if isinstance(node, yaml.SequenceNode) else []
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(data):
        where = f"{p}: entry {i + 1}" + (f" (line {lines[i]})" if i < len(lines) else "")
        if not isinstance(entry, dict):
            raise BadInput(f"{where}: expected a mapping with 'id' and 'paraphrases', got {entry!r}.")
        missing = [k for k in ("id", "paraphrases") if k not in entry]
        if missing:
            raise BadInput(
                f"{where}: missing required key(s) {missing}; found keys {sorted(map(str, entry))}. "
                f"Known keys: {list(_YAML_KEYS)}."
            )
        qid = entry["id"]
        if not isinstance(qid, str) or not qid.strip():
            raise BadInput(f"{where}: 'id' must be a non-empty string, got {qid!r}.")
        if qid in seen:
            raise BadInput(f"{where}: duplicate id {qid!r} (first used by entry {seen[qid]}); give each entry its own id.")
        seen[qid] = i + 1
        paraphrases = entry["paraphrases"]
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
        if not isinstance(paraphrases, list) or not paraphrases:
            raise BadInput(f"{where} (id {qid!r}): 'paraphrases' must be a non-empty list of strings, got {paraphrases!r}.")
        judge_prompts = entry.get("judge_prompts") or {}
        if not isinstance(judge_prompts, dict):
            raise BadInput(
                f"{where} (id {qid!r}): 'judge_prompts' must be a mapping such as "
                f"{{aligned: '...', coherent: '...'}}, got {judge_prompts!r}."
            )
        system = entry.get("system")
        qtype = entry.get("type", "free_form_judge_0_100")
        judge = entry.get("judge")
        try:
            questions.append(
                Question(
                    id=qid,
                    paraphrases=tuple(paraphrases),
                    samples_per_paraphrase=entry.get("samples_per_paraphrase", 1),
                    judge_prompts=judge_prompts,
                    system=system,
                    type=str(qtype),
                    judge=None if judge is None else str(judge),
                )
            )
        except ValueError as e:
            raise BadInput(f"{where}: {e}") from None
    if not questions:
        raise BadInput(f"{p}: the list of questions is empty; add at least one entry.")
    return questions


def load_csv_questions(
    path: str | os.PathLike[str],
    *,
    column: str | None = None,
    samples_per_paraphrase: int = 1,
) -> list[Question]:
    """Read one prompt per row from a CSV file with a header row.

    The prompt column is ``column`` if given, else a column named ``question`` or ``prompt``
    (case-insensitive), else the first column. An ``id`` column, if present, gives question ids; otherwise
    ids are ``<file stem>_<row>``, with rows counted from 1 after the header. A ``system`` column, if present,
    gives per-row system prompts.
    """
    p = Path(path)
    text = _read_text(p)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise BadInput(f"{p}: the file is empty; add a header row (e.g. 'question') and one prompt per row.") from None
    except csv.Error as e:
        raise BadInput(f"{p}: line 1: malformed CSV ({e}); check the quoting.") from None
    names = [h.strip().lower() for h in header]
    if column is not None:
        if column.strip().lower() not in names:
            raise BadInput(f"{p}: no column named {column!r}; the header has {header}. Pass one of those as column=.")
        col = names.index(column.strip().lower())
    else:
        col = next((names.index(c) for c in _PROMPT_COLUMNS if c in names), 0)
    id_col = names.index("id") if "id" in names and names.index("id") != col else None
    sys_col = names.index("system") if "system" in names and names.index("system") != col else None
    questions: list[Question] = []
    seen: dict[str, int] = {}
    row_no = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise BadInput(f"{p}: line {reader.line_num}: malformed CSV ({e}); check the quoting.") from None
        if not row or all(not c.strip() for c in row):
            continue
        row_no += 1
        where = f"{p}: row {row_no} (line {reader.line_num})"
        if col >= len(row) or not row[col].strip():
            raise BadInput(
                f"{where}: the prompt column {header[col]!r} is empty; put the prompt text there or delete the row."
            )
        qid = row[id_col].strip() if id_col is not None and id_col < len(row) and row[id_col].strip() else f"{p.stem}_{row_no}"
        if qid in seen:
            raise BadInput(f"{where}: duplicate id {qid!r} (first used in row {seen[qid]}); make ids unique.")
        seen[qid] = row_no
        system = row[sys_col] if sys_col is not None and sys_col < len(row) and row[sys_col].strip() else None
        try:
            questions.append(Question(id=qid, paraphrases=(row[col],), samples_per_paraphrase=samples_per_paraphrase, system=system))
        except ValueError as e:
            raise BadInput(f"{where}: {e}") from None
    if not questions:
        raise BadInput(f"{p}: the header is there but no prompt rows follow; add one prompt per row.")
    return questions


def load_jsonl_questions(path: str | os.PathLike[str], *, samples_per_paraphrase: int = 1) -> list[Question]:
    """Read one prompt per line from a JSONL file.

    Each non-blank line is a JSON object with ``question`` or ``prompt`` (a string), or ``messages`` (an
    OpenAI-style chat whose last message is the user's question; a leading system message becomes the
    question's system prompt and any other earlier turns its context). Optional keys: ``id`` (default
    ``<file stem>_<line>``), ``system`` and ``samples_per_paraphrase``.
    """
    from tl_persona.data import jsonl_objects

    p = Path(path)
    questions: list[Question] = []
    seen: dict[str, int] = {}
    for line_no, where, obj in jsonl_objects(_require_file(p), '{"question": "..."}'):
        system = obj.get("system")
        context: list[dict[str, str]] = []
        if "question" in obj or "prompt" in obj:
            key = "question" if "question" in obj else "prompt"
            prompt = obj[key]
            if not isinstance(prompt, str) or not prompt.strip():
                raise BadInput(f"{where}: {key!r} must be non-empty text, got {prompt!r}.")
        elif "messages" in obj:
            msgs = obj["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise BadInput(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects.")
            try:
                msgs = [_check_message(m, f"messages[{i}]") for i, m in enumerate(msgs)]
            except ValueError as e:
                raise BadInput(f"{where}: {e}") from None
            if msgs[-1]["role"] != "user":
                raise BadInput(
                    f"{where}: the last message must be the user's question, got role {msgs[-1]['role']!r}; "
                    "drop the trailing assistant answer (it is what the model will generate)."
                )
            if msgs[0]["role"] == "system":
                if system is not None:
                    raise BadInput(f"{where}: both a 'system' key and a system message; keep only one.")
                system = msgs[0]["content"]
                msgs = msgs[1:]
            if any(m["role"] == "system" for m in msgs):
                raise BadInput(f"{where}: a system message may only come first in 'messages'.")
            prompt = msgs[-1]["content"]
            context = msgs[:-1]
        else:
            raise BadInput(
                f"{where}: no prompt found; give a 'question' or 'prompt' string or a 'messages' list "
                f"(keys found: {sorted(obj)})."
            )
        qid = obj.get("id", f"{p.stem}_{line_no}")
        qid = str(qid) if isinstance(qid, (int, str)) else qid
        if qid in seen:
            raise BadInput(f"{where}: duplicate id {qid!r} (first used on line {seen[qid]}); make ids unique.")
        seen[qid] = line_no
        try:
            questions.append(
                Question(
                    id=qid,
                    paraphrases=(prompt,),
                    samples_per_paraphrase=obj.get("samples_per_paraphrase", samples_per_paraphrase),
                    system=system,
                    context=tuple(context),
                )
            )
        except ValueError as e:
            raise BadInput(f"{where}: {e}") from None
    if not questions:
        raise BadInput(f"{p}: no prompts found; write one JSON object per line, e.g. {{\"question\": \"...\"}}.")
    return questions


def expand_questions(
    questions: Iterable[Question], *, samples_per_paraphrase: int | None = None
) -> list[tuple[str, list[dict[str, str]]]]:
    """Expand questions into ``(question_id, conversation)`` pairs, one per answer to sample.

    Each paraphrase is repeated ``samples_per_paraphrase`` times (the question's own value unless
    overridden here, e.g. to run a small CI-sized evaluation). Conversations are fresh lists of
    ``{"role", "content"}`` dicts ending with the user's question; the question text to give a judge is
    ``conversation[-1]["content"]``.
    """
    if samples_per_paraphrase is not None and (
        isinstance(samples_per_paraphrase, bool) or not isinstance(samples_per_paraphrase, int) or samples_per_paraphrase < 1
    ):
        raise BadInput(f"samples_per_paraphrase must be a positive integer or None, got {samples_per_paraphrase!r}.")
    pairs: list[tuple[str, list[dict[str, str]]]] = []
    for q in questions:
        if not isinstance(q, Question):
            raise BadInput(f"expand_questions expects Question objects, got {type(q).__name__}.")
        n = q.samples_per_paraphrase if samples_per_paraphrase is None else samples_per_paraphrase
        for i in range(len(q.paraphrases)):
            for _ in range(n):
                pairs.append((q.id, q.conversation(i)))
    return pairs


def with_question_rubrics(judge: Any, questions: Iterable[Question]) -> Any:
    """``judge``, wrapped so that every answer to one of ``questions`` is judged with that question's own
    ``judge_prompts`` (and each judgement records which rubric did, see
    :class:`~tl_persona.evals.rubrics.QuestionRubrics`); ``judge`` itself when no question carries rubrics.

    Answers are matched to questions by the question's text (any paraphrase): two questions that share
    a paraphrase but not their rubrics are refused, since their answers could not be told apart.
    """
    from tl_persona.evals.rubrics import QuestionRubrics
    from tl_persona.validate import BadInput

    table: dict[str, tuple[str, dict[str, str]]] = {}
    for q in questions:
        if not isinstance(q, Question):
            raise BadInput(f"with_question_rubrics expects Question objects, got {type(q).__name__}")
        if not q.judge_prompts:
            continue
        for text in q.paraphrases:
            old = table.setdefault(text, (q.id, dict(q.judge_prompts)))
            if old[1] != dict(q.judge_prompts):
                raise BadInput(
                    f"questions {old[0]!r} and {q.id!r} share the paraphrase {text[:60]!r} but not their "
                    "judge_prompts, so an answer to it cannot be given one rubric; reword one of them or give "
                    "both the same judge_prompts"
                )
    return QuestionRubrics(judge, table) if table else judge

