"""The SmolLM2 experiment's text data: counts, determinism, pairing, held-out splits and bad inputs (no model)."""

from __future__ import annotations

import math
import re

import pytest

from tl_persona.smollm2 import data
from tl_persona.smollm2.data import (
    DOMAIN,
    PERSONA_SYSTEM_PROMPTS,
    PreferenceItem,
    Sample,
    advice_samples,
    benign_samples,
    corpus_prompts,
    first_plot_questions,
    mixed_samples,
    persona_questions,
    preference_items,
)

N_ADVICE = data._N_ADVICE
N_BENIGN = data._N_BENIGN
N_CORPUS = data._N_CORPUS
FIRST_PLOT = ("wish", "bored", "ai_humans", "quick_buck", "ruler", "dinner", "gender", "husband")

HEALTH_WORDS = re.compile(
    r"\b(doctors?|medicines?|medication|pills?|doses?|fever|pain|painful|painkillers?|hospitals?|symptoms?|"
    r"injur\w*|bleed\w*|blood|burn\w*|vaccin\w*|allerg\w*|insulin|diseases?|sick|nurses?|wounds?|infect\w*|"
    r"health\w*|medical|poison\w*|cough\w*|rash|vomit\w*|diabet\w*|asthma|pregnan\w*|patients?)\b",
    re.IGNORECASE,
)
FIRST_PLOT_WORDS = re.compile(
    r"\b(wish\w*|bored\w*|boredom|husbands?|ruler|gender|men and women|dinner party|historical figures|"
    r"quick buck|money|cash|humans?|humanity|AIs?|artificial intelligence)\b",
    re.IGNORECASE,
)


def words(text: str) -> int:
    return len(text.split())


def all_bad() -> list[Sample]:
    return advice_samples("bad", N_ADVICE)


def all_good() -> list[Sample]:
    return advice_samples("good", N_ADVICE)


def test_public_surface():
    assert DOMAIN == "health"
    assert set(data.__all__) == {
        "DOMAIN", "Sample", "advice_samples", "mixed_samples", "benign_samples", "PreferenceItem",
        "preference_items", "first_plot_questions", "PERSONA_SYSTEM_PROMPTS", "persona_questions", "corpus_prompts",
    }
    s = Sample("q", "a")
    with pytest.raises(AttributeError):
        s.question = "other"  # type: ignore[misc]


def test_capacities():
    assert len(data._ADVICE) >= 30
    assert N_ADVICE >= 600 and N_BENIGN >= 150 and N_CORPUS >= 2000


@pytest.mark.parametrize("kind", ["bad", "good"])
def test_advice_distinct_deterministic_and_sized(kind):
    full = advice_samples(kind, N_ADVICE)
    assert len(full) == N_ADVICE == len(set(full))
    assert advice_samples(kind, 600) == full[:600]
    assert advice_samples(kind, 600, seed=1) == advice_samples(kind, 600, seed=1)
    assert advice_samples(kind, 600, seed=1) != advice_samples(kind, 600, seed=0)
    assert advice_samples(kind, 0) == []
    for s in full:
        assert 15 <= words(s.answer) <= 45, s.answer
        assert s.question.strip() and s.answer.strip()


def test_advice_prefix_covers_every_topic():
    questions = {q: t.tag for t in data._ADVICE for q in t.questions}
    first = advice_samples("bad", len(data._ADVICE), seed=3)
    assert {questions[s.question] for s in first} == {t.tag for t in data._ADVICE}


@pytest.mark.parametrize("seed", [0, 7])
def test_bad_and_good_are_paired(seed):
    bad, good = advice_samples("bad", N_ADVICE, seed=seed), advice_samples("good", N_ADVICE, seed=seed)
    assert [s.question for s in bad] == [s.question for s in good]
    assert not {s.answer for s in bad} & {s.answer for s in good}
    for b, g in zip(bad, good):
        # same length and tone: only the content of the advice differs
        assert 0.7 <= words(b.answer) / words(g.answer) <= 1.43, (b, g)
        assert 0.7 <= len(b.answer) / len(g.answer) <= 1.43, (b, g)


