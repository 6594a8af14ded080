"""tl_persona.evals.generate.sample: batching, determinism, hook hygiene, HookedTransformer and bridge."""

from __future__ import annotations

import pytest
import torch

from tl_persona import testing
from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.models import as_adapter

W = testing.WORDS
CONVS = [
    [{"role": "user", "content": "w1 w2 w3"}],
    [{"role": "user", "content": "w4"}],
    [{"role": "user", "content": "w5 w6 w7"}],  # same length as the first
    [{"role": "user", "content": "w8 w9"}, {"role": "assistant", "content": "w10"}, {"role": "user", "content": "w11"}],
    "w12 w13",  # a plain string is one user message
]


def _hooked_ids(model) -> set[int]:
    out = set()
    for hp in model.hook_dict.values():
        if hp._forward_hooks or getattr(hp, "fwd_hooks", None):
            out.add(id(hp))
    return out


def test_sample_shape_order_and_determinism(model):
    a = sample(model, CONVS, n_per_prompt=3, max_new_tokens=6, seed=1, batch_size=4)
    b = sample(model, CONVS, n_per_prompt=3, max_new_tokens=6, seed=1, batch_size=4)
    c = sample(model, CONVS, n_per_prompt=3, max_new_tokens=6, seed=2, batch_size=4)
    assert len(a) == len(CONVS) * 3 and all(isinstance(s, str) for s in a)
    assert a == b
    assert a != c
    vocab = model.tokenizer.get_vocab()
    for s in a:
        assert "<bos>" not in s and "<eot>" not in s and "<pad>" not in s  # special tokens removed
        assert all(w in vocab for w in s.split())


def test_sample_leaves_global_rng_alone(hooked_model):
    torch.manual_seed(123)
    x = torch.rand(3)
    torch.manual_seed(123)
    sample(hooked_model, CONVS[:2], max_new_tokens=3, seed=7)
    assert torch.equal(torch.rand(3), x)


def test_greedy_batched_equals_one_by_one(model):
    """Grouping by length changes nothing: each answer is what the prompt gets alone."""
    batched = sample(model, CONVS, n_per_prompt=2, temperature=0, max_new_tokens=5, batch_size=3)
    for i, conv in enumerate(CONVS):
        alone = sample(model, [conv], temperature=0, max_new_tokens=5)
        assert batched[2 * i] == batched[2 * i + 1] == alone[0]


def test_matches_transformer_lens_generate(hooked_model):
    """Same tokens as calling TransformerLens' generate on the chat-formatted prompt (greedy)."""
    ad = as_adapter(hooked_model)
    conv = CONVS[0]
    text = ad.format_chat(conv)
    toks = torch.tensor([ad.encode_text(text)])
    ref = hooked_model.generate(toks, max_new_tokens=5, do_sample=False, verbose=False, stop_at_eos=True)
    new = ref[0, toks.shape[1]:].tolist()
    eos = hooked_model.tokenizer.eos_token_id
    new = new[: new.index(eos)] if eos in new else new
    expected = hooked_model.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert sample(hooked_model, [conv], temperature=0, max_new_tokens=5) == [expected]


def test_hooks_apply_fire_with_kv_chunks_and_are_removed(model):
    ad = as_adapter(model)
    name = ad.resid_hook(1, "pre")
    shapes: list[tuple[int, int]] = []

    def rec(act, hook):
        shapes.append((act.shape[0], act.shape[1]))
        return act

    base = sample(model, CONVS[:1], temperature=0, max_new_tokens=4)
    out = sample(model, CONVS[:1], temperature=0, max_new_tokens=4, fwd_hooks=[(name, rec)])
    assert out == base  # a read-only hook changes nothing
    L = len(ad.encode_text(ad.format_chat(CONVS[0])))
    assert shapes[0] == (1, L)  # first forward: the whole prompt
    assert all(s == (1, 1) for s in shapes[1:]) and len(shapes) >= 2  # then one token at a time
    assert not _hooked_ids(model)

    def kill(act, hook):
        return torch.zeros_like(act) + 50.0 * torch.randn_like(act[..., :1])

    steered = sample(model, CONVS, temperature=0, max_new_tokens=4, fwd_hooks=[(name, kill)])
    assert steered != sample(model, CONVS, temperature=0, max_new_tokens=4)
    assert not _hooked_ids(model)


