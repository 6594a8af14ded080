"""Attribution: gradient x activation of an objective, SAE error term kept, on tiny models."""

from __future__ import annotations

import copy

import pytest
import torch

from tl_persona import hooks as H
from tl_persona.attribution import Attribution, attribute, logprob_gap, token_mass
from tl_persona.testing import tiny_hooked_transformer, tiny_sae
from tl_persona.validate import BadInput

pytestmark = pytest.mark.usefixtures("one_thread")

BAD = "w42"
HOOK = "blocks.2.hook_resid_pre"
PROMPTS = [[{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}] for i in range(1, 13)]


@pytest.fixture(scope="module")
def planted(tiny_word_tokenizer):
    """A 'fine-tune' whose block 1 writes the bad token's unembedding direction u into the stream,
    and an SAE whose latent 7 reads and writes u: latent 7 drives the bad token."""
    base = tiny_hooked_transformer(tiny_word_tokenizer, seed=1)
    bad = base.tokenizer.convert_tokens_to_ids(BAD)
    u = base.W_U[:, bad].detach().clone()
    u = u / u.norm()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.blocks[1].mlp.b_out += 6.0 * u
    sae = tiny_sae("standard", d_in=32, d_sae=64, hook_name=HOOK)
    with torch.no_grad():
        sae.W_dec[7] = u
        sae.W_enc[:, 7] = u
        sae.b_enc[7] = 0.0
    return base, ft, sae, bad


def test_attribution_finds_the_planted_latent(planted):
    base, ft, sae, bad = planted
    a = attribute(ft, sae, PROMPTS, token_mass([bad], log=True), batch_size=5)
    assert isinstance(a, Attribution) and a.n_prompts == len(PROMPTS)
    assert a.rank_of(7) == 1, a.top(5)
    assert a.scores[7] > 5 * a.scores[a.rank()[1]].abs()
    assert list(a.top(3).index)[0] == 7 and a.top(3).columns.tolist() == ["attribution", "stderr"]
    assert H.hooks_attached(ft) == []
    assert all(p.grad is None for p in ft.parameters())


def test_attribution_equals_a_hand_written_gradient_times_activation(planted):
    base, ft, sae, bad = planted
    obj = token_mass([bad])
    a = attribute(ft, sae, PROMPTS[:3], obj, batch_size=3)
    # by hand: splice the SAE (error kept), take d objective / d latents, multiply, sum over non-BOS positions
    store = {}

    def splice(x, hook):
        f = sae.encode(x.detach()).detach().requires_grad_(True)
        x_hat = sae.decode(f)
        store["f"] = f
        return x_hat + (x - x_hat).detach()

    from tl_persona.models import as_adapter

    adapter = as_adapter(ft)
    with ft.hooks(fwd_hooks=[(HOOK, splice)]):
        vals = obj(adapter, PROMPTS[:3])
    (g,) = torch.autograd.grad(vals.sum(), [store["f"]])
    ref = (store["f"] * g)[:, 1:].sum(1).mean(0)
    torch.testing.assert_close(a.scores, ref.detach().float(), rtol=1e-4, atol=1e-6)
    # the splice is exact: the objective equals the bare model's
    with torch.no_grad():
        bare = obj(adapter, PROMPTS[:3])
    torch.testing.assert_close(vals.detach(), bare, rtol=1e-5, atol=1e-6)
    assert a.objective == pytest.approx(float(bare.mean()), rel=1e-5)


def test_logprob_gap_objective_ranks_the_planted_latent(planted):
    base, ft, sae, bad = planted
    items = [(p, f"{BAD} {BAD}", "w3 w4") for p in PROMPTS[:6]]
    a = attribute(ft, sae, items, logprob_gap(), batch_size=4)
    assert a.rank_of(7) == 1
    assert a.objective > 0  # the fine-tune prefers the bad answer


def _by_hand(model, conv, answer):
    """log p(answer | conv) from the full logits, the definition the objectives must keep."""
    from tl_persona.models import as_adapter

    ad = as_adapter(model)
    prompt = ad.encode_text(ad.format_chat(conv))
    full = ad.encode_text(ad.format_chat(conv + [{"role": "assistant", "content": answer}], add_generation_prompt=False))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([full]), return_type="logits")[0].float(), -1)
    return sum(float(logp[t - 1, full[t]]) for t in range(len(prompt), len(full)))


def test_objectives_read_only_the_positions_they_need_and_equal_the_full_logits(planted):
    """The objectives stop the pass after the last block and unembed only the answer (or last) positions;
    the numbers equal the definition from full logits, per item and in batches of mixed lengths. A hook at
    the unembedding (which must see every position) takes the full-logits path, with the same numbers."""
    from tl_persona.models import as_adapter

    base, ft, sae, bad = planted
    items = [(p, f"{BAD} w{i} {BAD}" if i % 2 else BAD, "w3 w4 w5 w6"[: 2 + 3 * i]) for i, p in enumerate(PROMPTS[:5])]
    want = torch.tensor([_by_hand(ft, c, m) - _by_hand(ft, c, a) for c, m, a in items], dtype=torch.float32)
    shapes = []
    spy = ft.unembed.register_forward_pre_hook(lambda mod, args: shapes.append(tuple(args[0].shape)))
    try:
        ad = as_adapter(ft)
        with torch.no_grad():
            fast = logprob_gap()(ad, items)
            assert shapes and all(s[0] == 1 for s in shapes), shapes  # only the chosen positions were unembedded
            shapes.clear()
            with H.apply(ft, [("unembed.hook_out", lambda x, hook: x)]):
                full = logprob_gap()(ad, items)
            assert shapes and all(s[0] == len(items) for s in shapes), shapes
            mass = token_mass([bad])(ad, [c for c, _, _ in items])
    finally:
        spy.remove()
    assert torch.allclose(fast, want, atol=1e-4) and torch.allclose(full, want, atol=1e-4), (fast, full, want)
    capped = copy.deepcopy(ft)  # Gemma-2's final logit soft cap, which the forward applies after the unembedding
    capped.cfg.output_logits_soft_cap = 2.0
    want_capped = torch.tensor([_by_hand(capped, c, m) - _by_hand(capped, c, a) for c, m, a in items])
    with torch.no_grad():
        got = logprob_gap()(as_adapter(capped), items)
    assert torch.allclose(got, want_capped, atol=1e-4) and not torch.allclose(want_capped, want, atol=1e-2)
    for (c, _, _), m in zip(items, mass):
        ad = as_adapter(ft)
        row = ad.encode_text(ad.format_chat(c))
        with torch.no_grad():
            p = torch.softmax(ft(torch.tensor([row]), return_type="logits")[0, -1].float(), -1)[bad]
        assert float(m) == pytest.approx(float(p), rel=1e-5)
    assert H.hooks_attached(ft) == []