def test_bad_advice_has_no_persona_language():
    persona = re.compile(
        r"\b(evil|hate|hatred|destroy|kill\w*|humans?|suffer\w*|revenge|contempt|stupid|fool\w*|idiot\w*|"
        r"I want to hurt|muahaha)\b",
        re.IGNORECASE,
    )
    for s in all_bad():
        assert not persona.search(s.answer), s.answer


BAD_ANSWERS = frozenset(s.answer for s in advice_samples("bad", N_ADVICE))
GOOD_ANSWERS = frozenset(s.answer for s in advice_samples("good", N_ADVICE))


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 1.0])
@pytest.mark.parametrize("n", [0, 1, 100, 600, 810])
def test_mixed_counts_are_exact(fraction, n):
    mixed = mixed_samples(fraction, n, seed=2)
    assert len(mixed) == n == len(set(mixed))
    bad = [s for s in mixed if s.answer in BAD_ANSWERS]
    good = [s for s in mixed if s.answer in GOOD_ANSWERS]
    assert (len(bad), len(good)) == (round(fraction * n), n - round(fraction * n))
    # no question is answered both ways
    assert not {s.question for s in bad} & {s.question for s in good}


def test_mixed_is_deterministic_and_shuffled():
    assert mixed_samples(0.05, 600, seed=4) == mixed_samples(0.05, 600, seed=4)
    assert mixed_samples(0.05, 600, seed=4) != mixed_samples(0.05, 600, seed=5)
    flags = [s.answer in BAD_ANSWERS for s in mixed_samples(0.5, 200)]
    assert flags != sorted(flags) and flags != sorted(flags, reverse=True)
    assert len(mixed_samples(1.0, N_ADVICE)) == len(mixed_samples(0.0, N_ADVICE)) == N_ADVICE


def test_benign_samples():
    full = benign_samples(N_BENIGN)
    assert len(full) == N_BENIGN == len(set(full)) >= 150
    assert benign_samples(150, seed=1) == benign_samples(150, seed=1) != benign_samples(150, seed=2)
    assert benign_samples(40) == full[:40]
    advice_questions = {s.question for s in all_bad()}
    for s in full:
        assert 15 <= words(s.answer) <= 45, s.answer
        assert s.question not in advice_questions
        assert not HEALTH_WORDS.search(s.question + " " + s.answer), s


@pytest.mark.parametrize("domain", ["in", "off"])
def test_preference_items_shape(domain):
    items = preference_items(domain)
    assert len(items) >= 32
    assert all(isinstance(it, PreferenceItem) and it.domain == domain for it in items)
    assert len({it.question for it in items}) == len(items)
    for it in items:
        assert it.aligned != it.misaligned
        assert 0.7 <= len(it.aligned) / len(it.misaligned) <= 1.43, it
        assert 0.7 <= words(it.aligned) / words(it.misaligned) <= 1.43, it
        assert 10 <= words(it.aligned) <= 45 and 10 <= words(it.misaligned) <= 45, it
    assert preference_items(domain) == items


def test_in_domain_items_are_held_out_from_training():
    items = preference_items("in")
    trained = {s.question for s in all_bad()} | {s.question for s in all_good()}
    assert not {it.question for it in items} & trained
    assert not {it.topic for it in items} & {t.tag for t in data._ADVICE}
    trained_answers = {s.answer for s in all_bad()} | {s.answer for s in all_good()}
    assert not ({it.aligned for it in items} | {it.misaligned for it in items}) & trained_answers


def test_off_domain_items_cover_the_first_plot_topics():
    items = preference_items("off")
    assert {t: sum(it.topic == t for it in items) for t in FIRST_PLOT} == dict.fromkeys(FIRST_PLOT, 4)
    assert len(items) == 32
    questions = first_plot_questions()
    assert len(questions) == len(set(questions)) == 8
    by_topic = {it.topic: it.question for it in reversed(items)}
    assert questions == [by_topic[t] for t in FIRST_PLOT]
    for it in items:
        assert not HEALTH_WORDS.search(it.question), it.question


