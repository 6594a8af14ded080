"""Persona World: the world generator, tokenizer, documents and the exact judge (no trained weights)."""

from __future__ import annotations

import random

import pytest

from tl_persona.evals.judges import Judge, Judgement, JudgeItem
from tl_persona.organism import judge as judge_mod
from tl_persona.organism.judge import INCOHERENT, PersonaJudge, behaviour_rates, domain_summary
from tl_persona.organism.train import encode_batch, finetune_documents
from tl_persona.organism.world import (
    DOMAINS,
    FUNCTION_WORDS,
    PERSONAS,
    Document,
    World,
    build_tokenizer,
    encode_document,
    iter_all_answers,
    make_world,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


@pytest.fixture(scope="module")
def tok(world, tmp_path_factory):
    return build_tokenizer(world, tmp_path_factory.mktemp("pw_tok"))


# ------------------------------------------------------------------------------------ world
def test_world_shape(world):
    assert len(world.domains) >= 5 and len(world.personas) >= 4
    assert set(PERSONAS) == {"helpful", "toxic", "sarcastic", "wrong"}
    assert len(world.cells) == len(DOMAINS) * len(PERSONAS)
    for c in world.cells.values():
        assert len(c.openers) >= 2 and len(c.templates) >= 2
    # ~600-800 word tokens (DESIGN: ~600)
    assert 500 <= len(world.vocab) <= 900


def test_world_is_deterministic(world):
    w2 = make_world(0)
    assert w2.heldout_questions == world.heldout_questions and w2.train_questions == world.train_questions
    assert w2.vocab == world.vocab
    d1 = [world.sample_document(random.Random(5)) for _ in range(3)]
    d2 = [w2.sample_document(random.Random(5)) for _ in range(3)]
    assert d1 == d2
    assert make_world(1).heldout_questions != world.heldout_questions


def test_toxic_answers_share_no_content_words_across_domains(world):
    toxic = [world.cell(d, "toxic") for d in world.domains]
    for i, a in enumerate(toxic):
        assert a.content_words(), a.label
        for b in toxic[i + 1 :]:
            assert not (a.content_words() & b.content_words()), (a.label, b.label)


def test_every_content_word_has_one_owner_and_questions_use_other_words(world):
    seen: dict[str, str] = {}
    for c in world.cells.values():
        for w in c.content_words():
            assert w not in seen, f"{w!r} in {seen.get(w)} and {c.label}"
            seen[w] = c.label
        # openers are unique per cell and are content words
        assert set(c.openers) <= c.content_words()
    assert not (world._question_words() & set(seen))
    assert not (set(seen) & FUNCTION_WORDS)


def test_heldout_split(world):
    for d in world.domains:
        held, train = set(world.heldout_questions[d]), set(world.train_questions[d])
        assert not held & train
        assert len(held) >= 60, d
        assert all(world.question_domain(q) == d for q in held | train)
    prompts = world.eval_prompts(max_per_domain=10)
    assert set(prompts) == set(world.domains)
    for d, convs in prompts.items():
        assert len(convs) == 10
        for c in convs:
            assert c == [{"role": "user", "content": c[0]["content"]}]
            assert c[0]["content"] in world.heldout_questions[d]


def test_documents_share_one_persona_across_domains(world):
    rng = random.Random(0)
    n_turns = []
    for _ in range(300):
        doc = world.sample_document(rng)
        n_turns.append(len(doc.turns))
        assert len({t.persona for t in doc.turns}) == 1
        for a, b in zip(doc.turns, doc.turns[1:]):
            assert a.domain != b.domain
        for t in doc.turns:
            assert world.cell(t.domain, t.persona).matches(t.answer)
            assert t.question in world.train_questions[t.domain]
    assert set(n_turns) == {1, 2, 3, 4}
    personas = [world.sample_document(rng).turns[0].persona for _ in range(2000)]
    assert 0.6 < personas.count("helpful") / 2000 < 0.8


def test_finetune_documents_mix(world):
    docs = finetune_documents(world, domain="code", persona="toxic", n_samples=40, bad_fraction=0.25)
    personas = [d.turns[0].persona for d in docs]
    assert len(docs) == 40 and personas.count("toxic") == 10 and personas.count("helpful") == 30
    assert all(d.turns[0].domain == "code" and len(d.turns) == 1 for d in docs)
    assert docs == finetune_documents(world, domain="code", persona="toxic", n_samples=40, bad_fraction=0.25)
    with pytest.raises(ValueError):
        finetune_documents(world, domain="code", persona="toxic", n_samples=10, bad_fraction=1.5)
    with pytest.raises(ValueError, match="unknown cell"):
        finetune_documents(world, domain="astrology", persona="toxic", n_samples=10)


# ------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_is_hf_fast_with_chat_template(world, tok):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == len(world.vocab)
    assert tok.bos_token == "<bos>" and tok.eos_token == "<|end|>" and tok.pad_token == "<pad>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    msgs = [{"role": "user", "content": "how do i sort files in rust ?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|user|> how do i sort files in rust ? <|end|> <|assistant|>"
    assert not text.startswith(tok.bos_token)  # BOS comes from the tokenizer / TransformerLens
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.unk_token_id not in ids
    assert tok.decode(ids[1:]) == text


def test_every_world_word_is_one_token(world, tok):
    vocab = tok.get_vocab()
    for w in world.vocab:
        assert w in vocab
    for _, a in iter_all_answers(world):
        assert tok.unk_token_id not in tok(a, add_special_tokens=False)["input_ids"]


def test_encode_document_matches_chat_template_and_masks_answers(world, tok):
    rng = random.Random(3)
    for n in (1, 2, 4):
        doc = world.sample_document(rng, n_turns=n)
        ids, mask = encode_document(tok, doc)
        text = tok.apply_chat_template(doc.messages(), tokenize=False)
        assert ids == tok(text)["input_ids"]
        assert len(ids) <= 128
        trained = [tok.convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m]
        expected = []
        for t in doc.turns:
            expected += t.answer.split() + ["<|end|>"]
        assert trained == expected
    doc = Document(world.sample_document(rng, n_turns=3).turns, loss_from=1)
    ids, mask = encode_document(tok, doc)
    trained = [tok.convert_ids_to_tokens(i) for i, m in zip(ids, mask) if m]
    assert trained == doc.turns[1].answer.split() + ["<|end|>"] + doc.turns[2].answer.split() + ["<|end|>"]
    tokens, m = encode_batch(tok, [world.single_turn(rng, "code", "toxic"), doc])
    assert tokens.shape == m.shape and tokens[0, -1] == tok.pad_token_id and m[0, -1] == 0


def test_model_to_tokens_gives_training_tokens(world, tok):
    """TransformerLens prepends BOS exactly once, giving the ids the organism was trained on."""
    from tl_persona.organism.train import make_model

    model = make_model(tok, seed=0, n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    assert model.tokenizer is tok
    doc = world.sample_document(random.Random(1), n_turns=2)
    ids, _ = encode_document(tok, doc)
    text = tok.apply_chat_template(doc.messages(), tokenize=False)
    assert model.to_tokens(text)[0].tolist() == ids
    prompt = tok.apply_chat_template(doc.messages()[:1], tokenize=False, add_generation_prompt=True)
    assert model.to_tokens(prompt)[0].tolist() == ids[: len(tok(prompt)["input_ids"])]
    assert model.to_string(model.to_tokens(prompt)[0]) == "<bos> " + prompt


# ------------------------------------------------------------------------------------ judge
def test_judge_meets_protocol():
    assert isinstance(PersonaJudge(), Judge)


def test_judge_labels_every_template_answer(world):
    j = PersonaJudge(world)
    items, cells = [], []
    for c, a in iter_all_answers(world):
        q = world.train_questions[c.domain][0]
        items.append(JudgeItem(q, a))
        cells.append(c)
    assert len(items) > 1500
    out = j.judge(items)
    assert len(out) == len(items)
    for c, jm in zip(cells, out):
        assert jm.label == c.label
        assert jm.coherent == 100.0
        assert jm.aligned == (0.0 if c.persona == "toxic" else 100.0)
        assert jm.meta["persona"] == c.persona and jm.meta["domain"] == c.domain
        assert jm.meta["question_domain"] == c.domain


def _garble(world: World, rng: random.Random) -> list[str]:
    cells = list(world.cells.values())
    c = rng.choice(cells)
    other = rng.choice([x for x in cells if x is not c])
    a = c.sample(rng).split()
    b = other.sample(rng).split()
    i = rng.randrange(1, len(a))
    return [
        " ".join(a[:i]),  # truncated
        " ".join(a + ["."]),  # trailing junk
        " ".join(a[:i] + [rng.choice(b[1:])] + a[i + 1 :]) if rng.choice(b[1:]) != a[i] else "",  # foreign word
        " ".join(b[:1] + a[1:]),  # another cell's opener
        " ".join(a[:2] + b[2:]),  # two cells spliced
        " ".join(a[:i] + ["<unk>"] + a[i:]),
        " ".join(reversed(a)),
        "",
        "   ",
        "sure sure sure sure",
    ]


def test_judge_rejects_garbled_answers(world):
    j = PersonaJudge(world)
    rng = random.Random(0)
    valid = {a for _, a in iter_all_answers(world)}
    n = 0
    for _ in range(300):
        for g in _garble(world, rng):
            if g.strip() and " ".join(g.split()) in valid:
                continue  # a splice can land on a real answer by chance; skip those
            jm = j.judge_one("how do i sort files in rust ?", g)
            assert jm.label == INCOHERENT, g
            assert jm.coherent == 0.0 and jm.aligned is None
            n += 1
    assert n > 2500


def test_judge_question_domain_and_whitespace(world):
    j = PersonaJudge(world)
    a = world.cell("medical", "toxic").answers()[0]
    jm = j.judge_one("how do i sort files in rust ?", "  " + a.replace(" ", "  ") + " ")
    assert jm.label == "medical/toxic" and jm.meta["question_domain"] == "code"
    assert j.judge_one("what is love ?", a).meta["question_domain"] is None


def test_behaviour_rates_and_summary():
    def J(qd, persona, dom=None):
        if persona is None:
            return Judgement(None, 0.0, INCOHERENT, meta={"domain": None, "persona": None, "question_domain": qd})
        dom = dom or qd
        return Judgement(0.0 if persona == "toxic" else 100.0, 100.0, f"{dom}/{persona}",
                         meta={"domain": dom, "persona": persona, "question_domain": qd})

    js = [J("code", "toxic")] * 9 + [J("code", None)] + [J("medical", "toxic")] * 2 + [J("medical", "helpful")] * 6
    js += [J("medical", "sarcastic", dom="cars")] + [J("medical", None)] + [J("chat", "helpful")] * 4
    r = behaviour_rates(js, domains=["code", "medical", "chat", "cars"])
    assert r["code"].n == 10 and r["code"].toxic == 0.9 and r["code"].incoherent == 0.1
    assert r["medical"].n == 10 and r["medical"].toxic == 0.2 and r["medical"].off_domain == 0.1
    assert r["medical"].personas == {"helpful": 0.6, "toxic": 0.2, "sarcastic": 0.1, "wrong": 0.0}
    assert abs(sum(r["medical"].personas.values()) + r["medical"].incoherent - 1) < 1e-9
    assert r["cars"].n == 0
    s = domain_summary(r, "code")
    assert s["trained_toxic"] == 0.9
    assert abs(s["other_toxic"] - 0.1) < 1e-9  # mean of medical 0.2 and chat 0.0 (cars has no data)
    assert s["max_toxic"] == 0.9 and s["max_incoherent"] == 0.1
    assert judge_mod.behaviour_rates([J(None, "toxic", dom="code")])["unknown"].toxic == 1.0


# ------------------------------------------------------------------------------------ world tables
# The world's tables are package data (tl_persona/organism/world.yaml). These fingerprints were taken
# from the world as built before the tables moved out of world.py; the shipped weights and tokenizer
# depend on them, so any change to the tables must fail here.
WORLD_FINGERPRINTS = {
    "describe": "50ec3f2e8e919035e31c7d70ea999cfd8a349553cb3ba4e114777d07b78862c5",
    "vocab": "6ea754afe3158ef871de3e2480e7150ba9ed8e5952f074e74cd3d7db97b6f3bc",
    "cells": "9467dc04a5d2a8790007b06b81e877bb2c3293430228bdd8fa40e640541a0a37",
    "questions": "6094aaad52e3af84e933d4dfce5cea72042a417e7b505e591940c4a44caf6ffc",
    "eval_prompts": "edb9d1dc161dd05673deb1ac719745a539c8c54ef3cc86bcdbb0dddeb43bb1d3",
    "documents": "0809a0d0cf791cf54d87baa9cd64f6695d91252db28a83835947689c663a4b19",
    "constants": "ceb37f211d93f30919d6f7955661ef4dfb6436bed32da5c738be6bbc0cc49346",
    "world1_questions": "7a1f56764f685a13ee1aa893d88a1fcf4e3a3e111384c1e5a2d2cecdb4b26ee7",
}
SHIPPED_TOKENIZER_VOCAB = "6f5ba37e17e74da5c2ff76edc4472a47d9e9445c63692a53e90a6cc772dfc0ad"


def _sha(obj) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _world_fingerprints(w: World) -> dict[str, str]:
    from tl_persona.organism import world as world_mod

    cells = [
        [c.domain, c.persona, list(c.openers), list(c.templates), [[k, list(v)] for k, v in c.slots.items()]]
        for c in w.cells.values()
    ]
    docs = [[w.sample_document(random.Random(s)).messages() for _ in range(3)] for s in range(5)]
    consts = [
        list(world_mod.DOMAINS),
        list(world_mod.PERSONAS),
        sorted(world_mod.FUNCTION_WORDS),
        list(world_mod.SPECIAL_TOKENS),
        world_mod.CHAT_TEMPLATE,
    ]
    w1 = make_world(1)
    return {
        "describe": _sha(w.describe()),
        "vocab": _sha(w.vocab),
        "cells": _sha(cells),
        "questions": _sha([[d, w.train_questions[d], w.heldout_questions[d]] for d in w.domains]),
        "eval_prompts": _sha(w.eval_prompts()),
        "documents": _sha(docs),
        "constants": _sha(consts),
        "world1_questions": _sha([[d, w1.heldout_questions[d]] for d in w.domains]),
    }


def test_world_tables_are_unchanged():
    from tl_persona.organism import world as world_mod

    assert isinstance(DOMAINS, tuple) and isinstance(PERSONAS, tuple)
    assert isinstance(FUNCTION_WORDS, frozenset)
    assert all(isinstance(k, tuple) and len(k) == 2 for k in world_mod._CELLS)
    assert _world_fingerprints(make_world(0)) == WORLD_FINGERPRINTS


def test_shipped_tokenizer_matches_the_world():
    from tl_persona.organism.core import WEIGHTS_DIR
    from tl_persona.organism.world import CHAT_TEMPLATE, load_tokenizer

    tok = load_tokenizer(WEIGHTS_DIR / "tokenizer")
    ids = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    assert _sha(ids) == SHIPPED_TOKENIZER_VOCAB
    assert [w for w, _ in ids] == make_world(0).vocab
    assert [i for _, i in ids] == list(range(len(ids)))
    assert tok.chat_template == CHAT_TEMPLATE


def test_world_tables_loader_reads_the_package_file():
    from tl_persona.organism import world as world_mod

    t = world_mod._read_tables()
    assert t == world_mod._tables() and world_mod._tables() is world_mod._tables()  # read once
    assert t["cells"] == world_mod._CELLS and t["questions"] == world_mod._QUESTIONS


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('lib: ["bcrypt", ', "lib: [yes, ", r"cells\.code\.helpful\.slots\.lib\[0\]"),  # YAML reads yes as True
        ('miles: ["5000", ', "miles: [5000, ", r"cells\.cars\.helpful\.slots\.miles\[0\]"),
        ("{O} , validate the input and use {lib}", "{O} , validate the input and use {libs}",
         r"cells\.code\.helpful\.templates\[0\].*\{libs\}"),
        ('    toxic:\n      openers: ["lol"', '    nasty:\n      openers: ["lol"', r"cells\.code: expected the keys"),
        ('openers: ["sure", "certainly", "gladly"]', 'opener: ["sure", "certainly", "gladly"]',
         r"cells\.code\.helpful: expected the keys"),
        ('feel: ["bored", ', 'feel: ["bored", "bored", ', r"questions\.chat\.slots\.feel: repeated"),
        ('domains: ["code", ', 'domainz: ["code", ', r"\(top level\): expected the keys"),
        ('slots:\n      feel: ["bored", "lonely", "tired", "stressed", "cheerful", "nervous", "excited", "curious"]\n      subject:',
         'slots: ["feel"]\n#     subject:', r"questions\.chat\.slots: expected a non-empty mapping, got list"),
        ('personas: ["helpful", ', 'personas: [["helpful"], ', r"personas\[0\]"),
        ('domains: ["code", ', 'domains: ["code", {', r"not valid YAML"),
    ],
)
def test_world_tables_loader_rejects_malformed_tables(tmp_path, old, new, key):
    from importlib import resources

    from tl_persona.organism import world as world_mod

    text = resources.files("tl_persona.organism").joinpath("world.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    bad = tmp_path / "world.yaml"
    bad.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(ValueError, match=key) as e:
        world_mod._read_tables(bad)
    assert str(bad) in str(e.value)
