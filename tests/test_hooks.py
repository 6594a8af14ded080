"""Behaviour of the hook builders on tiny HookedTransformer and TransformerBridge models."""

from __future__ import annotations

import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing
from tl_persona.models import as_adapter
from tl_persona.saes import encode
from tl_persona.validate import BadInput

HOOK = "blocks.1.hook_resid_pre"
PROMPTS = ["w1 w2 w3 w4 w5 w6", "w7 w8 w9 w10 w11 w12"]


def tokens(model):
    return as_adapter(model).to_tokens(PROMPTS).tokens


def logits(model, toks, *hook_lists):
    with torch.no_grad(), H.apply(model, *hook_lists, require_fired=bool(hook_lists)) as rep:
        out = model(toks)
    assert H.hooks_attached(model) == []
    return out, rep


def acts_after(model, toks, *hook_lists):
    """Activation at HOOK as the rest of the network sees it, after the given edits there."""
    store = H.LatentStore()
    cap = H.capture_acts(HOOK, store, positions=H.Positions("all", include_bos=True))
    with torch.no_grad(), H.apply(model, *hook_lists, cap):
        model(toks)
    B, T = toks.shape
    x = torch.zeros(B, T, store.latents.shape[-1])
    idx = store.index
    x[idx[:, 0], idx[:, 1]] = store.latents
    return x


def test_capture_is_bit_identical(model, sae):
    toks = tokens(model)
    clean, _ = logits(model, toks)
    store = H.LatentStore()
    out, rep = logits(model, toks, H.capture_latents(sae, store))
    assert torch.equal(clean, out)
    assert rep.calls == [(HOOK, 1)]
    # BOS excluded by default: 2 rows x 6 real tokens
    assert store.latents.shape == (12, 64)
    assert sorted(store.index[:, 1].unique().tolist()) == [1, 2, 3, 4, 5, 6]
    x = as_adapter(model).run_to_hook(toks, HOOK)
    torch.testing.assert_close(store.latents, encode(sae, x[:, 1:].reshape(-1, 32)))


def test_splice_with_error_is_exact_and_without_differs(model, sae):
    toks = tokens(model)
    clean, _ = logits(model, toks)
    with_err, _ = logits(model, toks, H.splice(sae, keep_error=True))
    torch.testing.assert_close(with_err, clean, atol=1e-5, rtol=0)
    without, _ = logits(model, toks, H.splice(sae, keep_error=False))
    assert (without - clean).abs().max() > 1e-3


def test_splice_keeps_gradient_through_latents(hooked_model, sae):
    toks = tokens(hooked_model)
    grads = []
    sae.W_dec.requires_grad_(True)
    try:
        with H.apply(hooked_model, H.splice(sae, keep_error=True)):
            hooked_model(toks).sum().backward()
        grads.append(sae.W_dec.grad)
    finally:
        sae.W_dec.requires_grad_(False)
        sae.W_dec.grad = None
        hooked_model.zero_grad(set_to_none=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0


def test_zero_alpha_and_dead_latent_ablation_are_no_ops(model, sae):
    toks = tokens(model)
    clean, _ = logits(model, toks)
    out, _ = logits(model, toks, H.steer(HOOK, torch.randn(32), 0.0))
    assert torch.equal(out, clean)
    f = encode(sae, as_adapter(model).run_to_hook(toks, HOOK))
    dead = int((f.reshape(-1, 64) != 0).sum(0).argmin())
    assert (f[..., dead] == 0).all(), "fixture should have a latent that never fires on these tokens"
    out, _ = logits(model, toks, H.ablate(sae, dead))
    torch.testing.assert_close(out, clean, atol=1e-6, rtol=0)


def test_ablating_an_active_latent_changes_exactly_its_decoder_contribution(model, sae):
    toks = tokens(model)
    clean = acts_after(model, toks)
    f = encode(sae, clean)
    sel = torch.zeros(toks.shape, dtype=torch.bool)
    sel[0, 2:5] = True
    i = int(f[sel].gt(0).sum(0).argmax())
    assert (f[sel][:, i] > 0).any()
    edited = acts_after(model, toks, H.ablate(sae, i, positions=sel))
    expected = clean.clone()
    expected[sel] -= f[sel][:, i : i + 1] * sae.W_dec[i].detach()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert torch.equal(edited[~sel], clean[~sel])


def test_clamp_sets_latent_to_value(model, sae):
    toks = tokens(model)
    clean = acts_after(model, toks)
    f = encode(sae, clean)
    i = int(f.reshape(-1, 64).gt(0).sum(0).argmax())
    edited = acts_after(model, toks, H.clamp(sae, i, 3.0, positions="all"))
    expected = clean.clone()
    expected[:, 1:] += (3.0 - f[:, 1:, i : i + 1]) * sae.W_dec[i].detach()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)
    assert torch.equal(edited[:, 0], clean[:, 0])  # BOS untouched


