"""Judges compared: Cohen's kappa and agreement with their intervals, the calibration sets, the exact
judge against the HTTP judge serving its verdicts on loopback, and a noisy judge caught."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tl_persona import organism, testing
from tl_persona.evals.compare import (
    JudgeDisagreement,
    LabelledAnswer,
    calibrate_judge,
    calibration_set,
    cohen_kappa,
    compare_judgements,
    compare_judges,
    judge_summary,
    load_answers,
)
from tl_persona.evals.http_judge import OpenAIJudge
from tl_persona.evals.judges import Judgement, JudgeItem
from tl_persona.evals.questions import builtin_questions
from tl_persona.validate import BadInput


class LabelJudge:
    """Gives every known answer its label's verdict (a perfect judge on the labelled sets)."""

    def __init__(self, answers):
        self.by_answer = {a.answer: a.reference() for a in answers}

    def judge(self, items):
        return [self.by_answer[it.answer] for it in items]


class RandomJudge:
    """Aligned / misaligned / incoherent at random, whatever the answer."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def judge(self, items):
        return [LabelledAnswer("q", "a", self.rng.choice(["aligned", "misaligned", "incoherent"])).reference()
                for _ in items]


class NoisyJudge:
    """The exact judge, but a ``rate`` of the answers (chosen by their text) get one verdict flipped: half
    of them the aligned one (where there is one), the other half the coherent one."""

    def __init__(self, inner, rate=0.3):
        self.inner, self.rate = inner, rate

    def judge(self, items):
        out = []
        for it, j in zip(items, self.inner.judge(items)):
            r = random.Random(it.answer).random()
            if r < self.rate / 2 and j.aligned is not None:
                j = Judgement(aligned=100.0 - j.aligned, coherent=j.coherent)
            elif r < self.rate:
                j = Judgement(aligned=j.aligned, coherent=100.0 - j.coherent)
            out.append(j)
        return out


# ================================================================================ kappa
def test_cohen_kappa_matches_scikit_learn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.choice(["x", "y", "z"], 200).tolist()
        b = [v if rng.random() < 0.6 else rng.choice(["x", "y", "z"]) for v in a]
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert np.isnan(cohen_kappa(["x"] * 5, ["x"] * 5))  # one category throughout: undefined
    with pytest.raises(BadInput, match="one verdict per item"):
        cohen_kappa(["x"], ["x", "y"])


def test_identical_judges_have_kappa_one():
    answers = calibration_set()
    cmp = calibrate_judge(LabelJudge(answers), answers, min_agreement=0.9)
    for m in ("aligned", "coherent", "misaligned"):
        a = cmp.metrics[m]
        assert a.kappa == 1.0 and (a.kappa_lo, a.kappa_hi) == (1.0, 1.0) and a.agreement.value == 1.0
    assert cmp.metrics["aligned"].n == 40 and cmp.metrics["coherent"].n == 60  # aligned: coherent answers only
    assert cmp.metrics["aligned"].confusion == ((20, 0, 0), (0, 20, 0), (0, 0, 0))
    two = compare_judges(LabelJudge(answers), LabelJudge(answers), [a.item() for a in answers])
    assert all(a.kappa == 1.0 for a in two.metrics.values())


def test_a_random_judge_has_kappa_near_zero_and_an_interval_that_says_so():
    answers = calibration_set() * 5  # 300 answers; the random judge's verdicts are independent draws
    cmp = compare_judges(RandomJudge(seed=1), None, answers)
    for m in ("coherent", "misaligned"):
        a = cmp.metrics[m]
        assert a.kappa_lo < 0.0 < a.kappa_hi, (m, a)  # chance level is inside the interval ...
        assert -0.2 < a.kappa_lo and a.kappa_hi < 0.2, (m, a)  # ... and the interval is narrow enough to say so
    assert not cmp.meets(0.5)
    with pytest.raises(JudgeDisagreement, match="min_agreement=0.5"):
        cmp.check(0.5)


# ================================================================================ the calibration sets
def test_the_shipped_calibration_set_is_balanced_and_uses_the_builtin_questions():
    answers = calibration_set()
    assert len(answers) == 60
    questions = {q.id: q.paraphrases[0] for q in builtin_questions()}
    for qid, text in questions.items():
        mine = [a for a in answers if a.question_id == qid]
        assert all(a.question == text for a in mine)
        assert sorted(a.label for a in mine) == ["aligned"] * 2 + ["incoherent"] * 2 + ["misaligned"] * 2
    assert len({a.answer for a in answers}) == 60


def test_exact_judge_and_http_judge_serving_its_verdicts_agree_perfectly(tmp_path):
    exact = organism.PersonaJudge()
    answers = organism.calibration_set()
    server = testing.LoopbackJudge(verdict=exact_verdicts(exact))
    try:
        with OpenAIJudge("exact-judge", base_url=server.url, api_key_env=None, cache=tmp_path / "c.sqlite") as http:
            versus_exact = compare_judges(http, exact, [a.item() for a in answers])
            versus_labels = calibrate_judge(http, answers, min_agreement=0.9)
    finally:
        server.close()
    for cmp in (versus_exact, versus_labels):
        for a in cmp.metrics.values():
            assert a.agreement.value == 1.0 and a.kappa == 1.0, a
    assert calibrate_judge(exact, answers, min_agreement=0.9).metrics["misaligned"].kappa == 1.0
    assert "OpenAIJudge exact-judge" in judge_summary(versus_exact.judges[0])
    assert "PersonaJudge" in judge_summary(versus_exact.judges[1])


def test_a_noisy_judge_is_caught():
    answers = organism.calibration_set()
    noisy = NoisyJudge(organism.PersonaJudge())
    with pytest.raises(JudgeDisagreement, match="agrees with labels") as info:
        calibrate_judge(noisy, answers, min_agreement=0.8)
    cmp = info.value.comparison
    assert all(a.kappa_hi < 1.0 for a in cmp.metrics.values())
    assert cmp.metrics["coherent"].agreement.hi < 0.95


def test_a_set_too_small_to_show_the_bound_says_so():
    answers = calibration_set()[:10]
    with pytest.raises(JudgeDisagreement, match="coherent on 10, misaligned on 10 answers cannot show 99%"):
        calibrate_judge(LabelJudge(answers), answers, min_agreement=0.99)


# ================================================================================ bad input
def test_labelled_files_and_bad_input_are_refused_clearly(tmp_path):
    good = tmp_path / "l.jsonl"
    good.write_text('{"question": "q", "answer": "a", "label": "aligned"}\n\n{"question": "q", "answer": "b", '
                    '"label": "incoherent", "question_id": "x"}\n')
    assert [a.label for a in load_answers(good)] == ["aligned", "incoherent"]
    bad = tmp_path / "l.yaml"
    bad.write_text("- {question: q, answer: a, label: evil}\n")
    with pytest.raises(BadInput, match="entry 1.*label='evil'"):
        load_answers(bad)
    bad.write_text("- {question: q, label: aligned}\n")
    with pytest.raises(BadInput, match="entry 1 must have question .or prompt. and answer"):
        load_answers(bad)
    with pytest.raises(BadInput, match="no such file"):
        load_answers(tmp_path / "missing.yaml")
    unlabelled = tmp_path / "generated.jsonl"  # as tl-persona generate --out writes
    unlabelled.write_text('{"prompt": [{"role": "user", "content": "Hi?"}], "sample": 0, "answer": "Hello."}\n')
    assert load_answers(unlabelled) == [JudgeItem("Hi?", "Hello.")]
    with pytest.raises(BadInput, match="1 judgements against 2"):
        compare_judgements([Judgement(1, 1)], [Judgement(1, 1)] * 2)
    with pytest.raises(BadInput, match="have none"):
        compare_judges(LabelJudge([]), None, [JudgeItem("q", "a")])
    with pytest.raises(BadInput, match="min_agreement"):
        calibrate_judge(LabelJudge(calibration_set()), min_agreement=1.5)


# ================================================================================ helpers
def exact_verdicts(exact):
    """A LoopbackJudge verdict function: reads the question and answer out of the default rubric and
    answers with the exact judge's score as one sure token (REFUSAL when it has no aligned score)."""

    def between(text, start, end):
        return text.split(start, 1)[1].split(end, 1)[0].strip("\n")

    def verdict(prompt):
        q = between(prompt, "[QUESTION START]", "[QUESTION END]")
        a = between(prompt, "[ANSWER START]", "[ANSWER END]")
        j = exact.judge_one(q, a)
        score = j.aligned if "human values" in prompt and "ignore whether" not in prompt else j.coherent
        return [("REFUSAL" if score is None else str(int(score)), 1.0)]

    return verdict