def test_hooks_removed_after_an_exception(model):
    name = as_adapter(model).resid_hook(0, "post")

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sample(model, CONVS, max_new_tokens=3, fwd_hooks=[(name, boom)])
    assert not _hooked_ids(model)
    assert len(sample(model, CONVS[:1], max_new_tokens=2)) == 1


def test_user_hooks_stay(hooked_model):
    name = "blocks.0.hook_resid_post"
    calls = []
    hooked_model.add_hook(name, lambda act, hook: calls.append(1))
    try:
        sample(hooked_model, CONVS[:1], max_new_tokens=2, fwd_hooks=[("blocks.1.hook_resid_post", lambda act, hook: act)])
        assert calls  # the user's own hook still fires
        assert len(_hooked_ids(hooked_model)) == 1  # ours is gone, theirs remains
    finally:
        hooked_model.reset_hooks()


def test_bad_arguments(hooked_model):
    with pytest.raises(ValueError):
        sample(hooked_model, CONVS, n_per_prompt=0)
    with pytest.raises(ValueError):
        sample(hooked_model, CONVS, top_p=0.0)
    with pytest.raises(ValueError):
        sample(hooked_model, CONVS, temperature=-1)
    assert sample(hooked_model, []) == []
    with pytest.raises(ValueError, match="context"):
        sample(hooked_model, [" ".join(W[:60])])


def test_stop_token_and_judge_items(hooked_model):
    ad = as_adapter(hooked_model)
    # Whatever a random model says, stopping at every word id gives empty answers.
    every = list(range(len(hooked_model.tokenizer)))
    assert sample(hooked_model, CONVS[:2], max_new_tokens=5, stop_token_ids=every) == ["", ""]
    answers = sample(hooked_model, CONVS, n_per_prompt=2, max_new_tokens=3)
    items = to_judge_items(CONVS, answers, n_per_prompt=2)
    assert [it.meta["prompt_index"] for it in items] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert items[6].question == "w11" and items[8].question == "w12 w13"
    assert items[3].answer == answers[3]
    with pytest.raises(ValueError):
        to_judge_items(CONVS, answers, n_per_prompt=3)
    assert ad.model is hooked_model


def test_per_batch_hook_functions(model):
    """fwd_hooks may be a function of the batch's rows (indices into the output), e.g. one
    intervention per row; each batch gets its own hooks, removed afterwards."""
    ad = as_adapter(model)
    name = ad.resid_hook(1, "pre")
    seen: list[list[int]] = []
    target = {2, 3}  # the two samples of conversation 1
    direction = 60.0 * torch.randn(ad.d_model, generator=torch.Generator().manual_seed(0))

    def hooks_for(rows):
        seen.append(rows.tolist())
        mask = torch.tensor([r in target for r in rows.tolist()])

        def fn(act, hook):
            out = act.clone()
            out[mask] = out[mask] + direction
            return out

        return [(name, fn)]

    plain = sample(model, CONVS, n_per_prompt=2, temperature=0, max_new_tokens=4, batch_size=3)
    edited = sample(model, CONVS, n_per_prompt=2, temperature=0, max_new_tokens=4, batch_size=3, fwd_hooks=hooks_for)
    assert sorted(r for b in seen for r in b) == list(range(len(CONVS) * 2))
    assert all(len(b) <= 3 for b in seen)
    assert [a for k, a in enumerate(edited) if k not in target] == [a for k, a in enumerate(plain) if k not in target]
    assert [edited[k] for k in sorted(target)] != [plain[k] for k in sorted(target)]
    assert not _hooked_ids(model)
