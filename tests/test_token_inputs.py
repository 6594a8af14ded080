"""TransformerLens-native inputs: token tensors, token-id lists and token datasets give the text path's results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tl_persona import testing
from tl_persona.cli import main
from tl_persona.data import PromptSet, as_prompt_set
from tl_persona.diff import collect, diff_latents
from tl_persona.inspection import top_activating
from tl_persona.validate import BadInput

HOOK = "blocks.1.hook_resid_pre"
TEXTS = ["w1 w2 w3", "w4 w5", "w6 w7 w8 w9 w10", "w11", "w12 w13 w14 w15 w16 w17 w18", "w19 w20 w21 w22"]


@pytest.fixture(scope="module")
def setup(tiny_word_tokenizer):
    base = testing.tiny_hooked_transformer(tiny_word_tokenizer)
    sae = testing.tiny_sae("topk", hook_name=HOOK, seed=3)
    ft = testing.tiny_hooked_transformer(tiny_word_tokenizer)
    with torch.no_grad():
        ft.blocks[0].mlp.b_out += 3.0 * sae.W_dec[9].detach()  # latent 9 is planted
    rows = [r.tolist() for r in PromptSet.from_list(TEXTS).tokenize(base).rows]
    return base, ft, sae, rows


def _padded(rows, pad=1):
    T = max(len(r) for r in rows)
    t = torch.full((len(rows), T), pad, dtype=torch.long)
    m = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, r in enumerate(rows):
        t[i, : len(r)] = torch.tensor(r)
        m[i, : len(r)] = True
    return t, m


@pytest.mark.parametrize("scope", ["all", "last_prompt"])
def test_every_token_form_equals_the_text_path(setup, scope):
    base, ft, sae, rows = setup
    ref = diff_latents(base, ft, sae, TEXTS, scope=scope, per_prompt_top=3, batch_size=2)
    t, m = _padded(rows)
    lengths = m.sum(1)
    import datasets

    forms = {
        "token lists": rows,
        "tensor + attention_mask": PromptSet.from_tokens(t, attention_mask=m),
        "tensor + lengths": PromptSet.from_tokens(t, lengths=lengths),
        "numpy rows": [np.asarray(r) for r in rows],
        "dataset 'tokens' column": datasets.Dataset.from_dict({"tokens": rows}),
        "dataset 'input_ids' column": datasets.Dataset.from_dict({"input_ids": rows}).with_format("torch"),
    }
    for name, prompts in forms.items():
        d = diff_latents(base, ft, sae, prompts, scope=scope, per_prompt_top=3, batch_size=2)
        assert d.n_tokens == ref.n_tokens, name
        torch.testing.assert_close(d.delta, ref.delta, rtol=0, atol=1e-6, msg=name)
        assert int(d.rank("increase")[0]) == int(ref.rank("increase")[0]) == 9, name
        assert torch.equal(d.per_prompt.latents, ref.per_prompt.latents), name


def test_token_tensor_matches_brute_force_and_bos_is_explicit(setup):
    base, ft, sae, rows = setup
    t, m = _padded(rows)
    s = collect(base, sae, PromptSet.from_tokens(t, attention_mask=m), scope="all")
    acts = []
    for r in rows:  # one prompt at a time, every token but the leading BOS
        a = base.run_with_cache(torch.tensor([r]), names_filter=HOOK)[1][HOOK][0]
        acts.append(a[1:] if r[0] == base.tokenizer.bos_token_id else a)
    f = sae.encode(torch.cat(acts))
    torch.testing.assert_close(s.mean, f.double().mean(0), rtol=1e-5, atol=1e-5)
    assert s.n == sum(len(r) - 1 for r in rows)  # each row's BOS excluded, nothing added
    no_bos = [r[1:] for r in rows]
    s2 = collect(base, sae, no_bos, scope="all")
    assert s2.n == s.n  # rows without BOS: every token counts, none is prepended


def test_token_inputs_on_a_model_without_a_tokenizer(setup):
    base, _, sae, rows = setup
    from transformer_lens import HookedTransformer

    bare = HookedTransformer(base.cfg)
    bare.load_state_dict(base.state_dict())
    s = collect(bare, sae, [r[1:] for r in rows], scope="last_prompt")
    assert s.n == len(rows)


def test_token_tensors_diff_between_two_models_without_tokenizers(setup):
    """Token ids need no tokenizer: the pair check compares vocabularies only when both models have one."""
    base, ft, sae, rows = setup
    from transformer_lens import HookedTransformer

    bare = []
    for m in (base, ft):
        b = HookedTransformer(m.cfg)
        b.load_state_dict(m.state_dict())
        bare.append(b)
    assert bare[0].tokenizer is None and bare[1].tokenizer is None
    toks, mask = _padded([r[1:] for r in rows])
    d = diff_latents(bare[0], bare[1], sae, PromptSet.from_tokens(toks, attention_mask=mask), scope="all")
    with_tok = diff_latents(base, ft, sae, PromptSet.from_tokens(toks, attention_mask=mask), scope="all")
    assert int(d.top(1, "increase").index[0]) == 9  # the planted latent
    assert torch.allclose(torch.as_tensor(d.delta), torch.as_tensor(with_tok.delta))
    other = HookedTransformer(base.cfg.to_dict() | {"d_vocab": base.cfg.d_vocab + 1, "d_vocab_out": base.cfg.d_vocab + 1})
    with pytest.raises(BadInput, match="d_vocab"):
        diff_latents(bare[0], other, sae, PromptSet.from_tokens(toks, attention_mask=mask))


def test_token_input_errors(setup):
    base, _, sae, rows = setup
    with pytest.raises(BadInput, match="outside the model's vocabulary"):
        collect(base, sae, [[1, 2, 10_000]])
    with pytest.raises(BadInput, match="shape \\[batch, pos\\]"):
        PromptSet.from_tokens(torch.zeros(3, dtype=torch.long))
    with pytest.raises(BadInput, match="lengths\\[0\\]=0"):
        PromptSet.from_tokens(torch.ones(2, 3, dtype=torch.long), lengths=[0, 1])
    with pytest.raises(ValueError, match="scope='response' selects no token"):
        collect(base, sae, rows, scope="response")
    assert as_prompt_set(torch.tensor(rows[:1])).items[0].is_tokens


def test_top_activating_and_cli_take_tokens(setup, tmp_path, capsys):
    base, ft, sae, rows = setup
    ex = top_activating(base, sae, 9, rows, k=2)
    ex_text = top_activating(base, sae, 9, TEXTS, k=2)
    assert [(e.prompt_index, e.position) for e in ex] == [(e.prompt_index, e.position) for e in ex_text]
    t, m = _padded(rows)
    f = tmp_path / "tokens.pt"
    torch.save({"tokens": t, "attention_mask": m}, f)
    rc = main(["diff", "--base", "organism:base", "--finetuned", "organism:misaligned", "--sae", "organism:sae",
               "--prompts", str(f), "--scope", "all", "--top", "2"])
    out = capsys.readouterr()
    # the organism's vocabulary is not the word tokenizer's, but ids below its size are valid tokens
    assert rc == 0 and "top 2 latents by increase" in out.out, out.err
