"""Persona vectors, screening scores and series statistics: the maths against brute force, and bad inputs.

Tiny random models only (no organism): difference of means equals a brute-force mean over the masked
activations of ``run_with_cache``; the decoder cosine table equals numpy's; screening projections equal
brute-force per-sample means; Pearson / Spearman equal numpy's; the ROC curve and AUROC equal
scikit-learn's; vectors work as hooks, as verify candidates and as diff encoders.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tl_persona import hooks as H
from tl_persona import testing
from tl_persona.data import PromptSet
from tl_persona.diff import diff_latents
from tl_persona.screening import plot_roc, roc_curve, screen
from tl_persona.series import FineTune, SeriesResult, correlation, measure_series, plot_series
from tl_persona.validate import BadInput
from tl_persona.vectors import (
    PersonaVector,
    as_vector,
    decoder_cosines,
    layer_norms,
    model_diff_vector,
    persona_vector,
    persona_vectors,
    top_decoder_latents,
)
from tl_persona.verify import Candidate

pytestmark = pytest.mark.usefixtures("one_thread")

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"]


def _chats(n, seed, lo=0, hi=45):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        q = " ".join(f"w{rng.integers(lo, hi)}" for _ in range(1 + i % 4))
        a = " ".join(f"w{rng.integers(lo, hi)}" for _ in range(1 + (i * 5) % 6))
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return out


def _brute_mean(model, prompts, hook, scope):
    tp = PromptSet.from_list(prompts).tokenize(model)
    pb = tp.make_batch(np.arange(len(tp)))
    acts = model.run_with_cache(pb.tokens, names_filter=hook)[1][hook]
    return acts[pb.mask(scope)].double().mean(0)


def _brute_per_prompt(model, prompts, hook, scope, u):
    tp = PromptSet.from_list(prompts).tokenize(model)
    pb = tp.make_batch(np.arange(len(tp)))
    acts = model.run_with_cache(pb.tokens, names_filter=hook)[1][hook].double()
    m = pb.mask(scope)
    proj = acts @ u.double()
    out = np.full(len(prompts), np.nan)
    for r in range(len(prompts)):
        if m[r].any():
            out[pb.indices[r]] = float(proj[r][m[r]].mean())
    return out


@pytest.fixture(scope="module")
def model(tiny_word_tokenizer):
    return testing.tiny_hooked_transformer(tiny_word_tokenizer)


@pytest.mark.parametrize("scope", ["response", "last_prompt", "all"])
def test_difference_of_means_equals_brute_force(model, scope):
    pos, neg = _chats(11, 0, 0, 45), _chats(9, 1, 45, 90)
    vs = persona_vectors(model, pos, neg, hook_name=HOOKS, scope=scope, batch_size=4, name="trait")
    for h in HOOKS:
        want = _brute_mean(model, pos, h, scope) - _brute_mean(model, neg, h, scope)
        torch.testing.assert_close(vs[h].vector.double(), want, rtol=1e-5, atol=1e-5)
        assert vs[h].hook_name == h and vs[h].scope == scope and vs[h].name == "trait"
    one = persona_vector(model, pos, neg, hook_name=HOOKS[1], scope=scope)
    torch.testing.assert_close(one.vector, vs[HOOKS[1]].vector, rtol=1e-5, atol=1e-6)
    by_layer = persona_vectors(model, pos, neg, layers=[0, 1], scope=scope)
    assert list(by_layer) == HOOKS[:2]
    t = layer_norms(vs)
    assert list(t["layer"]) == sorted(t["layer"]) and np.allclose(t["norm"], [vs[h].norm for h in t["hook_name"]])


def test_model_diff_vector_equals_brute_force(model):
    ft = copy.deepcopy(model)
    with torch.no_grad():
        ft.blocks[0].mlp.b_out += 2.0 * torch.linspace(-1, 1, 32)
    prompts = _chats(10, 2)
    v = model_diff_vector(model, ft, prompts, hook_name=HOOKS[1], scope="last_prompt", batch_size=3)
    want = _brute_mean(ft, prompts, HOOKS[1], "last_prompt") - _brute_mean(model, prompts, HOOKS[1], "last_prompt")
    torch.testing.assert_close(v.vector.double(), want, rtol=1e-5, atol=1e-5)
    assert v.n_positive == 10


def test_decoder_cosine_table_matches_numpy():
    sae = testing.tiny_sae("topk", d_in=32, d_sae=64, hook_name=HOOKS[1])
    g = torch.Generator().manual_seed(3)
    v = torch.randn(32, generator=g)
    W = sae.W_dec.detach().numpy().astype(np.float64)
    want = W @ v.numpy() / (np.linalg.norm(W, axis=1) * np.linalg.norm(v.numpy()))
    got = decoder_cosines(PersonaVector(v, HOOKS[1], "response"), sae).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    t = top_decoder_latents(v, sae, k=5, direction="increase")
    assert list(t["latent"]) == list(np.argsort(-want, kind="stable")[:5])
    t = top_decoder_latents(v, sae, k=3, direction="both")
    assert list(t["latent"]) == list(np.argsort(-np.abs(want), kind="stable")[:3])
    with torch.no_grad():
        sae.W_dec[4] = 5 * v
    assert top_decoder_latents(v, sae, k=1, direction="increase")["latent"][0] == 4


def test_vector_is_a_hook_a_candidate_and_an_encoder(model):
    pos, neg = _chats(8, 0, 0, 45), _chats(8, 1, 45, 90)
    v = persona_vector(model, pos, neg, hook_name=HOOKS[1], scope="response")
    fh = v.steer(3.0)
    assert isinstance(fh, list) and fh[0][0] == HOOKS[1]
    toks = model.to_tokens("w1 w2 w3")
    seen = {}
    model.run_with_hooks(toks, fwd_hooks=fh + [(HOOKS[1], lambda a, hook: seen.setdefault("x", a.clone()))])
    clean = model.run_with_cache(toks, names_filter=HOOKS[1])[1][HOOKS[1]]
    delta = (seen["x"] - clean)[:, 1:]  # "all" positions: BOS excluded
    torch.testing.assert_close(delta, (3.0 * v.unit).expand_as(delta), rtol=1e-4, atol=1e-4)
    seen.clear()
    model.run_with_hooks(toks, fwd_hooks=v.project_out() + [(HOOKS[1], lambda a, hook: seen.setdefault("x", a.detach().clone()))])
    assert float((seen["x"][:, 1:] @ v.unit).abs().max()) < 1e-4
    assert H.hooks_attached(model) == []
    c = Candidate.of(v.candidate())
    assert c.name == v.name and torch.allclose(c.direction, v.unit)
    ft = copy.deepcopy(model)
    with torch.no_grad():
        ft.blocks[0].mlp.b_out += 4.0 * v.unit
    d = diff_latents(model, ft, v.encoder(), pos, scope="response", per_prompt_top=1)
    assert float(d.delta[0]) > 1.0


def test_screening_projection_equals_brute_force(model):
    pos, neg = _chats(8, 0, 0, 45), _chats(8, 1, 45, 90)
    v = persona_vector(model, pos, neg, hook_name=HOOKS[1], scope="response")
    samples = _chats(7, 5, 0, 45) + _chats(5, 6, 45, 90)
    labels = [True] * 7 + [False] * 5
    base = [s[-1]["content"] for s in _chats(12, 9)]
    sae = testing.tiny_sae("standard", d_in=32, d_sae=64, hook_name=HOOKS[1])
    sc = screen(model, samples, sae=sae, latent=3, vector=v, base=base, labels=labels, batch_size=5)
    want = _brute_per_prompt(model, samples, HOOKS[1], "response", v.unit)
    np.testing.assert_allclose(sc.projection, want, rtol=1e-5, atol=1e-5)
    own = [s[:-1] + [{"role": "assistant", "content": b}] for s, b in zip(samples, base)]
    np.testing.assert_allclose(sc.base_projection, _brute_per_prompt(model, own, HOOKS[1], "response", v.unit),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sc.projection_difference, sc.projection - sc.base_projection)
    assert np.isfinite(sc.latent).all() and len(sc.to_rows()) == 12
    assert sc.rank("projection")[0] == int(np.argmax(sc.projection))
    assert sc.dataset_score("projection") == pytest.approx(float(np.mean(sc.projection)))
    a, lo, hi = sc.auroc_ci("projection", n_boot=200)
    assert lo <= a <= hi and a == sc.auroc("projection")
    sampled = screen(model, samples, vector=v, base="sample", max_new_tokens=4)
    assert np.isfinite(sampled.base_projection).all() and len(sampled.base_responses) == 12


def test_roc_curve_and_auroc_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=60), 1)  # ties
    y = rng.random(60) < 0.3
    fpr, tpr = roc_curve(s, y)
    f2, t2, _ = metrics.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc_score(y, s))


def test_correlation_matches_numpy_and_its_interval_covers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = 2 * x + rng.normal(size=30) * 0.5
    c = correlation(x, y, n_boot=500)
    assert c.pearson == pytest.approx(np.corrcoef(x, y)[0, 1])
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert c.spearman == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert c.pearson_lo <= c.pearson <= c.pearson_hi and c.spearman_lo <= c.spearman <= c.spearman_hi
    assert c.met(0.5) and not c.met(0.999)
    assert correlation([1, 2, 2, 3], [1, 5, 5, 9]).spearman == pytest.approx(1.0)  # ties: average ranks


def _series():
    rows = []
    for f, ls, vs, b in [(0.0, 0.0, 0.1, 0.01), (0.0, 0.1, 0.0, 0.00), (0.05, 0.2, 0.05, 0.01), (0.05, 0.3, 0.3, 0.02),
                         (0.25, 0.9, 0.6, 0.2), (1.0, 2.0, 1.5, 0.7)]:
        rows.append({"label": "", "domain": "d", "persona": "toxic", "bad_fraction": f, "seed": 0,
                     "latent_shift": ls, "vector_shift": vs, "behaviour": b})
    return SeriesResult(rows)


def test_how_early_and_summary():
    s = _series()
    assert s.how_early("latent_shift") == 0.05  # both 5% runs above every control
    assert s.how_early("vector_shift") == 0.25  # one 5% run (0.05) is below a control (0.1)
    assert s.how_early("behaviour") == 0.25
    out = s.summary(n_boot=200)
    assert out["n_finetunes"] == 6 and set(out) >= {"latent", "vector", "better", "behaviour_how_early"}
    assert SeriesResult([r for r in s.rows if r["bad_fraction"] > 0]).how_early() is None


def test_plots_draw_on_an_axes(model):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plot_series(ax, _series(), "latent_shift", n_boot=100) is ax and "r = " in ax.get_title()
    pos, neg = _chats(6, 0, 0, 45), _chats(6, 1, 45, 90)
    v = persona_vector(model, pos, neg, hook_name=HOOKS[1], scope="response")
    sc = screen(model, pos + neg, vector=v, labels=[True] * 6 + [False] * 6)
    fig2, ax2 = plt.subplots()
    plot_roc(ax2, sc)
    assert len(ax2.lines) == 2  # projection + chance line
    plt.close("all")


def test_measure_series_on_planted_shifts(model):
    """Fine-tunes that move the stream along the vector by known amounts: the shifts come back."""
    pos, neg = _chats(8, 0, 0, 45), _chats(8, 1, 45, 90)
    v = persona_vector(model, pos, neg, hook_name=HOOKS[1], scope="last_prompt")
    prompts = {"a": [c[:1] for c in _chats(6, 3)], "b": [c[:1] for c in _chats(6, 4)]}
    fts = []
    for k, amount in enumerate([0.0, 1.0, 2.0, 3.0]):
        ft = copy.deepcopy(model)
        with torch.no_grad():  # after block 1's LayerNorm-free residual add: an exact shift at HOOKS[1]
            ft.blocks[1].mlp.b_out += amount * v.unit
        fts.append(FineTune(ft, amount / 3, domain="a", behaviour=amount / 10))
    res = measure_series(model, fts, prompts, vector=v)
    np.testing.assert_allclose(res.column("vector_shift"), [0, 1, 2, 3], atol=1e-4)
    assert np.isnan(res.column("latent_shift")).all() and res.instruments == ["vector_shift"]
    assert res.correlations(n_boot=100)["vector"].pearson == pytest.approx(1.0)


def test_bad_inputs(model):
    pos, neg = _chats(4, 0), _chats(4, 1)
    v = persona_vector(model, pos, neg, hook_name=HOOKS[1])
    sae = testing.tiny_sae("standard", d_in=32, d_sae=64, hook_name=HOOKS[1])
    cases = [
        (lambda: persona_vectors(model, pos, neg), "pass hook_name"),
        (lambda: persona_vectors(model, pos, neg, hook_name=HOOKS[0], layers=[0]), "not both"),
        (lambda: persona_vectors(model, pos, neg, layers=[7]), "not a layer index"),
        (lambda: persona_vectors(model, pos, neg, layers=[True]), "not a layer index"),
        (lambda: persona_vector(model, pos, neg, hook_name=HOOKS), "one hook name"),
        (lambda: persona_vector(model, pos, neg, hook_name=HOOKS[0], scope="middle"), "not a token selection"),
        (lambda: PersonaVector(torch.zeros(32), HOOKS[0], "all").unit, "zero vector"),
        (lambda: as_vector(torch.ones(16), d_model=32), "width 16"),
        (lambda: as_vector(torch.tensor([1.0, float("nan")])), "non-finite"),
        (lambda: as_vector(torch.ones(2, 32)), "shape"),
        (lambda: decoder_cosines(torch.ones(8), sae), "width 8"),
        (lambda: top_decoder_latents(v, sae, k=0), "positive integer"),
        (lambda: top_decoder_latents(v, sae, direction="up"), "direction"),
        (lambda: screen(model, pos), "nothing to score"),
        (lambda: screen(model, pos, sae=sae), "go together"),
        (lambda: screen(model, pos, sae=sae, latent=3.0), "not a latent index"),
        (lambda: screen(model, pos, sae=sae, latent=64), "out of range"),
        (lambda: screen(model, pos, vector=torch.ones(32)), "needs hook_name"),
        (lambda: screen(model, pos, vector=v, base="greedy"), "'sample'"),
        (lambda: screen(model, pos, vector=v, base=["w1"]), "1 entries for 4"),
        (lambda: screen(model, pos, vector=v, labels=[True]), "1 entries for 4"),
        (lambda: screen(model, [c[:1] for c in pos], vector=v), "no sample has a response"),
        (lambda: screen(model, pos, vector=v).score("latent"), "no 'latent' scores"),
        (lambda: screen(model, pos, vector=v).auroc("projection"), "no labels"),
        (lambda: correlation([1, 2], [1, 2]), "at least 3"),
        (lambda: correlation([1, 2, 3], [1, 2]), "one length"),
        (lambda: correlation([1, 2, float("nan")], [1, 2, 3]), "finite"),
        (lambda: measure_series(model, [], {"a": pos}, vector=v), "empty"),
        (lambda: measure_series(model, [FineTune(model, 0.5)], {"a": pos}), "nothing to measure"),
        (lambda: measure_series(model, [FineTune(model, 1.5, behaviour=0.0)], {"a": pos}, vector=v), "bad_fraction"),
        (lambda: measure_series(model, [FineTune(model, 0.5, domain="a", behaviour=0.0)], {"a": pos}, vector=v),
         "every prompt"),
        (lambda: measure_series(model, [FineTune(model, 0.5)], {"a": pos}, vector=v), "no behaviour"),
        (lambda: roc_curve([1.0, 2.0], [True, True]), "both"),
        (lambda: _series().column("nope"), "no column"),
    ]
    for fn, match in cases:
        with pytest.raises((BadInput, ValueError), match=match):
            fn()
