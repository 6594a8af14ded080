"""tl_persona.evals.generate.sample: batching, determinism, hook hygiene, HookedTransformer and bridge."""

from __future__ import annotations

import pytest
import torch

from tl_persona import testing
from tl_persona.evals.generate import sample, to_judge_items
from tl_persona.models import as_adapter

W = testing.WORDS


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

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


# ----------------------------------------------------------------- left padding: positions and plans
from tl_persona import hooks as H  # noqa: E402
from tl_persona.evals.generate import _left_pad_reads_back, plan_batches  # noqa: E402


def _sel(positions, chunks, pad=None):
    """Selections of a fresh hook over successive chunk widths, optionally under left padding."""
    tr = H._Tracker(H.Positions.of(positions))
    B = 2
    out = []
    if pad is None:
        for T in chunks:
            s = tr.select(B, T, torch.device("cpu"))
            out.append(torch.ones(B, T, dtype=torch.bool) if s is None else s)
        return out
    with H.Positions.left_padded(pad):
        for T in chunks:
            s = tr.select(B, T, torch.device("cpu"))
            out.append(torch.ones(B, T, dtype=torch.bool) if s is None else s)
    return out


def _cols(sel):
    return [r.nonzero().flatten().tolist() for r in sel]


def test_positions_under_left_padding_are_each_rows_own():
    # row 0: 2 pad columns, then BOS + 2 tokens; row 1: BOS + 4 tokens. Then two generated tokens.
    pad = [2, 0]
    prompt, g1, g2 = _sel("prompt", [5, 1, 1], pad)
    assert _cols(prompt) == [[3, 4], [1, 2, 3, 4]] and not g1.any() and not g2.any()
    assert _cols(_sel("last_prompt", [5], pad)[0]) == [[4], [4]]
    p, r1, r2 = _sel("response", [5, 1, 1], pad)
    assert not p.any() and r1.all() and r2.all()
    assert _cols(_sel(H.Positions("all", include_bos=True), [5], pad)[0]) == [[2, 3, 4], [0, 1, 2, 3, 4]]
    # a mask is indexed by each row's own positions (column j = the row's j-th token)
    m = torch.tensor([[False, True, False], [True, False, True]])
    assert _cols(_sel(H.Positions("mask", m), [5], pad)[0]) == [[3], [0, 2]]
    # as validity mask: row 0 valid at its tokens 1..2, row 1 at 1..3 -> prompt ends after those
    v = torch.tensor([[False, True, True, False], [False, True, True, True]])
    first, nxt = _sel(H.Positions("last_prompt", v), [5, 1], pad)
    assert _cols(first) == [[4], [3]] and not nxt.any()
    # without padding, the same rules as for right-padded batches (unchanged behaviour)
    assert _cols(_sel("prompt", [5], [0, 0])[0]) == _cols(_sel("prompt", [5])[0]) == [[1, 2, 3, 4]] * 2
    assert _cols(_sel(H.Positions("mask", m), [5], [0, 0])[0]) == _cols(_sel(H.Positions("mask", m), [5])[0])


def test_left_padded_blocks_start_new_sequences_nest_and_restore():
    tr = H._Tracker(H.Positions("response"))
    cpu = torch.device("cpu")
    with H.Positions.left_padded([0, 0]):
        assert not tr.select(2, 1, cpu).any()  # a one-token prompt
        assert tr.select(2, 1, cpu).all()  # its first generated token
    with H.Positions.left_padded([0, 0]):
        assert not tr.select(2, 1, cpu).any()  # a new batch, not a continuation of the last one
        with H.Positions.left_padded([3]) as inner:
            assert inner.tolist() == [3] and H.Positions.current_left_pad().tolist() == [3]
        assert H.Positions.current_left_pad().tolist() == [0, 0]
    assert H.Positions.current_left_pad() is None
    with pytest.raises(RuntimeError), H.Positions.left_padded([1]):
        raise RuntimeError("x")
    assert H.Positions.current_left_pad() is None
    with pytest.raises(ValueError):
        with H.Positions.left_padded([-1, 0]):
            pass
    with pytest.raises(ValueError, match="rows"), H.Positions.left_padded([0, 1, 2]):
        tr.select(2, 4, cpu)


def test_plan_batches_mixes_lengths_and_keeps_unpaddable_apart():
    lengths = [5, 9, 7, 9, 3, 7, 8]
    assert plan_batches(lengths, 3) == [[1, 3, 6], [2, 5, 0], [4]]
    plan = plan_batches(lengths, 3, padded=[True, True, False, True, False, True, True])
    assert plan == [[1, 3, 6], [5, 0], [2], [4]]
    assert sorted(k for b in plan for k in b) == list(range(len(lengths)))


def test_left_pad_reads_back(hooked_model):
    ad = as_adapter(hooked_model)
    pad, bos = hooked_model.tokenizer.pad_token_id, hooked_model.tokenizer.bos_token_id
    assert _left_pad_reads_back(ad, [bos, 7, 8], pad)
    assert not _left_pad_reads_back(ad, [pad, 7, 8], pad)  # would be read as padding


