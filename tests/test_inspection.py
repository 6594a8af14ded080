"""Latent cards: streaming top-k against brute force, a planted latent, the logit lens against real logits."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from tl_persona import testing
from tl_persona.data import PromptSet
from tl_persona.inspection import MARK, LatentCard, direct_logits, latent_card, logit_lens, top_activating
from tl_persona.saes import sae_from_weights

HOOK0 = "blocks.0.hook_resid_pre"
HOOK = "blocks.1.hook_resid_pre"


def _texts(n=30, length=12, seed=0):
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(90)}" for _ in range(rng.randint(3, length))) for _ in range(n)]


@pytest.fixture(scope="module")
def planted(tiny_word_tokenizer):
    """A model and SAE where latent 5 reads token w42 (and nothing else) and writes w7, w8, against w9.

    The residual at blocks.0.hook_resid_pre is W_E[token] + W_pos[pos]: w42's embedding is made long
    along a direction e, latent 5's encoder is e with a threshold between w42 and every other
    token at every position. The unembedding columns of w7, w8 (and -w9) are set along the latent's
    decoder direction u.
    """
    tok = tiny_word_tokenizer
    m = copy.deepcopy(testing.tiny_hooked_transformer(tok))
    t, a, b, c = (tok.convert_tokens_to_ids(w) for w in ("w42", "w7", "w8", "w9"))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        u = torch.randn(32, generator=g)
        u = u - u.mean()
        u = u / u.norm()
        e = torch.randn(32, generator=g)
        e = e / e.norm()
        m.embed.W_E[t] = 3 * e
        m.unembed.W_U[:, a] = 4 * u
        m.unembed.W_U[:, b] = 3 * u
        m.unembed.W_U[:, c] = -4 * u
        proj = (m.W_E[:, None, :] + m.W_pos[None, :, :]) @ e  # [vocab, pos]
        on = float(proj[t].min())
        off = float(torch.cat([proj[:t], proj[t + 1 :]]).max())
        assert on > off + 0.5
        W_enc = 0.1 * torch.randn(32, 16, generator=g)
        W_enc[:, 5] = e
        b_enc = torch.full((16,), -0.5)
        b_enc[5] = -(on + off) / 2
        W_dec = torch.randn(16, 32, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec[5] = u
    sae = sae_from_weights(W_enc, b_enc, W_dec, torch.zeros(32), hook_name=HOOK0)
    return m, sae


def test_planted_latent_card_shows_its_tokens(planted):
    model, sae = planted
    prompts = _texts()
    card = latent_card(model, sae, 5, prompts, k=5, context=3)
    assert isinstance(card, LatentCard) and card.latent == 5 and card.hook_name == HOOK0
    assert len(card.examples) == 5
    assert all(ex.token == "w42" for ex in card.examples)
    assert all(f"{MARK[0]}w42{MARK[1]}" in ex.text for ex in card.examples)
    acts = [ex.activation for ex in card.examples]
    assert acts == sorted(acts, reverse=True) and acts[-1] > 0
    assert [t for t, _ in card.lens.promoted[:2]] == ["w7", "w8"]
    assert card.lens.suppressed[0][0] == "w9"
    n_w42 = sum(p.split().count("w42") for p in prompts)
    assert card.n_tokens == sum(len(p.split()) for p in prompts)
    assert card.freq == pytest.approx(n_w42 / card.n_tokens)
    text = str(card)
    assert "### Latent 5" in text and f"{MARK[0]}w42{MARK[1]}" in text and "`w7`" in text and "`w9`" in text


def test_context_window_and_rendering(planted):
    model, sae = planted
    prompts = ["w1 w2 w3 w4 w42 w5 w6 w7 w8", "w42", "w3 w3"]
    ex = top_activating(model, sae, 5, prompts, k=3, context=2)
    assert [e.prompt_index for e in ex] == [0, 1] or [e.prompt_index for e in ex] == [1, 0]  # w3 w3 never fires
    first = next(e for e in ex if e.prompt_index == 0)
    assert first.position == 5  # BOS at 0
    assert first.text.startswith(f"w3 w4 {MARK[0]}w42{MARK[1]}(") and first.text.endswith(") w5 w6")
    lone = next(e for e in ex if e.prompt_index == 1)
    assert lone.text.startswith(f"{MARK[0]}w42{MARK[1]}")  # BOS is not shown
    assert "prompt 0:5" in str(first)


def _brute_top(model, sae, latents, prompts, k):
    tp = PromptSet.from_list(prompts).tokenize(model)
    best = {j: [] for j in latents}
    for i, ids in enumerate(tp.rows):
        _, cache = model.run_with_cache(torch.tensor(ids)[None], names_filter=lambda n: n == HOOK)
        with torch.no_grad():
            f = sae.encode(cache[HOOK][0, 1:])  # skip BOS
        for j in latents:
            v, p = f[:, j].max(0)
            if v > 0:
                best[j].append((float(v), i, int(p) + 1))
    return {j: sorted(v, reverse=True)[:k] for j, v in best.items()}


def test_streaming_top_k_equals_brute_force(model):
    sae = testing.tiny_sae("jumprelu", hook_name=HOOK)
    prompts = _texts(25)
    latents = [0, 9, 33, 63]
    got = top_activating(model, sae, latents, prompts, k=4, batch_size=3)
    want = _brute_top(model, sae, latents, prompts, 4)
    assert set(got) == set(latents)
    for j in latents:
        assert [(e.prompt_index, e.position) for e in got[j]] == [(i, p) for _, i, p in want[j]]
        for e, (v, _, _) in zip(got[j], want[j]):
            assert e.activation == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_logit_lens_is_the_direct_effect_on_the_logits(hooked_model):
    """Adding eps * d to the final residual, with the final LayerNorm's scale frozen, changes the logits
    by eps * direct_logits(d) / scale: the lens is exact up to that positive per-position factor."""
    torch.manual_seed(0)
    model = copy.deepcopy(hooked_model)
    with torch.no_grad():
        model.ln_final.w.copy_(1 + 0.5 * torch.rand(32))  # a non-trivial norm weight
    d = torch.randn(32)
    toks = torch.tensor([[0, 7, 8, 9]])
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n == "ln_final.hook_scale")
    scale = cache["ln_final.hook_scale"]
    eps = 1e-2
    with torch.no_grad():
        clean = model.run_with_hooks(toks, fwd_hooks=[("ln_final.hook_scale", lambda a, hook: scale)])
        steered = model.run_with_hooks(toks, fwd_hooks=[
            (last, lambda a, hook: a + eps * d), ("ln_final.hook_scale", lambda a, hook: scale)])
    got = (steered - clean) / eps * scale
    want = direct_logits(model, d)
    torch.testing.assert_close(got[0], want.expand_as(got[0]), rtol=1e-3, atol=1e-3)


def test_logit_lens_on_the_bridge_matches_the_same_weights(bridge_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    lens = logit_lens(bridge_model, sae, 3, k=5)
    W_U = bridge_model.W_U.detach()
    w = bridge_model.ln_final._original_component.weight.detach()
    v = sae.W_dec.detach()[3]
    scores = ((v - v.mean()) * w) @ W_U
    top = torch.topk(scores, 5)
    assert [t for t, _ in lens.promoted] == [bridge_model.tokenizer.decode([int(i)]) for i in top.indices]
    assert [s for _, s in lens.promoted] == pytest.approx(top.values.tolist(), rel=1e-5)
    assert lens.suppressed[0][1] == pytest.approx(float(scores.min()), rel=1e-5)


def test_errors(hooked_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    with pytest.raises(ValueError, match="out of range"):
        top_activating(hooked_model, sae, 64, _texts())
    with pytest.raises(ValueError, match="k must be"):
        top_activating(hooked_model, sae, 1, _texts(), k=0)
    with pytest.raises(ValueError, match="k must be"):
        logit_lens(hooked_model, sae, 1, k=0)
    narrow = testing.tiny_sae("standard", d_in=8, hook_name="blocks.0.attn.hook_z")
    with pytest.raises(ValueError, match="residual-stream"):
        logit_lens(hooked_model, narrow, 1)
    with pytest.raises(ValueError, match="scope="):
        latent_card(hooked_model, sae, 1, _texts(), scope="answers")


def test_card_with_a_diff_and_a_silent_latent(hooked_model):
    from tl_persona.diff import diff_latents

    sae = testing.tiny_sae("standard", hook_name=HOOK)
    with torch.no_grad():
        sae.b_enc[2] = -1e4  # never fires
    d = diff_latents(hooked_model, hooked_model, sae, _texts(8), scope="all", per_prompt_top=0)
    card = latent_card(hooked_model, sae, 2, _texts(8), diff=d)
    assert card.examples == () and card.freq == 0.0
    assert card.diff["delta"] == 0.0
    assert "never fires" in str(card) and "Diff: delta +0" in str(card)