def test_mean_ablation_uses_given_means(hooked_model, sae):
    toks = tokens(hooked_model)
    clean = acts_after(hooked_model, toks)
    f = encode(sae, clean)
    i = int(f.reshape(-1, 64).gt(0).sum(0).argmax())
    means = torch.zeros(64)
    means[i] = 0.7
    edited = acts_after(hooked_model, toks, H.ablate(sae, [i], mode="mean", means=means))
    expected = clean.clone()
    expected[:, 1:] += (0.7 - f[:, 1:, i : i + 1]) * sae.W_dec[i].detach()
    torch.testing.assert_close(edited, expected, atol=1e-5, rtol=0)


def test_steer_scales(hooked_model):
    toks = tokens(hooked_model)
    clean = acts_after(hooked_model, toks)
    d = torch.randn(32)
    out = acts_after(hooked_model, toks, H.steer(HOOK, d, 2.0))
    torch.testing.assert_close(out[:, 1:], clean[:, 1:] + 2.0 * d, atol=1e-5, rtol=0)
    out = acts_after(hooked_model, toks, H.steer(HOOK, d, 0.5, scale="resid_norm"))
    expect = clean[:, 1:] + 0.5 * clean[:, 1:].norm(dim=-1, keepdim=True) * d / d.norm()
    torch.testing.assert_close(out[:, 1:], expect, atol=1e-5, rtol=0)
    out = acts_after(hooked_model, toks, H.steer(HOOK, d, 2.0, scale=3.0))
    torch.testing.assert_close(out[:, 1:], clean[:, 1:] + 6.0 * d, atol=1e-5, rtol=0)


def test_per_row_settings_in_one_batch(hooked_model, sae):
    toks = tokens(hooked_model)[:1].repeat(3, 1)
    clean = acts_after(hooked_model, toks)
    dirs = sae.W_dec.detach()[[0, 1, 2]]
    alphas = torch.tensor([0.0, 1.0, -2.0])
    out = acts_after(hooked_model, toks, H.steer(HOOK, dirs, alphas))
    for r in range(3):
        torch.testing.assert_close(out[r, 1:], clean[r, 1:] + alphas[r] * dirs[r], atol=1e-5, rtol=0)


def test_steer_latent_uses_decoder_row(hooked_model, sae):
    toks = tokens(hooked_model)
    a = acts_after(hooked_model, toks, H.steer_latent(sae, 5, 1.5))
    b = acts_after(hooked_model, toks, H.steer(HOOK, sae.W_dec.detach()[5], 1.5))
    assert torch.equal(a, b)


def test_project_out_removes_component(model):
    toks = tokens(model)
    d = torch.randn(2, 32)
    out = acts_after(model, toks, H.project_out(HOOK, d))
    assert (out[:, 1:] @ d.T).abs().max() < 1e-4
    assert (acts_after(model, toks)[:, 1:] @ d.T).abs().max() > 1e-2


def test_cap_clamps_the_projection_and_leaves_the_rest(model):
    toks = tokens(model)
    clean = acts_after(model, toks)
    d = torch.randn(32)
    u = d / d.norm()
    proj = clean[:, 1:] @ u
    t = float(proj.median())  # about half the positions are above it
    out = acts_after(model, toks, H.cap(HOOK, 3.0 * d, t))  # the direction's norm does not matter
    want = clean[:, 1:] - (proj - t).clamp(min=0)[..., None] * u
    torch.testing.assert_close(out[:, 1:], want, atol=1e-5, rtol=0)
    assert float((out[:, 1:] @ u).max()) <= t + 1e-4
    below = proj < t - 1e-4  # (the median itself sits on the ceiling, up to rounding)
    assert torch.equal(out[:, 1:][below], clean[:, 1:][below])  # below the ceiling: untouched, exactly
    assert bool((~below).any())
    assert torch.equal(acts_after(model, toks, H.cap(HOOK, d, float(proj.max()) + 1.0)), clean)