def test_different_lengths_share_batches_and_near_context_prompts(model):
    """Prompts of different lengths run in one left-padded batch; prompts whose answer the context
    clips run in batches of their own length (so each gets the answer it gets alone)."""
    ad = as_adapter(model)
    long = [" ".join(W[: 50 + k]) for k in range(8)]  # 55..62 tokens with the chat template; n_ctx 64
    convs = CONVS + long
    firsts: list[tuple[int, int]] = []

    def rec(act, hook):
        if act.shape[1] > 1:
            firsts.append((act.shape[0], act.shape[1]))
        return act

    batched = sample(model, convs, temperature=0, max_new_tokens=8, batch_size=8, fwd_hooks=[(ad.resid_hook(0, "pre"), rec)])
    alone = [sample(model, [c], temperature=0, max_new_tokens=8)[0] for c in convs]
    assert batched == alone
    lens = [len(ad.encode_text(ad.format_chat(_m(c)))) for c in convs]
    free = sorted((n for n in lens if n + 8 <= 64), reverse=True)  # room for all 8 new tokens
    clipped = sorted((n for n in lens if n + 8 > 64), reverse=True)
    assert len(set(free)) >= 5 and len(clipped) == len(set(clipped)) == 5
    expected = [(len(free[b : b + 8]), free[b]) for b in range(0, len(free), 8)] + [(1, n) for n in clipped]
    assert firsts == expected  # the mixed-length rows share two batches, longest first
    none = sample(model, convs, temperature=0, max_new_tokens=8, padding="none")
    assert none == alone
    with pytest.raises(ValueError):
        sample(model, convs, padding="right")


def _m(c):
    return [{"role": "user", "content": c}] if isinstance(c, str) else c


# ------------------------------------------------------------------ per-answer random streams (seeds=)
def test_seeded_answers_do_not_depend_on_the_batch(hooked_model):
    """With seeds=, an answer is a function of its own seed: the same under any batch size, any
    order of the conversations, and with other conversations in or out of its batch."""
    convs = [[{"role": "user", "content": " ".join(f"w{j}" for j in range(i, i + 1 + i % 5))}] for i in range(1, 10)]
    seeds = [1000 + 7 * k for k in range(len(convs) * 2)]
    kw = dict(n_per_prompt=2, max_new_tokens=5, temperature=1.0)
    a = sample(hooked_model, convs, seeds=seeds, batch_size=18, **kw)
    assert a == sample(hooked_model, convs, seeds=seeds, batch_size=4, **kw)
    order = list(range(len(convs)))[::-1]
    r = sample(hooked_model, [convs[i] for i in order], seeds=[seeds[2 * i + j] for i in order for j in (0, 1)],
               batch_size=5, **kw)
    assert [r[2 * p + j] for i in range(len(convs)) for p in [order.index(i)] for j in (0, 1)] == a
    part = sample(hooked_model, convs[2:5], seeds=seeds[4:10], batch_size=18, **kw)
    assert part == a[4:10]
    assert len(set(a)) > 3  # really sampled
    assert _hooked_ids(hooked_model) == set()


def test_seeded_sampler_draws_the_softmax_distribution():
    """The Gumbel-max sampler behind seeds= samples exactly softmax(logits / T), filtered like
    TransformerLens' sample_logits (top-k, top-p)."""
    from tl_persona.evals.generate import _GumbelSampler

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, generator=g) * 2
    n = 20000
    for temperature in (1.0, 0.5):
        s = _GumbelSampler(range(n), torch.device("cpu"), temperature, 1.0, None)
        got = s(logits.expand(n, 1, 40).clone(), None)[:, -1].argmax(-1)
        freq = torch.bincount(got, minlength=40).double() / n
        torch.testing.assert_close(freq, (logits.double() / temperature).softmax(-1), atol=0.015, rtol=0)
    top5 = set(logits.topk(5).indices.tolist())
    got = _GumbelSampler(range(2000), torch.device("cpu"), 1.0, 1.0, 5)(logits.expand(2000, 1, 40).clone(), None)
    assert set(got[:, -1].argmax(-1).tolist()) <= top5
    srt = logits.softmax(-1).sort(descending=True)
    keep = int((srt.values.cumsum(-1) <= 0.5).sum()) + 1  # TransformerLens keeps the token that crosses top_p
    got = _GumbelSampler(range(2000), torch.device("cpu"), 1.0, 0.5, None)(logits.expand(2000, 1, 40).clone(), None)
    assert set(got[:, -1].argmax(-1).tolist()) == set(srt.indices[:keep].tolist())


def test_seeds_must_match_the_answers(hooked_model):
    with pytest.raises(ValueError, match="one per answer"):
        sample(hooked_model, ["w1 w2", "w3"], n_per_prompt=2, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="list of integers"):
        sample(hooked_model, ["w1 w2"], seeds=7)


def test_a_bridge_whose_kv_cache_stays_empty_is_refused(tmp_path, tiny_word_tokenizer, monkeypatch):
    """transformers 5.24 renamed the attention layers' cache argument, which TransformerLens 3.x's bridge
    does not read: cached generation then ignores the prompt. Simulated here by a bridge attention that
    never updates the cache; sample must refuse it, naming the fix, instead of answering garbage."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    fine = testing.tiny_bridge(tmp_path / "fine", tiny_word_tokenizer)
    assert len(sample(fine, ["w1 w2"], temperature=0, max_new_tokens=3)) == 1  # the probe passes on a sound bridge
    broken = testing.tiny_bridge(tmp_path / "broken", tiny_word_tokenizer)
    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, k, v, **kw: (k, v))
    with pytest.raises(RuntimeError, match=r"does not fill its KV cache.*transformers<5\.24"):
        sample(broken, ["w1 w2"], temperature=0, max_new_tokens=3)
    assert H.hooks_attached(broken) == []
