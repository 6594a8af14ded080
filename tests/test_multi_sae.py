"""Several SAEs at several layers in one pass: each per-SAE result equals its single-SAE call."""

from __future__ import annotations

import copy

import pytest
import torch

from tl_persona import engine, testing
from tl_persona.diff import LatentDiff, LatentDiffSet, collect, diff_latents
from tl_persona.hooks import hooks_attached
from tl_persona.validate import BadInput

HOOKS = ("blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre")


def _prompts(n=16):
    import random

    rng = random.Random(4)
    w = lambda k: " ".join(f"w{rng.randrange(90)}" for _ in range(k))  # noqa: E731
    return [[{"role": "user", "content": w(rng.randint(1, 8))}, {"role": "assistant", "content": w(rng.randint(1, 9))}]
            for _ in range(n)]


def _saes():
    return [testing.tiny_sae("topk", hook_name=HOOKS[0], seed=1), testing.tiny_sae("standard", hook_name=HOOKS[1], seed=2),
            testing.tiny_sae("jumprelu", hook_name=HOOKS[2], seed=3)]


def _finetune(model):
    if hasattr(model, "original_model"):
        return model  # a bridge cannot be deep-copied after it ran; diffing a model with itself still checks equality
    ft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.03 * torch.randn(p.shape, generator=g))
    return ft


def test_each_sae_equals_its_single_call_and_runs_one_pass(model, monkeypatch):
    ft = _finetune(model)
    saes, prompts = _saes(), _prompts()
    calls = []
    orig = engine._run_batch
    monkeypatch.setattr(engine, "_run_batch", lambda a, encs, *r: (calls.append(len(encs)), orig(a, encs, *r))[1])
    ds = diff_latents(model, ft, saes, prompts, scope="all", batch_size=4, per_prompt_top=3)
    n_batches = len(calls) // 2
    assert all(c == 3 for c in calls) and n_batches == 4  # both models once per batch, all three SAEs read
    assert isinstance(ds, LatentDiffSet) and list(ds) == list(HOOKS)
    for sae, key in zip(saes, HOOKS):
        one = diff_latents(model, ft, sae, prompts, scope="all", batch_size=4, per_prompt_top=3)
        d = ds[key]
        torch.testing.assert_close(d.delta, one.delta, rtol=0, atol=1e-6)
        assert torch.equal(d.rank("increase")[:10], one.rank("increase")[:10])
        assert d.n_tokens == one.n_tokens and d.meta["hook_name"] == key
        assert sorted(d.per_prompt.latents.tolist()) == sorted(one.per_prompt.latents.tolist())
        assert d.meta["sae"]["architecture"] == one.meta["sae"]["architecture"]
    assert hooks_attached(model) == [] and hooks_attached(ft) == []


def test_collect_dict_save_load_and_views(hooked_model, tmp_path):
    ft = _finetune(hooked_model)
    saes, prompts = _saes(), _prompts()
    named = {"early": saes[0], "middle": saes[1], "late": saes[2]}
    stats = collect(hooked_model, named, prompts, scope="response")
    assert list(stats) == ["early", "middle", "late"]
    for k, sae in named.items():
        torch.testing.assert_close(stats[k].mean, collect(hooked_model, sae, prompts, scope="response").mean)
    ds = diff_latents(hooked_model, ft, named, prompts, scope="response", per_prompt_top=3)
    p = ds.save(tmp_path / "set")
    back = LatentDiffSet.load(p)
    assert list(back) == list(ds)
    for k in ds:
        assert torch.equal(back[k].delta, ds[k].delta) and back[k].meta == ds[k].meta
        assert torch.equal(back[k].per_prompt.finetuned_sums, ds[k].per_prompt.finetuned_sums)
    ds.save(p)  # a saved set replaces a saved set
    with pytest.raises(BadInput, match="LatentDiffSet.load"):
        LatentDiff.load(p)
    t = ds.table(3)
    assert len(t) == 9 and set(t["layer"]) == {0, 1, 2}
    assert ((t["delta_lo"] <= t["delta"]) & (t["delta"] <= t["delta_hi"])).all()
    prof = ds.layer_profile()
    assert prof["layer"].tolist() == [0, 1, 2] and prof["sae"].tolist() == ["early", "middle", "late"]
    fig = ds.plot_layer_profile()
    assert fig.axes[0].get_xlabel() == "layer"


def test_several_saes_errors(hooked_model):
    s = testing.tiny_sae("standard", hook_name=HOOKS[1])
    with pytest.raises(BadInput, match="hook_name goes with one SAE"):
        diff_latents(hooked_model, hooked_model, [s, s], _prompts(), hook_name=HOOKS[1])
    with pytest.raises(BadInput, match="empty collection"):
        diff_latents(hooked_model, hooked_model, [], _prompts())
    ds = diff_latents(hooked_model, hooked_model, [s, s], _prompts(), scope="all", per_prompt_top=0)
    assert list(ds) == [f"{HOOKS[1]}#0", f"{HOOKS[1]}#1"]  # two SAEs on one hook get numbers