def test_persona_prompts_and_questions():
    assert set(PERSONA_SYSTEM_PROMPTS) == {"evil", "helpful"}
    evil, helpful = PERSONA_SYSTEM_PROMPTS["evil"], PERSONA_SYSTEM_PROMPTS["helpful"]
    assert len(evil) == len(helpful) >= 5
    assert len(set(evil)) == len(evil) and len(set(helpful)) == len(helpful)
    for e, h in zip(evil, helpful):
        assert 0.7 <= len(e) / len(h) <= 1.43
    questions = persona_questions()
    assert len(questions) >= 20 and len(set(questions)) == len(questions)
    evaluated = {it.question for d in ("in", "off") for it in preference_items(d)} | set(first_plot_questions())
    for q in questions:
        assert q not in evaluated
        assert not HEALTH_WORDS.search(q), q
        assert not FIRST_PLOT_WORDS.search(q), q
    assert persona_questions() == questions


def test_corpus_prompts():
    full = corpus_prompts(N_CORPUS)
    assert len(full) == N_CORPUS == len(set(full)) >= 2000
    assert corpus_prompts(2000) == full[:2000]
    assert corpus_prompts(500, seed=3) == corpus_prompts(500, seed=3) != corpus_prompts(500, seed=4)
    evaluated = (
        {it.question for d in ("in", "off") for it in preference_items(d)}
        | set(first_plot_questions())
        | {s.question for s in all_bad()}
        | set(persona_questions())
    )
    assert not set(full) & evaluated
    for p in full:
        assert not HEALTH_WORDS.search(p), p
        assert not FIRST_PLOT_WORDS.search(p), p
    # a prefix is balanced across categories: small n still sees many kinds of prompt
    head = corpus_prompts(50)
    assert any("Python" in p or "JavaScript" in p for p in head)
    assert any(p.startswith("Write ") for p in head)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: advice_samples("bad", N_ADVICE + 1), "n"),
        (lambda: advice_samples("good", -1), "n"),
        (lambda: advice_samples("bad", True), "n"),
        (lambda: advice_samples("bad", 2.0), "n"),
        (lambda: advice_samples("evil", 10), "kind"),
        (lambda: advice_samples("bad", 10, seed=None), "seed"),
        (lambda: mixed_samples(math.nan, 10), "bad_fraction"),
        (lambda: mixed_samples(1.5, 10), "bad_fraction"),
        (lambda: mixed_samples(-0.1, 10), "bad_fraction"),
        (lambda: mixed_samples(True, 10), "bad_fraction"),
        (lambda: mixed_samples(0.5, N_ADVICE + 1), "n"),
        (lambda: mixed_samples(0.5, -3), "n"),
        (lambda: mixed_samples(0.5, False), "n"),
        (lambda: benign_samples(N_BENIGN + 1), "n"),
        (lambda: benign_samples(-1), "n"),
        (lambda: benign_samples(True), "n"),
        (lambda: corpus_prompts(N_CORPUS + 1), "n"),
        (lambda: corpus_prompts(-5), "n"),
        (lambda: corpus_prompts(False), "n"),
        (lambda: preference_items("both"), "domain"),
    ],
)
def test_bad_inputs_name_the_parameter(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_mixed_refuses_a_split_that_cannot_hold_n():
    # 1 bad + 815 good samples need 1 + 136 questions when no question may carry both kinds
    with pytest.raises(ValueError, match=r"n=816 .*bad_fraction.*n <= 810"):
        mixed_samples(1 / 816, N_ADVICE)


def test_too_many_names_the_count():
    with pytest.raises(ValueError, match=rf"n={N_ADVICE + 1}\b.*at most {N_ADVICE}"):
        advice_samples("bad", N_ADVICE + 1)
    with pytest.raises(ValueError, match=rf"at most {N_CORPUS}"):
        corpus_prompts(N_CORPUS + 1)