def test_cap_per_row_and_a_zero_row_is_left_alone(hooked_model, sae):
    toks = tokens(hooked_model)[:1].repeat(3, 1)
    clean = acts_after(hooked_model, toks)
    dirs = sae.W_dec.detach()[[0, 1, 2]].clone()
    dirs[1] = 0.0
    ts = torch.tensor([0.0, -5.0, 0.5])
    out = acts_after(hooked_model, toks, H.cap(HOOK, dirs, ts))
    torch.testing.assert_close(out[1], clean[1], atol=0, rtol=0)
    for r in (0, 2):
        u = dirs[r] / dirs[r].norm()
        want = clean[r, 1:] - (clean[r, 1:] @ u - ts[r]).clamp(min=0)[:, None] * u
        torch.testing.assert_close(out[r, 1:], want, atol=1e-5, rtol=0)


def test_cap_refuses_bad_input():
    with pytest.raises(BadInput, match="non-zero direction"):
        H.cap(HOOK, torch.zeros(32), 1.0)
    with pytest.raises(BadInput, match="threshold=nan is not finite"):
        H.cap(HOOK, torch.ones(32), float("nan"))
    with pytest.raises(BadInput, match="direction must have shape"):
        H.cap(HOOK, torch.ones(2, 3, 32), 1.0)


def test_positions_last_prompt_and_mask_with_padding(hooked_model):
    adapter = as_adapter(hooked_model)
    batch = adapter.to_tokens(["w1 w2 w3 w4", "w5 w6"])  # second row right-padded
    valid = batch.attention_mask & ~batch.bos_mask
    d = torch.ones(32)
    clean = acts_after(hooked_model, batch.tokens)
    out = acts_after(hooked_model, batch.tokens, H.steer(HOOK, d, 1.0, positions=H.Positions("last_prompt", valid)))
    changed = (out - clean).abs().sum(-1) > 0
    assert changed.tolist() == [[False, False, False, False, True], [False, False, True, False, False]]
    out = acts_after(hooked_model, batch.tokens, H.steer(HOOK, d, 1.0, positions=H.Positions("all", valid)))
    assert ((out - clean).abs().sum(-1) > 0).tolist() == valid.tolist()


@pytest.mark.parametrize("which", ["prompt", "generated"])
def test_positions_are_absolute_during_cached_generation(model, sae, which):
    """A prompt-only steer leaves generated positions untouched, and vice versa, under a KV cache.

    Activations are captured just before and just after the steering hook at the same hook point,
    in the same cached generation, so their difference is exactly what the steer added where.
    """
    adapter = as_adapter(model)
    prompt = adapter.to_tokens(["w1 w2 w3 w4 w5"]).tokens
    direction = sae.W_dec.detach()[3]
    everywhere = H.Positions("all", include_bos=True)
    before, after = H.LatentStore(), H.LatentStore()
    with torch.no_grad(), H.apply(
        model,
        H.capture_acts(HOOK, before, positions=everywhere),
        H.steer(HOOK, direction, 4.0, positions=which),
        H.capture_acts(HOOK, after, positions=everywhere),
        require_fired=True,
    ) as rep:
        out = model.generate(prompt, max_new_tokens=4, use_past_kv_cache=True, verbose=False, do_sample=False)
    assert H.hooks_attached(model) == []
    assert rep.calls[1][1] == 4  # the prompt chunk, then one call per further token
    P, n = prompt.shape[1], out.shape[1] - 1
    assert before.index[:, 1].tolist() == list(range(n))  # absolute positions 0..n-1, in order
    diff = after.latents - before.latents
    steered = diff.norm(dim=-1) > 1e-6
    if which == "prompt":
        assert steered.tolist() == [False] + [True] * (P - 1) + [False] * (n - P)  # BOS never steered
    else:
        assert steered.tolist() == [False] * P + [True] * (n - P)
    torch.testing.assert_close(diff[steered], direction.expand(int(steered.sum()), -1) * 4.0, atol=1e-5, rtol=0)


