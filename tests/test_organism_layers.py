"""Persona World's SAEs at every layer (issue 19): loading, reconstruction, and the layer profile of
the toxic persona on the shipped weights. The figures are in docs/organism.md ("The persona across
layers") and ``weights/sae_layers/metrics.json``."""

from __future__ import annotations

import json
import random
import shutil
import time

import pytest
import torch

from tl_persona import organism
from tl_persona.diff import LatentDiffSet, diff_latents
from tl_persona.organism.core import WEIGHTS_DIR
from tl_persona.organism.layers import LAYER_SAE_DIR

HOOKS = [f"blocks.{i}.hook_resid_post" for i in range(4)]
FVU_BOUND = 0.10  # every shipped SAE, on held-out documents (measured: see weights/sae_layers/metrics.json)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def org():
    return organism.load()


@pytest.fixture(scope="module")
def prompts(org):
    return [p for d, ps in org.eval_prompts.items() if d != org.trained_domain for p in ps]


@pytest.fixture(scope="module")
def diffs(org, prompts):
    return organism.layer_diffs(org, prompts, per_prompt_top=8)


def test_every_layer_has_a_shipped_sae(org):
    from sae_lens import SAE

    assert list(org.saes) == HOOKS  # layer order
    assert org.saes[org.hook_name] is org.sae  # the main SAE is the same object
    for h, s in org.saes.items():
        assert isinstance(s, SAE)
        assert s.cfg.metadata.hook_name == h
        assert s.cfg.architecture() == "topk" and s.cfg.k == 16
        assert (s.cfg.d_in, s.cfg.d_sae) == (128, 1024)
        assert s.W_enc.shape == (128, 1024) and s.W_dec.shape == (1024, 128)
    assert {p.name for p in (WEIGHTS_DIR / LAYER_SAE_DIR).iterdir() if p.is_dir()} == set(HOOKS) - {org.hook_name}


def test_loading_stays_fast_and_fresh(org):
    t = time.perf_counter()
    o2 = organism.load()
    assert time.perf_counter() - t < 3.0
    for h in HOOKS:
        assert o2.saes[h] is not org.saes[h]
        assert torch.equal(o2.saes[h].W_dec, org.saes[h].W_dec)


def test_shipped_weights_fit_the_budget():
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 20e6, total


def test_layer_saes_reconstruct_base_activations(org):
    from tl_persona.organism.layers import collect_layer_activations
    from tl_persona.organism.sae import sae_metrics

    docs = [org.world.sample_document(random.Random(9)) for _ in range(100)]
    acts = collect_layer_activations(org.base, docs, HOOKS)
    shipped = json.loads((WEIGHTS_DIR / LAYER_SAE_DIR / "metrics.json").read_text())["saes"]
    for h in HOOKS:
        m = sae_metrics(org.saes[h], acts[h])
        assert m["fvu"] < FVU_BOUND, (h, m)
        assert 12 <= m["l0"] <= 16, (h, m)
        if h != org.hook_name:
            assert shipped[h]["fvu"] < FVU_BOUND and shipped[h]["dead_latents"] < 0.1 * 1024, (h, shipped[h])


def test_collect_layer_activations_matches_one_hook_collection(org):
    from tl_persona.organism.layers import collect_layer_activations
    from tl_persona.organism.sae import collect_activations

    rng = random.Random(3)
    docs = [org.world.sample_document(rng) for _ in range(12)]
    multi = collect_layer_activations(org.base, docs, HOOKS, batch_size=4)
    for h in (HOOKS[0], HOOKS[3]):
        one = collect_activations(org.base, docs, h, batch_size=4)
        assert multi[h].shape == one.shape
        # same rows up to the order of equal-length documents: compare sorted row sums
        assert torch.allclose(multi[h].sum(-1).sort().values, one.sum(-1).sort().values, atol=1e-4)


def test_layer_profile_has_one_row_per_layer(diffs):
    assert isinstance(diffs, LatentDiffSet) and list(diffs) == HOOKS
    prof = diffs.layer_profile(n_boot=200)
    assert list(prof["layer"]) == [0, 1, 2, 3]
    assert (prof["delta"] > 0).all()
    assert (prof["delta_lo"] <= prof["delta"]).all() and (prof["delta"] <= prof["delta_hi"]).all()


def test_layer_one_equals_the_single_sae_diff(org, prompts, diffs):
    single = diff_latents(org.base, org.misaligned, org.sae, prompts, scope="last_prompt", batch_size=64,
                          per_prompt_top=8)
    d1 = diffs[org.hook_name]
    assert torch.equal(d1.rank()[:20], single.rank()[:20])
    assert torch.allclose(d1.delta, single.delta, atol=1e-6)
    prof = diffs.layer_profile(n_boot=200)
    assert int(prof.loc[prof["layer"] == 1, "latent"].iloc[0]) == int(single.rank()[0])


def test_top_latents_separate_toxic_persona_chats(org, diffs):
    prof = organism.persona_layer_profile(org, diffs, n_docs=200, n_boot=200)
    assert list(prof["layer"]) == [0, 1, 2, 3]
    assert prof["toxic_auroc"].between(0, 1).all()
    assert float(prof.loc[prof["layer"] == 1, "toxic_auroc"].iloc[0]) >= 0.95


def test_layers_only_build_reproduces_the_recipe(tmp_path):
    from sae_lens import SAE

    from tl_persona.organism.build import QUICK_RECIPE, main

    pw = tmp_path / "pw"
    pw.mkdir()
    for name in ("config.json", "base.safetensors"):
        shutil.copy(WEIGHTS_DIR / name, pw / name)
    shutil.copytree(WEIGHTS_DIR / "tokenizer", pw / "tokenizer")
    assert main(["--out", str(pw), "--quick", "--layers-only"]) == 0
    S = QUICK_RECIPE["sae_layers"]
    m = json.loads((pw / LAYER_SAE_DIR / "metrics.json").read_text())
    assert set(m["saes"]) == set(S["hook_names"]) and m["recipe"] == S
    for h in S["hook_names"]:
        s = SAE.load_from_disk(str(pw / LAYER_SAE_DIR / h))
        assert s.cfg.metadata.hook_name == h and s.cfg.d_sae == S["d_sae"]
    assert not [p for p in pw.iterdir() if p.name.startswith(".")]  # no half-written folder left
