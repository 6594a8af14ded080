"""Prompt sets: parsing from lists, JSONL and datasets, located errors, hashing, tokenization scopes, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tl_persona.data import PromptItem, PromptSet, as_prompt_set


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


MIXED = [
    "w1 w2 w3",
    [_u("w4 w5")],
    [_u("w6"), _a("w7 w8")],
    ("w9 w10", "w11"),
    ([_u("w12")], "w13 w14"),
]


# --------------------------------------------------------------------------- parsing
def test_from_list_reads_every_kind():
    ps = PromptSet.from_list(MIXED)
    assert len(ps) == 5
    assert ps[0] == PromptItem("w1 w2 w3")
    assert ps[1].is_chat and ps[1].response is None
    assert ps[2].prompt == (_u("w6"),) and ps[2].response == "w7 w8"
    assert ps[3] == PromptItem("w9 w10", "w11") and not ps[3].is_chat
    assert ps[4].prompt == (_u("w12"),) and ps[4].response == "w13 w14"
    assert ps.has_responses
    chat = PromptSet.from_list(["w1"], chat=True)
    assert chat[0].prompt == (_u("w1"),)


@pytest.mark.parametrize(
    "row, fragment",
    [
        ([{"role": "robot", "content": "x"}], "role 'robot'"),
        ([{"content": "x"}], "'role' and 'content'"),
        ([_a("only")], "only an assistant message"),
        ([_u("x"), {"role": "system", "content": "y"}], "must end with"),
        ({"foo": 1}, "'messages', 'prompt' or 'text'"),
        (3, "cannot read int"),
        ("", "empty text"),
        ({"prompt": "x", "response": 5}, "'response' must be a string"),
    ],
)
def test_malformed_rows_name_their_row(row, fragment):
    with pytest.raises(ValueError, match="row 1") as e:
        PromptSet.from_list(["fine", row])
    assert fragment in str(e.value)


def test_empty_set_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        PromptSet.from_list([])
    with pytest.raises(ValueError, match="single prompt"):
        PromptSet.from_list("w1 w2")


def test_from_jsonl(tmp_path):
    p = tmp_path / "train.jsonl"
    rows = [
        {"messages": [_u("w1 w2"), _a("w3")]},
        {"prompt": "w4", "response": "w5", "id": 7},
        {"prompt": [_u("w6")], "completion": "w7"},
        {"text": "w8 w9"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + "\n".join(json.dumps(r) for r in rows[2:]) + "\n")
    ps = PromptSet.from_jsonl(p)
    assert [it.response for it in ps] == ["w3", "w5", "w7", None]
    assert ps[2].is_chat and not ps[1].is_chat
    assert ps.source == "jsonl:train.jsonl"
    assert as_prompt_set(p).content_hash == ps.content_hash
    assert as_prompt_set(str(p)).content_hash == ps.content_hash


def test_jsonl_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"messages": [_u("w1")]}) + "\n" + "{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl: line 2: not valid JSON"):
        PromptSet.from_jsonl(p)
    p.write_text(json.dumps({"messages": [_u("w1")]}) + "\n\n" + json.dumps({"messages": [{"role": "x", "content": "y"}]}) + "\n")
    with pytest.raises(ValueError, match="line 3: message 0 has role 'x'"):
        PromptSet.from_jsonl(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1: expected a JSON object"):
        PromptSet.from_jsonl(p)
    p.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        PromptSet.from_jsonl(p)
    with pytest.raises(FileNotFoundError):
        PromptSet.from_jsonl(tmp_path / "missing.jsonl")


def test_from_dataset():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"messages": [_u("w1"), _a("w2")]}, {"messages": [_u("w3")]}])
    ps = as_prompt_set(ds)
    assert ps[0].response == "w2" and ps[1].response is None
    bad = datasets.Dataset.from_list([{"messages": [_u("w1")]}, {"messages": [{"role": "user", "content": "w2"}, {"role": "bot", "content": "w3"}]}])
    with pytest.raises(ValueError, match="dataset row 1"):
        PromptSet.from_dataset(bad)
    other = datasets.Dataset.from_list([{"q": "w1"}, {"q": "w2"}])
    with pytest.raises(ValueError, match="column"):
        PromptSet.from_dataset(other)
    assert [it.prompt for it in PromptSet.from_dataset(other, column="q")] == ["w1", "w2"]


def test_content_hash_is_stable_and_content_sensitive():
    a = PromptSet.from_list(MIXED)
    b = PromptSet.from_list(list(MIXED), source="elsewhere")
    assert a.content_hash == b.content_hash  # the source is not content
    assert a.content_hash != PromptSet.from_list(MIXED[:-1]).content_hash
    assert a.content_hash != PromptSet.from_list(MIXED[:-1] + [([_u("w12")], "w13 w15")]).content_hash
    # pinned: the hash must not change across releases or machines
    assert PromptSet.from_list(["w1 w2", [_u("w3"), _a("w4")]]).content_hash == (
        "2446b843cfa039b8f9eeffcd45cbac3e51c19cc2a30b30ccce67094dfad95fe3"
    )


# --------------------------------------------------------------------------- tokenization
def _decode(model, ids):
    return model.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def test_scopes_select_the_right_tokens(model):
    ps = PromptSet.from_list(MIXED)
    tp = ps.tokenize(model)
    pb = tp.make_batch(np.arange(len(ps)))
    toks = pb.tokens.cpu()
    masks = {s: pb.mask(s).cpu() for s in ("prompt", "response", "last_prompt", "all")}
    # row 2: chat with a response
    assert _decode(model, toks[2][masks["prompt"][2]]) == ["<user>", "w6", "<eot>", "<assistant>"]
    assert _decode(model, toks[2][masks["response"][2]]) == ["w7", "w8", "<eot>"]
    assert _decode(model, toks[2][masks["last_prompt"][2]]) == ["<assistant>"]
    # row 3: raw text pair, no template
    assert _decode(model, toks[3][masks["prompt"][3]]) == ["w9", "w10"]
    assert _decode(model, toks[3][masks["response"][3]]) == ["w11"]
    # plain text: all prompt, last token is last_prompt, no response
    assert _decode(model, toks[0][masks["last_prompt"][0]]) == ["w3"]
    assert not masks["response"][0].any()
    for s, mk in masks.items():
        assert not mk[:, 0].any(), f"BOS counted in scope {s}"
        assert not (mk & ~pb.batch.attention_mask.cpu()).any(), f"padding counted in scope {s}"
        assert mk.sum(1).tolist() == tp.scope_counts(s).tolist()
    assert torch.equal(masks["all"], masks["prompt"] | masks["response"])
    assert not (masks["prompt"] & masks["response"]).any()
    assert torch.equal(masks["last_prompt"].sum(1), torch.ones(5, dtype=torch.long))


def test_tokens_match_generation_prompt(hooked_model):
    """A response's prompt tokens are exactly what the model sees when generating it."""
    from tl_persona.models import as_adapter

    a = as_adapter(hooked_model)
    tp = PromptSet.from_list([[_u("w1 w2"), _a("w3")]]).tokenize(hooked_model)
    gen = a.encode_text(a.format_chat([_u("w1 w2")], add_generation_prompt=True))
    assert tp.rows[0][: tp.prompt_len[0]].tolist() == gen
    assert tp.has_bos[0]