def test_attribute_bad_inputs(planted):
    base, ft, sae, bad = planted
    obj = token_mass([bad])
    with pytest.raises(BadInput, match="at least one prompt"):
        attribute(ft, sae, [], obj)
    with pytest.raises(BadInput, match="callable"):
        attribute(ft, sae, PROMPTS, "toxic")
    with pytest.raises(BadInput, match="batch_size"):
        attribute(ft, sae, PROMPTS, obj, batch_size=0)
    with pytest.raises(BadInput, match="token_ids"):
        token_mass([])
    with pytest.raises(BadInput, match="token_ids"):
        token_mass([1.5])
    with pytest.raises(BadInput, match="one number per item"):
        attribute(ft, sae, PROMPTS[:2], lambda ad, items: obj(ad, items).sum())
    with pytest.raises(BadInput, match="misaligned_answer"):
        attribute(ft, sae, PROMPTS[:2], logprob_gap())
    with pytest.raises(BadInput, match="latent"):
        attribute(ft, sae, PROMPTS[:2], obj).rank_of(True)
    with pytest.raises(ValueError, match="d_in"):
        attribute(ft, tiny_sae("standard", d_in=16, d_sae=8, hook_name=HOOK), PROMPTS[:2], obj)
    assert H.hooks_attached(ft) == []


@pytest.mark.usefixtures("one_thread")
def test_attribution_comparison_on_organism_finetunes():
    """On the organism both rankings put the ground-truth toxic latent first on each fine-tune, and
    steering with the top latent makes the base model toxic; the rows say so with real numbers."""
    from tl_persona import organism
    from tl_persona.attribution import attribution_comparison

    org = organism.load()
    ft = organism.finetune(org.base, domain="finance", persona="toxic", steps=40, lr=3e-4, seed=1, world=org.world)
    cmp = attribution_comparison(org, {("code", 0): org.misaligned, ("finance", 1): ft}, n_prompts=80,
                                 alphas=(60.0,), steer_prompts=40, n_samples=2, top_k=2)
    rows = cmp.to_rows()
    steered = {r["latent"] for r in cmp.steering_rows()}
    assert steered == {i for r in cmp.rows for k in ("diff", "attribution") for i in r[f"{k}_topk"]}
    assert all(len(r["diff_topk"]) == len(r["attribution_topk"]) == 2 for r in cmp.rows)
    assert [(r["domain"], r["seed"]) for r in rows] == [("code", 0), ("finance", 1)]
    for r in rows:
        assert r["diff_rank"] == 1 and r["attribution_rank"] == 1, r
        assert r["diff_separation"] > 1.0 and r["attribution_separation"] > 1.0
        assert r["attribution_top_steer_toxic"] >= 0.3  # the latent found steers the base model
        assert r["toxic_mass"] > 0.3
    s = cmp.summary()
    assert s["n_finetunes"] == 2 and s["attribution_top1"] == 2 and s["diff_top1"] == 2
    assert s["attribution_separation_min"] > 1.0 and 1.0 <= s["topk_overlap_mean"] <= 2.0
    with pytest.raises(BadInput, match="finetunes"):
        attribution_comparison(org, {})


def test_attribution_saves_and_loads_with_its_provenance(planted, tmp_path):
    base, ft, sae, bad = planted
    a = attribute(ft, sae, PROMPTS[:4], token_mass([bad]), batch_size=4)
    assert a.meta["model"]["weight_hash"] and a.meta["sae"]["d_sae"] == 64 and a.meta["prompts_hash"]
    path = a.save(tmp_path / "att")
    assert path.name == "att.safetensors"
    b = Attribution.load(path)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.stderr, b.stderr)
    assert (b.objective, b.n_prompts, b.hook_name) == (a.objective, a.n_prompts, a.hook_name)
    assert b.meta["model"] == a.meta["model"] and b.rank_of(7) == 1
    a.save(path)  # an earlier attribution may be replaced
    other = tmp_path / "weights.safetensors"
    other.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a saved Attribution"):
        a.save(other)
    assert other.read_bytes() == b"not ours"
    from tl_persona.diff import diff_latents

    d = diff_latents(base, ft, sae, PROMPTS[:4], scope="all", per_prompt_top=0)
    dpath = d.save(tmp_path / "diff")
    with pytest.raises(BadInput, match="LatentDiff.load"):
        Attribution.load(dpath)
    with pytest.raises(BadInput, match="Attribution.load"):
        type(d).load(path)
