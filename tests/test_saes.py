"""SAE helpers: SAE-Lens SAEs as they are, plain weights, fit and quality checks."""

from __future__ import annotations

import warnings

import pytest
import torch

from tl_persona import saes as S
from tl_persona.models import as_adapter
from tl_persona.testing import tiny_sae


def test_check_sae_fits_and_mismatch(model, sae):
    assert S.check_sae(model, sae) == "blocks.1.hook_resid_pre"
    wide = tiny_sae("standard", d_in=48, d_sae=64, hook_name="blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match=r"SAE d_in=48 does not match the activation width 32 at 'blocks\.1\.hook_resid_pre'"):
        S.check_sae(model, wide)
    with pytest.raises(ValueError, match="does not exist"):
        S.check_sae(model, sae, hook_name="blocks.9.hook_resid_pre")


def test_sae_without_hook_name_needs_one(model):
    bare = tiny_sae("standard", d_in=32, d_sae=64)
    with pytest.raises(ValueError, match="pass hook_name="):
        S.sae_hook_name(bare)
    assert S.check_sae(model, bare, hook_name="blocks.0.hook_resid_post") == "blocks.0.hook_resid_post"


def test_not_an_sae():
    with pytest.raises(TypeError, match="SAE-Lens SAE"):
        S.d_sae(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("act", ["relu", "topk", "jumprelu"])
def test_sae_from_weights_matches_formula(act):
    g = torch.Generator().manual_seed(0)
    W_enc, b_enc = torch.randn(8, 16, generator=g), torch.randn(16, generator=g) * 0.1
    W_dec, b_dec = torch.randn(16, 8, generator=g), torch.randn(8, generator=g) * 0.1
    thr = torch.rand(16, generator=g)
    sae = S.sae_from_weights(W_enc, b_enc, W_dec, b_dec, act, k=3, threshold=thr, hook_name="blocks.0.hook_resid_pre")
    x = torch.randn(5, 8, generator=g)
    pre = x @ W_enc + b_enc
    if act == "relu":
        f = pre.relu()
    elif act == "topk":
        v, i = pre.topk(3, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, i, v.relu())
    else:
        f = pre * (pre > thr)
    torch.testing.assert_close(S.encode(sae, x), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(S.decode(sae, f), f @ W_dec + b_dec, atol=1e-5, rtol=1e-5)
    assert S.sae_hook_name(sae) == "blocks.0.hook_resid_pre"


def test_sae_from_weights_errors():
    with pytest.raises(ValueError, match=r"W_dec has shape \(8, 16\).*implies \(16, 8\)"):
        S.sae_from_weights(torch.zeros(8, 16), torch.zeros(16), torch.zeros(8, 16), torch.zeros(8))
    with pytest.raises(ValueError, match="needs k"):
        S.sae_from_weights(torch.zeros(8, 16), torch.zeros(16), torch.zeros(16, 8), torch.zeros(8), "topk")
    with pytest.raises(ValueError, match="needs threshold"):
        S.sae_from_weights(torch.zeros(8, 16), torch.zeros(16), torch.zeros(16, 8), torch.zeros(8), "jumprelu")
    with pytest.raises(ValueError, match="activation="):
        S.sae_from_weights(torch.zeros(8, 16), torch.zeros(16), torch.zeros(16, 8), torch.zeros(8), "gelu")  # type: ignore[arg-type]


def test_decoder_directions(sae):
    d = S.decoder_directions(sae, [3, 5])
    assert torch.equal(d, sae.W_dec.detach()[[3, 5]])
    assert S.decoder_directions(sae, 7).shape == (1, 32)
    with pytest.raises(ValueError, match="no latent"):
        S.decoder_directions(sae, [])


def test_reconstruction_quality_good_and_poor(model):
    # an SAE with an identity-like dictionary (+x and -x halves) reconstructs exactly
    eye = torch.eye(32)
    W_enc = torch.cat([eye, -eye], dim=1)
    W_dec = torch.cat([eye, -eye], dim=0)
    perfect = S.sae_from_weights(W_enc, torch.zeros(64), W_dec, torch.zeros(32), hook_name="blocks.1.hook_resid_pre")
    toks = as_adapter(model).to_tokens(["w1 w2 w3 w4", "w5 w6"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = S.reconstruction_quality(model, perfect, toks.tokens, attention_mask=toks.attention_mask)
    assert q.fvu < 1e-6 and q.n_tokens == 6 and q.l0 == pytest.approx(32.0)
    poor = tiny_sae("topk", d_in=32, d_sae=64, k=1, hook_name="blocks.1.hook_resid_pre")
    with pytest.warns(UserWarning, match="poorly: FVU="):
        q = S.reconstruction_quality(model, poor, toks.tokens, attention_mask=toks.attention_mask)
    assert q.fvu > 0.5 and q.l0 <= 1.0


def test_a_topk_sae_saved_by_sae_lens_loads_back_with_its_own_activation(tmp_path):
    """The dependency floor (sae-lens >= 6.12.3, SAE-Lens #553): a TopK SAE comes back as a TopK SAE,
    with exactly k latents active per token, through SAE-Lens' loader and ours."""
    from sae_lens import SAE, TopKSAE

    from tl_persona import testing
    from tl_persona.loading import load_sae

    sae = testing.tiny_sae("topk", d_in=32, d_sae=64, k=8, hook_name="blocks.1.hook_resid_pre")
    with torch.no_grad():
        sae.b_enc.fill_(5.0)  # every pre-activation positive, so the top k are all non-zero
    sae.save_model(str(tmp_path / "topk"))
    x = torch.randn(50, 32)
    for back in (SAE.load_from_disk(str(tmp_path / "topk")), load_sae(str(tmp_path / "topk"))):
        assert isinstance(back, TopKSAE)
        f = back.encode(x)
        assert ((f != 0).sum(-1) == 8).all()
        torch.testing.assert_close(f, sae.encode(x))