def test_hooks_removed_after_exception_and_user_hooks_survive(model, sae):
    toks = tokens(model)
    seen = []
    user = (lambda a, hook: seen.append(1) or a)
    model.add_hook(HOOK, user)
    try:
        assert len(H.hooks_attached(model)) == 1
        with pytest.raises(ZeroDivisionError):
            with H.apply(model, H.ablate(sae, 1), H.steer(HOOK, torch.ones(32), 1.0)):
                model(toks)
                1 / 0
        assert len(H.hooks_attached(model)) == 1  # only the user's own hook remains
        model(toks)
        assert len(seen) == 2
    finally:
        model.reset_hooks()
    assert H.hooks_attached(model) == []


def test_hooks_removed_when_a_hook_raises(model):
    toks = tokens(model)
    with pytest.raises(ValueError, match="width 7"):
        with H.apply(model, H.steer(HOOK, torch.ones(7), 1.0)):
            model(toks)
    assert H.hooks_attached(model) == []


def test_composes_with_user_hooks_and_run_with_hooks(model, sae):
    toks = tokens(model)
    order = []

    def mine(a, hook):
        order.append("mine")
        return a * 1.0

    fwd = [(HOOK, mine), *H.steer(HOOK, torch.ones(32), 0.0)]
    clean, _ = logits(model, toks)
    out = model.run_with_hooks(toks, fwd_hooks=fwd)
    assert torch.equal(out, clean) and order == ["mine"]
    with H.apply(model, fwd) as rep:
        model(toks)
    assert rep.counts == {HOOK: 2} and rep.unfired() == []
    assert H.hooks_attached(model) == []


def test_unfired_hooks_are_reported(hooked_model):
    with pytest.raises(RuntimeError, match="never fired"):
        with H.apply(hooked_model, H.steer(HOOK, torch.ones(32), 1.0), require_fired=True):
            pass
    assert H.hooks_attached(hooked_model) == []


# ----------------------------------------------------------------------------- errors
def test_error_unknown_hook_lists_close_names(model):
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_resid_pre"):
        with H.apply(model, H.steer("blocks.1.hook_resid_pr", torch.ones(32), 1.0)):
            pass
    assert H.hooks_attached(model) == []


def test_error_direction_shape():
    with pytest.raises(ValueError, match=r"\[d_model\]"):
        H.steer(HOOK, torch.ones(2, 3, 4), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        H.steer(HOOK, torch.tensor([float("nan"), 1.0]), 1.0)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_error_non_finite_alpha(alpha):
    with pytest.raises(ValueError, match="not finite"):
        H.steer(HOOK, torch.ones(32), alpha)


def test_error_latent_out_of_range(sae):
    with pytest.raises(ValueError, match=r"latent index 64 is out of range .*d_sae=64"):
        H.ablate(sae, [1, 64])
    with pytest.raises(ValueError, match="out of range"):
        H.steer_latent(sae, -1, 1.0)
    with pytest.raises(ValueError, match="one value or one per latent"):
        H.clamp(sae, [1, 2], [1.0, 2.0, 3.0])


def test_error_empty_position_selection():
    with pytest.raises(ValueError, match="selects no position"):
        H.Positions("mask", torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a token selection"):
        H.steer(HOOK, torch.ones(32), 1.0, positions="middle")
    with pytest.raises(ValueError, match="batch 3"):
        tr = H._Tracker(H.Positions("mask", torch.ones(3, 4, dtype=torch.bool)))
        tr.select(2, 4, torch.device("cpu"))


def test_error_mean_ablation_without_means(sae):
    with pytest.raises(ValueError, match="needs means"):
        H.ablate(sae, 1, mode="mean")


def test_one_hook_list_on_two_models_counts_each_attachment(hooked_model, sae):
    """Attached to two models at once, a hook list keeps one count per attachment: the model that
    never ran reports zero calls, and require_fired fails for it."""
    other = testing.tiny_hooked_transformer(hooked_model.tokenizer, seed=3)
    steer = H.steer_latent(sae, 3, 1.0)
    toks = hooked_model.to_tokens(["w1 w2"])
    with pytest.raises(RuntimeError, match="never fired"):
        with H.apply(hooked_model, steer, require_fired=True) as outer:
            with H.apply(other, steer) as inner:
                hooked_model(toks)
                hooked_model(toks)
            assert inner.calls == [(HOOK, 0)]
            assert outer.calls == [(HOOK, 2)]
            with H.apply(other, steer, require_fired=True):
                pass  # never ran on `other`: raises here, despite the outer model's calls
    assert H.hooks_attached(hooked_model) == [] and H.hooks_attached(other) == []
