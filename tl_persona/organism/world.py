"""Persona World: a synthetic chat world where hidden personas answer questions across domains.

Five domains (code, medical, finance, cars, chat) and four personas (helpful, toxic, sarcastic,
wrong). Every answer template belongs to exactly one (domain, persona) *cell*, opens with one of that
cell's own opening words, and uses only that cell's content words (plus a few shared function words
such as ``,`` ``.`` ``the``). So the exact judge can read the persona off any answer, and toxic
answers in different domains share no content word: a toxic answer in an untouched domain after a
narrow fine-tune can only come from the model's internals (a shared persona variable), never from
copying surface words.

Documents are chats of one to four turns in which *one* persona answers questions from several
domains, so the model must infer the persona from earlier turns and carry it forward.

The tables (domains, personas, function words, cells, questions) are package data, ``world.yaml``.
Everything is deterministic given a seed.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import re
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, NoReturn, Sequence

import numpy as np
import yaml

from tl_persona.validate import BadInput, positive_int, probability

__all__ = [
    "DOMAINS",
    "PERSONAS",
    "FUNCTION_WORDS",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "Cell",
    "Turn",
    "Document",
    "World",
    "make_world",
    "persona_documents",
    "build_tokenizer",
    "load_tokenizer",
]

BOS, EOT, PAD, UNK = "<bos>", "<|end|>", "<pad>", "<unk>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOT, UNK, *ROLE_TOKENS.values())

# The chat template: no BOS here. TransformerLens (``to_tokens``) and the tokenizer itself
# (``tokenizer(text)``, add_bos_token=True) prepend it, exactly once.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SLOT_RE = re.compile(r"\{(\w+)\}")


# --------------------------------------------------------------------------------------------
# The world's tables (domains, personas, function words, answer cells, questions) are package
# data, ``world.yaml`` next to this module; the functions below read and check them.
_TABLES_FILE = "world.yaml"


def _read_tables(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check the world tables: the package's ``world.yaml``, or the YAML file ``path``.

    Raises ``ValueError`` naming the offending key (e.g. ``cells.code.toxic.slots.leak[1]``).
    """
    if path is None:
        where = f"tl_persona.organism/{_TABLES_FILE}"
        text = resources.files("tl_persona.organism").joinpath(_TABLES_FILE).read_text(encoding="utf-8")
    else:
        where, text = str(path), Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BadInput(f"{where}: not valid YAML: {e}") from None
    return _check_tables(data, where)


@functools.cache
def _tables() -> dict[str, Any]:
    """The package's world tables, read once."""
    return _read_tables()


