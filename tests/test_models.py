"""The model adapter over HookedTransformer and TransformerBridge."""

from __future__ import annotations

import pytest
import torch

from tl_persona import hooks as H
from tl_persona.models import ModelAdapter, as_adapter, hook_layer


def test_facts(model):
    a = as_adapter(model)
    assert (a.d_model, a.n_layers) == (32, 3)
    assert a.device == torch.device("cpu") and a.dtype == torch.float32
    assert a.is_bridge == (type(model).__name__ == "TransformerBridge")
    assert as_adapter(a) is a


@pytest.mark.parametrize("where", ["pre", "mid", "post"])
def test_resid_hook_resolves_in_both_namings(model, where):
    a = as_adapter(model)
    name = a.resid_hook(1, where)
    assert name in model.hook_dict
    assert a.resid_hook(-2, where) == name
    # the named activation is the residual stream: same as run_with_cache's
    toks = a.to_tokens(["w1 w2 w3"]).tokens
    _, cache = model.run_with_cache(toks, names_filter=[name])
    got = a.run_to_hook(toks, name)
    torch.testing.assert_close(got, next(iter(cache.values())))


def test_resid_pre_of_next_layer_equals_resid_post(model):
    a = as_adapter(model)
    toks = a.to_tokens(["w1 w2 w3"]).tokens
    torch.testing.assert_close(a.run_to_hook(toks, a.resid_hook(0, "post")), a.run_to_hook(toks, a.resid_hook(1, "pre")))


def test_layer_out_of_range(model):
    with pytest.raises(ValueError, match=r"layer=3 is out of range .* 3 layers"):
        as_adapter(model).resid_hook(3)
    with pytest.raises(ValueError, match="where="):
        as_adapter(model).resid_hook(0, "middle")  # type: ignore[arg-type]


def test_unknown_hook_suggests_close_names(model):
    with pytest.raises(ValueError, match=r"'blocks\.1\.hook_resid_psot' does not exist.*blocks\.1\.hook_resid_post"):
        as_adapter(model).check_hook("blocks.1.hook_resid_psot")


def test_not_a_model():
    with pytest.raises(TypeError, match="HookedTransformer or TransformerBridge"):
        ModelAdapter(torch.nn.Linear(2, 2))


def test_run_to_hook_stops_after_the_hook(model):
    a = as_adapter(model)
    toks = a.to_tokens(["w1 w2 w3"]).tokens
    later = []
    out = a.run_to_hook(toks, "blocks.0.hook_resid_post", fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, hook: later.append(1) or x)])
    assert out.shape == (1, 4, 32) and later == []
    assert H.hooks_attached(model) == []


def test_run_to_hook_applies_upstream_interventions(model):
    a = as_adapter(model)
    toks = a.to_tokens(["w1 w2 w3"]).tokens
    clean = a.run_to_hook(toks, "blocks.1.hook_resid_pre")
    steered = a.run_to_hook(toks, "blocks.1.hook_resid_pre", fwd_hooks=H.steer("blocks.1.hook_resid_pre", torch.ones(32), 1.0))
    torch.testing.assert_close(steered[:, 1:], clean[:, 1:] + 1.0)


def test_width_at(model):
    a = as_adapter(model)
    assert a.width_at(a.resid_hook(2, "post")) == 32


def test_tokenization_bos_once_and_right_padding(model):
    a = as_adapter(model)
    batch = a.to_tokens(["w1 w2 w3", "<bos> w4"])
    bos = model.tokenizer.bos_token_id
    assert batch.tokens[:, 0].tolist() == [bos, bos]
    assert batch.tokens[1, 1] != bos
    assert batch.attention_mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert batch.bos_mask[:, 0].all() and not batch.bos_mask[:, 1:].any()
    assert batch.lengths.tolist() == [4, 2]
    # identical to TransformerLens' own tokenization for an unpadded prompt
    assert batch.tokens[0].tolist() == model.to_tokens("w1 w2 w3")[0].tolist()
    with pytest.raises(ValueError, match="no texts"):
        a.to_tokens([])


def test_chat_formatting_uses_template_or_plain_format(model):
    a = as_adapter(model)
    msgs = [{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "w3"}]
    assert a.format_chat(msgs[:1]) == "<user> w1 w2 <eot> <assistant>"
    assert a.format_chat(msgs, add_generation_prompt=False) == "<user> w1 w2 <eot> <assistant> w3 <eot> "
    with pytest.raises(ValueError, match="role 'bot'"):
        a.format_chat([{"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="non-empty list"):
        a.format_chat([])


def test_plain_chat_format_without_template(hooked_model):
    tok = hooked_model.tokenizer
    saved, tok.chat_template = tok.chat_template, None
    try:
        text = as_adapter(hooked_model).format_chat([{"role": "user", "content": "w1"}])
    finally:
        tok.chat_template = saved
    assert text == "user: w1\nassistant:"


def test_hook_layer():
    assert hook_layer("blocks.11.hook_resid_pre") == 11
    assert hook_layer("hook_embed") is None