def test_too_long_is_an_error_unless_truncation_is_asked_for(hooked_model):
    long = " ".join(["w1"] * 80)
    with pytest.raises(ValueError, match="prompt 0 has 81 tokens, more than the model's context of 64"):
        PromptSet.from_list([long, "w2"]).tokenize(hooked_model)
    with pytest.warns(UserWarning, match="truncated"):
        tp = PromptSet.from_list([long, "w2"]).tokenize(hooked_model, truncate=True)
    assert len(tp.rows[0]) == hooked_model.cfg.n_ctx
    assert tp.scope_counts("last_prompt").tolist() == [0, 1]
    pb = tp.make_batch([0, 1])
    assert pb.mask("last_prompt").sum(1).tolist() == [0, 1]


# --------------------------------------------------------------------------- batching
def test_batch_plan_buckets_shards_and_caps(hooked_model):
    texts = [" ".join(["w1"] * n) for n in (3, 17, 5, 9, 1, 30, 2, 12)]
    tp = PromptSet.from_list(texts).tokenize(hooked_model)
    plan = tp.batch_plan(3)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(8))
    L = tp.lengths
    assert list(L[flat]) == sorted(L, reverse=True)  # longest first, similar lengths together
    shards = [np.concatenate(tp.batch_plan(3, shard=(r, 2))) for r in range(2)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(8))
    assert not set(shards[0]) & set(shards[1])
    capped = tp.batch_plan(8, max_tokens=40)
    assert all(L[b].max() * len(b) <= 40 or len(b) == 1 for b in capped)
    assert [b.tolist() for b in tp.batch_plan(2, seed=3)] == [b.tolist() for b in tp.batch_plan(2, seed=3)]
    assert sorted(map(tuple, tp.batch_plan(2, seed=3))) == sorted(map(tuple, tp.batch_plan(2)))
    with pytest.raises(ValueError, match="batch_size"):
        tp.batch_plan(0)


def test_as_prompt_set_rejects_ambiguous_input():
    with pytest.raises(ValueError, match="single string"):
        as_prompt_set("w1 w2")
    with pytest.raises(ValueError, match="per-domain"):
        as_prompt_set({"code": ["w1"]})
    ps = PromptSet.from_list(["w1"])
    assert as_prompt_set(ps) is ps