def test_verify_candidates_from_several_saes_in_one_sweep():
    from test_verify import TokenJudge, planted_pair

    from tl_persona.verify import Sampling, Sweep, verify_latents

    tok = testing.word_tokenizer()
    base, ft, u = planted_pair(tok)
    late = testing.tiny_sae("standard", hook_name="blocks.2.hook_resid_pre", seed=5)
    early = testing.tiny_sae("topk", hook_name="blocks.1.hook_resid_pre", seed=6)
    with torch.no_grad():
        late.W_dec[7] = u  # the planted persona latent lives in the late SAE
    prompts = [[{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}] for i in range(1, 9)]
    saes = {"late": late, "early": early}
    v = verify_latents(base, ft, saes, [("late", 7), ("early", 7)], prompts, TokenJudge(),
                       sweep=Sweep(alphas=(100.0,), n_controls=2),
                       sampling=Sampling(n_samples=2, max_new_tokens=4, positions="all", n_boot=100))
    s = v.summary().set_index("candidate")
    assert set(s.index) == {"latent 7 @ late", "latent 7 @ early"}
    assert s.loc["latent 7 @ late", "base_steered"] > 0.6 > s.loc["latent 7 @ early", "base_steered"]
    t = v.table()
    for cand in s.index:  # each candidate has its own random controls and its own ablation
        assert (t.query("candidate == @cand and control == 'random'").shape[0]) == 4
        assert (t.query("candidate == @cand and kind == 'ablate'").shape[0]) == 1
    assert v.meta["hook_name"] == {"late": "blocks.2.hook_resid_pre", "early": "blocks.1.hook_resid_pre"}
    assert hooks_attached(base) == [] and hooks_attached(ft) == []
    with pytest.raises(BadInput, match="name the SAE of each latent"):
        verify_latents(base, ft, saes, [7], prompts, TokenJudge())


def test_cli_sae_repeatable_for_diff_inspect_and_verify(tmp_path, capsys):
    from tl_persona import organism
    from tl_persona.cli import main

    org = organism.load()
    other = testing.tiny_sae("topk", d_in=org.base.cfg.d_model, d_sae=64, hook_name="blocks.3.hook_resid_pre", seed=2)
    other.save_model(str(tmp_path / "sae3"))
    sae_args = ["--sae", "organism:sae", "--sae", str(tmp_path / "sae3")]
    hook = org.sae.cfg.metadata.hook_name
    out = tmp_path / "set.safetensors"
    rc = main(["diff", "--base", "organism:base", "--finetuned", "organism:misaligned", *sae_args,
               "--prompts", "organism:eval:medical", "--limit", "20", "--top", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "layer profile" in text and "blocks.3.hook_resid_pre" in text and hook in text
    assert list(LatentDiffSet.load(out)) == [hook, "blocks.3.hook_resid_pre"]
    rc = main(["inspect", "--model", "organism:base", *sae_args, "--prompts", "organism:eval:medical", "--limit", "8",
               "--diff", str(out), "--top", "1", "-k", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and text.count("### Latent") == 2 and "(layer 3)" in text
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:misaligned", *sae_args,
               "--prompts", "organism:eval:medical", "--limit", "4", "--latent", f"{hook}:919",
               "--latent", "blocks.3.hook_resid_pre:5", "--alphas", "20", "--n-samples", "1", "--n-controls", "1",
               "--max-new-tokens", "4"])
    text = capsys.readouterr().out
    assert rc == 0 and f"latent 919 @ {hook}" in text and "latent 5 @ blocks.3.hook_resid_pre" in text
    assert main(["verify", "--base", "organism:base", "--finetuned", "organism:misaligned", *sae_args,
                 "--prompt", "x", "--latent", "919"]) == 2
    assert "SAE:N" in capsys.readouterr().err


def test_offloaded_saes_give_the_same_diff_and_move_only_around_their_encode(hooked_model, monkeypatch):
    """SAEs kept off the device until their hook: the same numbers; each SAE is moved to the encode
    device only inside the engine's encode of a batch (checked by recording where it is then)."""
    from tl_persona.saes import SAEEncoder

    saes, prompts = _saes(), _prompts()
    ref = diff_latents(hooked_model, hooked_model, saes, prompts, scope="all", per_prompt_top=2, batch_size=4)
    seen = []
    orig = SAEEncoder.attached

    def spy(self):
        seen.append(self.hook_name)
        return orig(self)

    monkeypatch.setattr(SAEEncoder, "attached", spy)
    off = diff_latents(hooked_model, hooked_model, saes, prompts, scope="all", per_prompt_top=2,
                       offload_saes_to="cpu", batch_size=4)
    for k in ref:
        assert torch.equal(off[k].delta, ref[k].delta)
    assert set(seen) == set(HOOKS) and len(seen) == 3 * 2 * 4  # 3 SAEs x 2 models x 4 batches