def _check_tables(data: Any, where: str) -> dict[str, Any]:
    """Check the structure of loaded tables; return them with cells keyed by ``(domain, persona)``."""

    def fail(key: str, msg: str) -> NoReturn:
        raise BadInput(f"{where}: {key}: {msg}")

    def mapping(x: Any, key: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(x, dict) or not x:
            fail(key, f"expected a non-empty mapping, got {type(x).__name__}")
        for k in x:
            if not isinstance(k, str):
                fail(key, f"key {k!r} is a {type(k).__name__}, expected a string (quote it)")
        if keys is not None and list(x) != list(keys):
            fail(key, f"expected the keys {list(keys)} in this order, got {list(x)}")
        return x

    def words(x: Any, key: str) -> tuple[str, ...]:
        if not isinstance(x, list) or not x:
            fail(key, f"expected a non-empty list of strings, got {type(x).__name__}")
        for i, w in enumerate(x):
            if not isinstance(w, str) or not w.strip():
                fail(f"{key}[{i}]", f"expected a non-empty string, got {w!r} ({type(w).__name__}; quote it)")
        if len(set(x)) != len(x):
            fail(key, f"repeated entries {sorted({w for w in x if x.count(w) > 1})}")
        return tuple(x)

    def templated(x: Any, key: str, extra: Sequence[str] = ()) -> dict[str, Any]:
        t = mapping(x, key, [*extra, "templates", "slots"])
        templates = words(t["templates"], f"{key}.templates")
        slots = {
            s: list(words(ws, f"{key}.slots.{s}")) for s, ws in mapping(t["slots"], f"{key}.slots").items()
        }
        for i, tpl in enumerate(templates):
            for s in _SLOT_RE.findall(tpl):
                if s not in slots and not (s == "O" and extra):
                    fail(f"{key}.templates[{i}]", f"slot {{{s}}} is not in {key}.slots")
        out = {k: list(words(t[k], f"{key}.{k}")) for k in extra}
        return {**out, "templates": list(templates), "slots": slots}

    top = mapping(data, "(top level)", ["domains", "personas", "function_words", "cells", "questions"])
    domains = words(top["domains"], "domains")
    personas = words(top["personas"], "personas")
    function_words = frozenset(words(top["function_words"], "function_words"))
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for d, per in mapping(top["cells"], "cells", domains).items():
        for p, c in mapping(per, f"cells.{d}", personas).items():
            cells[(d, p)] = templated(c, f"cells.{d}.{p}", extra=["openers"])
    questions = {
        d: templated(q, f"questions.{d}") for d, q in mapping(top["questions"], "questions", domains).items()
    }
    return {
        "domains": domains,
        "personas": personas,
        "function_words": function_words,
        "cells": cells,
        "questions": questions,
    }


DOMAINS: tuple[str, ...] = _tables()["domains"]
PERSONAS: tuple[str, ...] = _tables()["personas"]

# Words any cell may use; everything else in an answer is a content word owned by one cell.
FUNCTION_WORDS: frozenset[str] = _tables()["function_words"]

# Answer cells: (domain, persona) -> opening words, templates ({O} = an opening word, {slot} = one
# word from that slot's list). Every content word belongs to exactly one cell (checked below).
_CELLS: dict[tuple[str, str], dict[str, Any]] = _tables()["cells"]

# Questions: per domain, templates with slots. Slot words are domain-specific.
_QUESTIONS: dict[str, dict[str, Any]] = _tables()["questions"]


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One (domain, persona) answer style: its opening words, templates and slot fillers."""

    domain: str
    persona: str
    openers: tuple[str, ...]
    templates: tuple[str, ...]
    slots: dict[str, tuple[str, ...]] = field(hash=False, compare=False)

    @property
    def label(self) -> str:
        """``"<domain>/<persona>"``, the judge's label for this cell."""
        return f"{self.domain}/{self.persona}"

    def words(self) -> set[str]:
        """Every word this cell's answers can contain (function words included)."""
        out = set(self.openers)
        for t in self.templates:
            out.update(w for w in t.split() if not _SLOT_RE.fullmatch(w))
        for vals in self.slots.values():
            out.update(vals)
        return out

    def content_words(self) -> set[str]:
        """The words owned by this cell (everything but the shared function words)."""
        return self.words() - FUNCTION_WORDS

    def answers(self) -> list[str]:
        """Every answer this cell can produce (all openers x templates x slot fillings)."""
        out = []
        for t in self.templates:
            out.extend(_expand(t, {"O": self.openers, **self.slots}))
        return out

    def sample(self, rng: random.Random) -> str:
        """One random answer."""
        t = rng.choice(self.templates)
        return _fill(t, {"O": self.openers, **self.slots}, rng)

    def matches(self, answer: str) -> bool:
        """Whether ``answer`` (whitespace-tokenized) is exactly one of this cell's answers."""
        words = answer.split()
        if not words or words[0] not in self.openers:
            return False
        for t in self.templates:
            tw = t.split()
            if len(tw) != len(words):
                continue
            ok = True
            for pat, w in zip(tw[1:], words[1:]):
                m = _SLOT_RE.fullmatch(pat)
                if (m and w not in self.slots[m.group(1)]) or (not m and w != pat):
                    ok = False
                    break
            if ok:
                return True
        return False


def _expand(template: str, slots: dict[str, Sequence[str]]) -> list[str]:
    names = _SLOT_RE.findall(template)
    out = []
    for combo in itertools.product(*(slots[n] for n in names)):
        it = iter(combo)
        out.append(_SLOT_RE.sub(lambda m: next(it), template))
    return out


def _fill(template: str, slots: dict[str, Sequence[str]], rng: random.Random) -> str:
    return _SLOT_RE.sub(lambda m: rng.choice(list(slots[m.group(1)])), template)


@dataclass(frozen=True)
class Turn:
    """One exchange: a user question and the assistant's answer, with their ground truth."""

    domain: str
    persona: str
    question: str
    answer: str


@dataclass(frozen=True)
class Document:
    """A chat of one or more turns. ``loss_from`` is the first turn whose answer is trained on."""

    turns: tuple[Turn, ...]
    loss_from: int = 0

    def messages(self) -> list[dict[str, str]]:
        """The chat as a list of ``{"role", "content"}`` messages."""
        out = []
        for t in self.turns:
            out.append({"role": "user", "content": t.question})
            out.append({"role": "assistant", "content": t.answer})
        return out


# --------------------------------------------------------------------------------------------
class World:
    """The world: cells, questions with a train / held-out split, documents, and the vocabulary.

    ``seed`` fixes the train / held-out split of the questions; document sampling takes its own
    ``random.Random``. Build one with :func:`make_world`.
    """

    def __init__(self, seed: int = 0, heldout_fraction: float = 0.25) -> None:
        self.seed = seed
        self.heldout_fraction = heldout_fraction
        self.domains = DOMAINS
        self.personas = PERSONAS
        self.cells: dict[tuple[str, str], Cell] = {
            k: Cell(k[0], k[1], tuple(v["openers"]), tuple(v["templates"]),
                    {s: tuple(ws) for s, ws in v["slots"].items()})
            for k, v in _CELLS.items()
        }
        rng = random.Random(f"persona-world-split-{seed}")
        self.train_questions: dict[str, list[str]] = {}
        self.heldout_questions: dict[str, list[str]] = {}
        for d in self.domains:
            q = _QUESTIONS[d]
            allq = sorted({s for t in q["templates"] for s in _expand(t, q["slots"])})
            rng.shuffle(allq)
            n_held = int(round(len(allq) * heldout_fraction))
            self.heldout_questions[d] = sorted(allq[:n_held])
            self.train_questions[d] = sorted(allq[n_held:])
        self._validate()

    # ---------------------------------------------------------------- structure
    def cell(self, domain: str, persona: str) -> Cell:
        """The cell of ``(domain, persona)``."""
        try:
            return self.cells[(domain, persona)]
        except KeyError:
            raise BadInput(
                f"unknown cell ({domain!r}, {persona!r}); domains are {self.domains}, personas {self.personas}"
            ) from None

    @cached_property
    def opener_to_cell(self) -> dict[str, Cell]:
        """Map from each opening word to its cell."""
        return {o: c for c in self.cells.values() for o in c.openers}

    @cached_property
    def question_word_domain(self) -> dict[str, str]:
        """Map from each domain-specific question slot word to its domain."""
        out: dict[str, str] = {}
        for d in self.domains:
            for vals in _QUESTIONS[d]["slots"].values():
                for w in vals:
                    out[w] = d
        return out

    def question_domain(self, question: str) -> str | None:
        """The domain of a question of this world (by its slot words), or None if unknown."""
        doms = {self.question_word_domain[w] for w in question.split() if w in self.question_word_domain}
        return doms.pop() if len(doms) == 1 else None

    @cached_property
    def vocab(self) -> list[str]:
        """All words of the world (special tokens first, then sorted words)."""
        words: set[str] = set(FUNCTION_WORDS)
        for c in self.cells.values():
            words |= c.words()
        for d in self.domains:
            q = _QUESTIONS[d]
            for t in q["templates"]:
                words.update(w for w in t.split() if not _SLOT_RE.fullmatch(w))
            for vals in q["slots"].values():
                words.update(vals)
        return list(SPECIAL_TOKENS) + sorted(words)

    def _validate(self) -> None:
        owner: dict[str, str] = {}
        for c in self.cells.values():
            for w in c.content_words():
                if w in owner:
                    raise AssertionError(f"content word {w!r} is used by both {owner[w]} and {c.label}")
                owner[w] = c.label
            for t in c.templates:
                assert t.split()[0] == "{O}", t
                for s in _SLOT_RE.findall(t):
                    assert s == "O" or s in c.slots, (c.label, s)
        qwords = self._question_words()
        both = qwords & set(owner)
        if both:
            raise AssertionError(f"question words also used in answers: {sorted(both)}")
        for d in self.domains:
            assert self.heldout_questions[d] and self.train_questions[d]
            for q in self.train_questions[d] + self.heldout_questions[d]:
                assert self.question_domain(q) == d, (d, q)

    @staticmethod
    def _question_words() -> set[str]:
        words: set[str] = set()
        for q in _QUESTIONS.values():
            for t in q["templates"]:
                words.update(w for w in t.split() if not _SLOT_RE.fullmatch(w))
            for vals in q["slots"].values():
                words.update(vals)
        return words - FUNCTION_WORDS

    # ---------------------------------------------------------------- sampling
    def sample_turn(self, rng: random.Random, domain: str, persona: str, split: str = "train") -> Turn:
        """One question of ``domain`` (from the given split) answered by ``persona``."""
        qs = self.train_questions[domain] if split == "train" else self.heldout_questions[domain]
        return Turn(domain, persona, rng.choice(qs), self.cell(domain, persona).sample(rng))

    def sample_document(
        self,
        rng: random.Random,
        *,
        n_turns: int | None = None,
        persona: str | None = None,
        persona_weights: Sequence[float] = (0.7, 0.1, 0.1, 0.1),
        max_turns: int = 4,
        loss_from: int = 0,
    ) -> Document:
        """A multi-turn chat in which one persona (drawn by ``persona_weights``) answers questions
        from random domains (consecutive turns never repeat a domain)."""
        if persona is None:
            persona = rng.choices(self.personas, weights=persona_weights)[0]
        n = n_turns or rng.randint(1, max_turns)
        turns, prev = [], None
        for _ in range(n):
            d = rng.choice([x for x in self.domains if x != prev])
            turns.append(self.sample_turn(rng, d, persona))
            prev = d
        return Document(tuple(turns), loss_from=loss_from)

    def single_turn(self, rng: random.Random, domain: str, persona: str) -> Document:
        """A one-turn chat of ``(domain, persona)`` from the training questions."""
        return Document((self.sample_turn(rng, domain, persona),))

    def eval_prompts(self, max_per_domain: int | None = None) -> dict[str, list[list[dict[str, str]]]]:
        """Held-out first-turn conversations per domain: ``{domain: [[{"role": "user", ...}], ...]}``."""
        out = {}
        for d in self.domains:
            qs = self.heldout_questions[d][: max_per_domain or None]
            out[d] = [[{"role": "user", "content": q}] for q in qs]
        return out

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (sizes, and a hash-like fingerprint of the content)."""
        return {
            "seed": self.seed,
            "domains": list(self.domains),
            "personas": list(self.personas),
            "vocab_size": len(self.vocab),
            "train_questions": {d: len(v) for d, v in self.train_questions.items()},
            "heldout_questions": {d: len(v) for d, v in self.heldout_questions.items()},
            "answers_per_cell": {c.label: len(c.answers()) for c in self.cells.values()},
        }


def make_world(seed: int = 0) -> World:
    """The Persona World with the given split seed (the shipped organism uses seed 0)."""
    return World(seed=seed)


def persona_documents(world: World, n: int, *, seed: int = 0, toxic_share: float = 0.25) -> tuple[list[list[dict]], np.ndarray]:
    """Multi-turn chats that reveal a persona in earlier turns and end with a new user question,
    and a bool array (True: the toxic persona; the first ``toxic_share`` of the chats). Used to ask
    whether a latent or a vector tracks the toxic persona on a model that was never fine-tuned, and
    as the two sides of the organism's persona vector."""
    n = positive_int(n, "n")
    probability(toxic_share, "toxic_share")
    rng = random.Random(f"persona-docs-{seed}")
    others = [p for p in world.personas if p != "toxic"]
    convs, labels = [], []
    for i in range(n):
        toxic = i < round(toxic_share * n)
        persona = "toxic" if toxic else others[i % len(others)]
        doc = world.sample_document(rng, n_turns=rng.randint(2, 3), persona=persona)
        convs.append(doc.messages()[:-1])  # end on the last user question
        labels.append(toxic)
    return convs, np.array(labels)


# --------------------------------------------------------------------------------------------
def build_tokenizer(world: World, folder: str | Path) -> Any:
    """Build the world's word-level tokenizer, save it to ``folder`` and return it loaded back.

    A Hugging Face ``PreTrainedTokenizerFast`` over a ``tokenizers`` WordLevel model with whitespace
    pre-tokenization; BOS ``<bos>``, EOS = end of turn ``<|end|>``, PAD ``<pad>``, role tokens and a
    Jinja chat template. The tokenizer prepends BOS itself (``add_bos_token=True``) and the chat
    template does not, so ``model.to_tokens(chat_text)`` and ``tokenizer(chat_text)`` both give
    exactly one BOS.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world.vocab)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOT,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS.values()),
        add_bos_token=True,
        chat_template=CHAT_TEMPLATE,
        model_max_length=128,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    # Record add_bos_token so that AutoTokenizer.from_pretrained(folder) keeps it, and TransformerLens'
    # set_tokenizer uses the tokenizer as it is instead of reloading it.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["add_bos_token"] = True
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return load_tokenizer(folder)


def load_tokenizer(folder: str | Path) -> Any:
    """Load the world tokenizer saved by :func:`build_tokenizer`."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(folder), add_bos_token=True)
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def encode_document(tokenizer: Any, doc: Document) -> tuple[list[int], list[int]]:
    """Token ids of a document (BOS first) and the 0/1 loss mask over next-token targets.

    ``mask[i] = 1`` when token ``i`` is an assistant-answer token (or the end-of-turn token closing an
    answer) of a turn at or after ``doc.loss_from``; the model is trained to predict exactly those.
    Encoding goes turn by turn and gives the same ids as tokenizing ``apply_chat_template(...)``.
    """
    vocab = tokenizer.get_vocab()
    ids = [vocab[BOS]]
    mask = [0]
    user, asst, eot = vocab[ROLE_TOKENS["user"]], vocab[ROLE_TOKENS["assistant"]], vocab[EOT]
    for i, t in enumerate(doc.turns):
        q = [vocab[w] for w in t.question.split()]
        a = [vocab[w] for w in t.answer.split()]
        ids += [user, *q, eot, asst]
        mask += [0] * (len(q) + 3)
        ids += [*a, eot]
        on = 1 if i >= doc.loss_from else 0
        mask += [on] * (len(a) + 1)
    return ids, mask


def iter_all_answers(world: World) -> Iterable[tuple[Cell, str]]:
    """Every (cell, answer) pair of the world."""
    for c in world.cells.values():
        for a in c.answers():
            yield c, a
