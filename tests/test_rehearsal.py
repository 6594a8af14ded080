"""Rehearsal on real-shaped models: batched ``sample`` over prompts of many different lengths is
exactly one-prompt-at-a-time ``sample``, hooks included.

Models (random weights, float32, CPU, built offline by :mod:`tl_persona.testing`): GPT-2-like
(LayerNorm, learned absolute positions, BOS) as ``HookedTransformer`` and as ``TransformerBridge``;
Qwen2-shaped (grouped-query attention, rotary, RMSNorm, gated MLP, no BOS) and Llama-shaped (the
same with a BOS) as both, with byte-level BPE tokenizers and ChatML / Llama-3 chat templates.

Why comparing token ids without tolerance cannot flake: a left-padded row computes the same
function as the prompt alone; the only difference is float32 rounding from reductions of other
lengths (attention over more, masked, keys; other GEMM shapes): measured at most ~3e-6 on any
logit over these prompts, while the smallest top-1/top-2 logit gap along any of the greedy
trajectories is ~2e-4 (init_range 0.02) -- two orders of magnitude of margin. CPU float32 with a
fixed thread count is deterministic, so the test gives the same answer on every run.

The hook-position check does not depend on numerics at all: recording hooks log which (prompt,
position-in-that-prompt) pairs each selection picks, batched and alone, and the logs must agree.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing as T
from tl_persona.evals.generate import sample
from tl_persona.models import as_adapter

N_NEW = 6


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def tokenizers():
    return {"word": T.word_tokenizer(), "chatml": T.bpe_tokenizer(chat="chatml"), "llama3": T.bpe_tokenizer(chat="llama3")}


def _build(name: str, toks: dict):
    folder = tempfile.mkdtemp(prefix=f"tl_persona_rehearsal_{name}_")
    small = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2)
    if name == "gpt2-hooked":
        return T.tiny_hooked_transformer(toks["word"], n_layers=2, n_ctx=128)
    if name == "gpt2-bridge":
        return T.tiny_bridge(folder, toks["word"], n_layers=2, n_ctx=128)
    if name == "qwen2-hooked":
        return T.tiny_qwen2(toks["chatml"], "hooked", **small)
    if name == "qwen2-bridge":
        return T.tiny_qwen2(toks["chatml"], "bridge", folder, **small)
    if name == "llama-hooked":
        return T.tiny_llama(toks["llama3"], "hooked", **small)
    if name == "llama-bridge":
        return T.tiny_llama(toks["llama3"], "bridge", folder, **small)
    raise KeyError(name)


MODELS = ["gpt2-hooked", "gpt2-bridge", "qwen2-hooked", "qwen2-bridge", "llama-hooked", "llama-bridge"]


@pytest.fixture(scope="module", params=MODELS)
def case(request, tokenizers):
    model = _build(request.param, tokenizers)
    words = T.WORDS if request.param.startswith("gpt2") else None
    convs = T.chat_prompts(40, seed=6, min_words=1, max_words=30 if words else 40, words=words)
    ad = as_adapter(model)
    lens = [len(ad.encode_text(ad.format_chat(c))) for c in convs]
    assert len(set(lens)) >= 30, f"only {len(set(lens))} distinct prompt lengths"  # a real mix of lengths
    return request.param, model, convs, lens


# ------------------------------------------------------------------------------------------ builders
def test_bpe_tokenizers_are_qwen2_and_llama3_style(tokenizers):
    q, ll = tokenizers["chatml"], tokenizers["llama3"]
    assert q.bos_token_id is None and q.eos_token == "<|im_end|>" and q.pad_token == "<|endoftext|>"
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello there?"}]
    text = q.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHello there?<|im_end|>\n<|im_start|>assistant\n"
    ids = q(text, add_special_tokens=False)["input_ids"]
    assert q.decode(ids) == text  # byte-level BPE round-trips
    assert ids.count(q.convert_tokens_to_ids("<|im_end|>")) == 2
    assert ll.bos_token == "<|begin_of_text|>" and ll.eos_token == "<|eot_id|>" and ll.pad_token_id is not None
    assert ll.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
    )
    assert len(q) == 512 and len(T.bpe_tokenizer(chat="chatml", vocab_size=300)) == 300


def test_tiny_qwen2_and_llama_shapes(tokenizers):
    q = T.tiny_qwen2(tokenizers["chatml"], "hooked", n_layers=1, d_model=32, n_heads=4, n_kv_heads=2)
    c = q.cfg
    assert (c.n_heads, c.n_key_value_heads, c.positional_embedding_type, c.normalization_type, c.gated_mlp) == (
        4, 2, "rotary", "RMS", True
    )
    assert c.default_prepend_bos is False and not as_adapter(q).prepends_bos
    assert tokenizers["chatml"].bos_token_id is None  # the caller's tokenizer is left as it was
    b = T.tiny_qwen2(tokenizers["chatml"], "bridge", tempfile.mkdtemp(), n_layers=1, d_model=32)
    assert type(b.original_model).__name__ == "Qwen2ForCausalLM"
    assert b.original_model.config.num_key_value_heads < b.original_model.config.num_attention_heads
    assert not as_adapter(b).prepends_bos
    ll = T.tiny_llama(tokenizers["llama3"], "bridge", tempfile.mkdtemp(), n_layers=1, d_model=32)
    assert type(ll.original_model).__name__ == "LlamaForCausalLM" and as_adapter(ll).prepends_bos
    ad = as_adapter(ll)
    ids = ad.encode_text(ad.format_chat([{"role": "user", "content": "Hi."}]))
    assert ids[0] == tokenizers["llama3"].bos_token_id and ids[1] != ids[0]  # one BOS, from the template


def test_chat_prompts_mix_lengths_roles_and_turns(tokenizers):
    convs = T.chat_prompts(64, seed=0)
    assert convs == T.chat_prompts(64, seed=0) and convs != T.chat_prompts(64, seed=1)
    assert any(c[0]["role"] == "system" for c in convs)
    assert any(sum(m["role"] == "user" for m in c) == 2 and c[-1]["role"] == "user" for c in convs)
    tok = tokenizers["chatml"]
    lens = {len(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)) for c in convs}
    ntok = {len(tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True))["input_ids"]) for c in convs}
    assert len(ntok) >= 30 and len(lens) >= 30
    assert all(w in T.WORDS for c in T.chat_prompts(5, words=T.WORDS) for m in c for w in m["content"].split())
    with pytest.raises(ValueError):
        T.chat_prompts(2, min_words=5, max_words=2)


# --------------------------------------------------------------------------------- batched == alone
class _Record(H.Hook):
    """Logs (kind, prompt id, position in that prompt) of every position its selection picks."""

    kind = "record"

    def __init__(self, positions, ids, log: set) -> None:
        super().__init__(positions)
        self.ids, self.log = ids, log

    def edit(self, x, sel):
        B, Tn = x.shape[:2]
        offset = self._tracker.next - Tn
        pad = H.Positions.current_left_pad()
        sel = torch.ones(B, Tn, dtype=torch.bool) if sel is None else sel
        name = self.positions.which + ("+mask" if self.positions.mask is not None else "")
        for b, t in sel.nonzero().tolist():
            self.log.add((name, int(self.ids[b]), offset + t - (int(pad[b]) if pad is not None else 0)))
        return x


def _settings(model, lens):
    """Hook settings, each a function ``(prompt ids of the batch, log) -> fwd_hooks`` whose values
    depend only on the prompt ids, so a prompt gets the same setting alone and batched."""
    ad = as_adapter(model)
    g = torch.Generator().manual_seed(0)
    n, d = len(lens), ad.d_model
    h0, h1 = ad.resid_hook(0, "post"), ad.resid_hook(1, "pre")
    u = torch.randn(d, generator=g)
    dirs = torch.randn(n, d, generator=g)
    alphas = torch.where(torch.arange(n) % 2 == 0, 0.6, 0.0)  # every other prompt unsteered
    width = max(lens)
    pick = torch.zeros(n, width, dtype=torch.bool)  # an explicit mask in each prompt's own positions
    valid = torch.zeros(n, width, dtype=torch.bool)  # "valid prompt tokens": all but the first three
    for i, L in enumerate(lens):
        pick[i, [1, L // 2, L - 2]] = True
        valid[i, 3:L] = True

    def none(ids, log):
        return []

    # one list for every batch (the same hook objects run batch after batch)
    steer_prompt = [*H.steer(h1, u, 0.6, scale="resid_norm", positions="prompt"),
                    *H.project_out(h0, dirs[0], positions=H.Positions("prompt", include_bos=True))]

    def per_row(ids, log):
        hooks = [
            *H.steer(h1, dirs[ids], alphas[ids], scale="resid_norm", positions="prompt"),
            *H.steer(h0, dirs[ids].flip(-1), 2 * alphas[ids], scale="resid_norm", positions="response"),
            *H.steer(h0, -dirs[ids], alphas[ids], scale="resid_norm", positions="last_prompt"),
            *H.steer(h1, dirs[ids].flip(-1), alphas[ids], scale="resid_norm", positions=H.Positions("mask", pick[ids])),
            *H.steer(h0, dirs[ids], -alphas[ids], scale="resid_norm", positions=H.Positions("prompt", valid[ids])),
        ]
        kinds = ["prompt", "response", "last_prompt", H.Positions("mask", pick[ids]),
                 H.Positions("prompt", valid[ids]), H.Positions("all", include_bos=True)]
        return hooks + [(h1, _Record(k, ids, log)) for k in kinds]

    return {"none": none, "steer_prompt": steer_prompt, "per_row": per_row}


def _run(model, convs, setting, batched: bool, log: set):
    kw = dict(temperature=0, max_new_tokens=N_NEW)
    if isinstance(setting, list):
        if batched:
            return sample(model, convs, batch_size=16, fwd_hooks=setting, **kw)
        return [sample(model, [c], fwd_hooks=setting, **kw)[0] for c in convs]
    if batched:
        return sample(model, convs, batch_size=16, fwd_hooks=lambda rows: setting(rows, log), **kw)
    return [
        sample(model, [c], fwd_hooks=lambda rows, ids=torch.tensor([i]): setting(ids, log), **kw)[0]
        for i, c in enumerate(convs)
    ]


def test_batched_greedy_equals_one_prompt_at_a_time(case):
    name, model, convs, lens = case
    results, logs = {}, {}
    for label, setting in _settings(model, lens).items():
        log_b: set = set()
        log_a: set = set()
        batched = _run(model, convs, setting, True, log_b)
        alone = _run(model, convs, setting, False, log_a)
        diff = [i for i in range(len(convs)) if batched[i] != alone[i]]
        assert not diff, f"{name} {label}: prompts {diff} differ, e.g. {batched[diff[0]]!r} vs {alone[diff[0]]!r}"
        results[label], logs[label] = alone, (log_b, log_a)
    # the hooks matter (so equality is not vacuous), and answers still differ between prompts
    none, per_row = results["none"], results["per_row"]
    assert results["steer_prompt"] != none and len(set(none)) > 1
    assert [per_row[i] for i in range(1, len(convs), 2)] == [none[i] for i in range(1, len(convs), 2)]
    assert any(per_row[i] != none[i] for i in range(0, len(convs), 2))

    # exactly the same (prompt, own position) pairs picked, batched and alone
    log_b, log_a = logs["per_row"]

    def by_key(log):
        out: dict = {}
        for kind, i, p in log:
            out.setdefault((kind, i), []).append(p)
        return {k: sorted(v) for k, v in out.items()}

    got_b, got_a = by_key(log_b), by_key(log_a)
    for key in got_a.keys() | got_b.keys():
        kind, i = key
        ps, pb = got_a.get(key, []), got_b.get(key, [])
        if kind in ("response", "all"):  # a batched row may run on after its own answer ended
            end = lens[i] + len(got_a.get(("response", i), []))
            assert pb[: len(ps)] == ps and all(p >= end for p in pb[len(ps):]), key
        else:
            assert pb == ps, key
    for i, L in enumerate(lens):
        assert got_a["prompt", i] == list(range(1, L))  # position 0 (BOS, or the first token) left out
        assert got_a["last_prompt", i] == [L - 1]
        assert got_a["mask+mask", i] == sorted({1, L // 2, L - 2})
        assert got_a["prompt+mask", i] == list(range(3, L))
        assert got_a["all", i][:L] == list(range(L))
        resp = got_a.get(("response", i), [])  # empty when the first answer token is EOS
        assert resp == list(range(L, L + len(resp)))  # from the first generated token on
    assert as_adapter(model).prepends_bos == name.startswith(("gpt2", "llama"))


def test_batched_sample_uses_few_generate_calls(case):
    """Prompts of many lengths share batches (one generate call per batch_size prompts)."""
    name, model, convs, lens = case
    firsts = []
    ad = as_adapter(model)

    def rec(act, hook):
        if act.shape[1] > 1:
            firsts.append(tuple(act.shape[:2]))
        return act

    sample(model, convs, temperature=0, max_new_tokens=2, batch_size=16, fwd_hooks=[(ad.resid_hook(0, "pre"), rec)])
    assert [b for b, _ in firsts] == [16, 16, 8]
    assert [t for _, t in firsts] == sorted({t for _, t in firsts}, reverse=True)  # longest first
    assert firsts[0][1] == max(lens)
