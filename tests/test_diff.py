"""Model diffing: exactness against brute force, planted shifts, per-prompt values, errors, persistence,
atomic writes and 2-process (gloo) sharding."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tl_persona import diff as D
from tl_persona import engine
from tl_persona import testing
from tl_persona.data import PromptSet
from tl_persona.diff import LatentDiff, collect, diff_latents, model_identity
from tl_persona.hooks import hooks_attached
from tl_persona.stats import LatentStats

HOOK = "blocks.1.hook_resid_pre"
SCOPES = ("prompt", "response", "last_prompt", "all")


def _prompts(n=14, seed=0):
    """Chat pairs, chats without answers, raw text and raw pairs of varied lengths."""
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(90)}" for _ in range(k))  # noqa: E731
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            out.append([{"role": "user", "content": words(rng.randint(1, 9))},
                        {"role": "assistant", "content": words(rng.randint(1, 12))}])
        elif kind == 1:
            out.append([{"role": "user", "content": words(rng.randint(1, 9))}])
        elif kind == 2:
            out.append(words(rng.randint(2, 15)))
        else:
            out.append((words(rng.randint(1, 6)), " " + words(rng.randint(1, 6))))
    return out


def _copy(model):
    """A copy of a tiny test model. A TransformerBridge that has run cannot be deep-copied (it holds
    non-leaf tensors), so a bridge is rebuilt from the same seed and checked equal."""
    if not hasattr(model, "original_model"):
        return copy.deepcopy(model)
    ft = testing.tiny_bridge(tempfile.mkdtemp(prefix="tl_persona_ft_"), model.tokenizer)
    for (n, p), (_, q) in zip(model.named_parameters(), ft.named_parameters()):
        assert torch.equal(p, q), n
    return ft


def _shifted(model, direction, alpha):
    """A copy of ``model`` whose residual stream after block 0 is shifted by ``alpha * direction``."""
    ft = _copy(model)
    with torch.no_grad():
        if hasattr(ft, "original_model"):  # TransformerBridge over a HF GPT-2
            ft.original_model.transformer.h[0].mlp.c_proj.bias += alpha * direction
        else:
            ft.blocks[0].mlp.b_out += alpha * direction
    return ft


def _enc_dir(sae, j):
    w = sae.W_enc.detach()[:, j]
    return w / w.norm()


# --------------------------------------------------------------------------- exactness
def test_self_diff_is_exactly_zero(model, sae):
    d = diff_latents(model, model, sae, _prompts(), scope="all", batch_size=4, per_prompt_top=3)
    assert d.n_tokens > 0 and d.d_sae == 64
    assert torch.equal(d.delta, torch.zeros(64, dtype=torch.float64))
    assert torch.equal(d.base.max, d.finetuned.max) and torch.equal(d.base.fire_count, d.finetuned.fire_count)
    assert d.per_prompt.latents.numel() == 0  # nothing changed: no top latent in either direction
    assert hooks_attached(model) == []


def _brute_force(model, sae, prompts):
    """Per-prompt forward passes (no padding) with TransformerLens' own run_with_cache; returns the
    latents of every token of every prompt and, per scope, the positions that scope counts."""
    tp = PromptSet.from_list(prompts).tokenize(model)
    lat, picks = [], {s: [] for s in SCOPES}
    for i, ids in enumerate(tp.rows):
        L, plen = len(ids), int(tp.prompt_len[i])
        start = 1 if tp.has_bos[i] else 0
        pos = {"all": range(start, L), "prompt": range(start, min(plen, L)), "response": range(max(plen, start), L),
               "last_prompt": [plen - 1] if start <= plen - 1 < L else []}
        _, cache = model.run_with_cache(torch.tensor(ids)[None], names_filter=lambda n: n == HOOK)
        with torch.no_grad():
            lat.append(sae.encode(cache[HOOK][0]).double())
        for s in SCOPES:
            picks[s].append(list(pos[s]))
    return {s: torch.cat([f[p] for f, p in zip(lat, picks[s])]) for s in SCOPES}


def test_streaming_collection_equals_brute_force_for_every_scope(model, sae):
    prompts = _prompts()
    brute = _brute_force(model, sae, prompts)
    for scope in SCOPES:
        s = collect(model, sae, prompts, scope=scope, batch_size=3)
        f = brute[scope]
        assert s.n == f.shape[0] > 0, scope
        torch.testing.assert_close(s.mean, f.mean(0), rtol=1e-5, atol=1e-5, msg=scope)
        torch.testing.assert_close(s.var, f.var(0), rtol=1e-5, atol=1e-5, msg=scope)
        torch.testing.assert_close(s.max, f.amax(0), rtol=1e-5, atol=1e-5, msg=scope)
        torch.testing.assert_close(s.freq, (f > 0).double().mean(0), rtol=0, atol=1e-12, msg=scope)


def test_encodes_only_counted_positions_in_bounded_chunks(hooked_model, monkeypatch):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    rows = []
    orig = sae.encode
    sae.encode = lambda x: (rows.append(x.shape[0]), orig(x))[1]
    monkeypatch.setattr(engine, "_CHUNK_ELEMENTS", 5 * 64)  # at most 5 positions encoded at once
    prompts = _prompts()
    s = collect(hooked_model, sae, prompts, scope="response", batch_size=4)
    n_resp = int(PromptSet.from_list(prompts).tokenize(hooked_model).scope_counts("response").sum())
    assert sum(rows) == n_resp == s.n
    assert max(rows) <= 5
    del sae.encode
    ref = collect(hooked_model, sae, prompts, scope="response", batch_size=4)
    torch.testing.assert_close(s.mean, ref.mean, rtol=1e-9, atol=1e-9)


def test_collect_dtype_option(hooked_model):
    sae = testing.tiny_sae("topk", hook_name=HOOK)
    a = collect(hooked_model, sae, _prompts(), scope="all")
    b = collect(hooked_model, sae, _prompts(), scope="all", dtype=torch.float64)
    torch.testing.assert_close(a.mean, b.mean, rtol=1e-5, atol=1e-6)
    assert sae.W_dec.dtype == torch.float32  # the user's SAE is untouched


# --------------------------------------------------------------------------- planted shifts
@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_shift_along_a_latent_ranks_it_first(model, arch):
    sae = testing.tiny_sae(arch, hook_name=HOOK)
    j = 37
    ft = _shifted(model, _enc_dir(sae, j), 3.0)
    d = diff_latents(model, ft, sae, _prompts(), scope="response", batch_size=4, per_prompt_top=4)
    assert int(d.rank("increase")[0]) == j
    assert int(d.top(1, "increase").index[0]) == j
    assert d.delta[j] > 0 and d.effect_size[j] > 0
    ci = d.bootstrap_ci(j, n_boot=300, seed=1)
    assert 0 < ci.lo <= ci.delta <= ci.hi
    assert ci.delta == pytest.approx(float(d.delta[j]), rel=1e-6)
    assert d.auroc(j) > 0.8
    # the same pair the other way round: first by decrease
    r = diff_latents(ft, model, sae, _prompts(), scope="response", batch_size=4, per_prompt_top=0)
    assert int(r.rank("decrease")[0]) == j
    assert r.per_prompt is None


def test_per_prompt_values_equal_single_model_collection(hooked_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    ft = _shifted(hooked_model, _enc_dir(sae, 5), 2.0)
    prompts = _prompts(20)
    d = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=3, per_prompt_top=4)
    pp = d.per_prompt
    inc = [j for j in d.rank("increase")[:4].tolist() if d.delta[j] > 0]
    dec = [j for j in d.rank("decrease")[:4].tolist() if d.delta[j] < 0]
    expect = sorted(set(inc) | set(dec))
    assert len(expect) == 8
    assert sorted(pp.latents.tolist()) == expect
    assert pp.prompt_ids.tolist() == list(range(20))
    for model, sums in ((hooked_model, pp.base_sums), (ft, pp.finetuned_sums)):
        ref = collect(model, sae, prompts, scope="all", batch_size=5, latents_per_prompt=pp.latents).per_prompt
        assert torch.equal(ref.counts, pp.counts)
        torch.testing.assert_close(ref.sums, sums, rtol=1e-5, atol=1e-5)
    # token-pooled delta from the per-prompt sums equals the streamed delta
    j = 0
    lat = int(pp.latents[j])
    pooled = (pp.finetuned_sums[:, j] - pp.base_sums[:, j]).sum() / pp.counts.sum()
    assert float(pooled) == pytest.approx(float(d.delta[lat]), rel=1e-6, abs=1e-9)
    b, f = d.per_prompt_means(lat)
    assert b.shape == (20,)


def test_second_pass_when_the_pilot_misses_a_top_latent(hooked_model, monkeypatch):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    g = torch.Generator().manual_seed(3)
    ft = copy.deepcopy(hooked_model)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    prompts = _prompts(24, seed=5)
    ref = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=2, per_prompt_top=3)
    assert ref.meta["per_prompt_second_pass"] == 0
    monkeypatch.setattr(engine, "_PILOT_PROMPTS", 1)  # pilot = the first batch (2 prompts)
    # the tracking budget alone holds every latent for 24 prompts: the tiny pilot misses nothing
    d = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=2, per_prompt_top=3)
    assert d.meta["per_prompt_second_pass"] == 0
    torch.testing.assert_close(d.per_prompt.base_sums, ref.per_prompt.base_sums, rtol=1e-6, atol=1e-6)
    monkeypatch.setattr(engine, "_CANDIDATES", (1, 0))  # no slack: 3 candidates per direction
    monkeypatch.setattr(engine, "_TRACK_ELEMENTS", 0)  # and no budget beyond them
    d = diff_latents(hooked_model, ft, sae, prompts, scope="all", batch_size=2, per_prompt_top=3)
    assert d.meta["per_prompt_second_pass"] > 0
    assert sorted(d.per_prompt.latents.tolist()) == sorted(ref.per_prompt.latents.tolist())
    o1, o2 = torch.argsort(d.per_prompt.latents), torch.argsort(ref.per_prompt.latents)
    torch.testing.assert_close(d.per_prompt.base_sums[:, o1], ref.per_prompt.base_sums[:, o2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d.per_prompt.finetuned_sums[:, o1], ref.per_prompt.finetuned_sums[:, o2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(d.delta, ref.delta, rtol=1e-5, atol=1e-6)  # other batches: float32 rounding only


# --------------------------------------------------------------------------- errors
def test_clear_errors(hooked_model, tmp_path):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    other_tok = testing.word_tokenizer([f"v{i}" for i in range(90)])
    other = testing.tiny_hooked_transformer(other_tok)
    with pytest.raises(ValueError, match="different tokenizers"):
        diff_latents(hooked_model, other, sae, _prompts())
    wide = testing.tiny_hooked_transformer(hooked_model.tokenizer, d_model=48)
    with pytest.raises(ValueError, match="d_model=32 but fine-tuned .* d_model=48"):
        diff_latents(hooked_model, wide, sae, _prompts())
    wrong = testing.tiny_sae("standard", d_in=16, hook_name=HOOK)
    with pytest.raises(ValueError, match="d_in=16 does not match the activation width 32"):
        diff_latents(hooked_model, hooked_model, wrong, _prompts())
    with pytest.raises(ValueError, match="Closest valid names: blocks.1.hook_resid_pre"):
        collect(hooked_model, sae, _prompts(), hook_name="blocks.1.hook_resid_pr")
    with pytest.raises(ValueError, match="empty"):
        diff_latents(hooked_model, hooked_model, sae, [])
    with pytest.raises(ValueError, match="scope='response' selects no token"):
        diff_latents(hooked_model, hooked_model, sae, ["w1 w2", [{"role": "user", "content": "w3"}]])
    with pytest.raises(ValueError, match="scope=.everything. is not a token selection"):
        collect(hooked_model, sae, _prompts(), scope="everything")
    with pytest.raises(ValueError, match="per_prompt_top"):
        diff_latents(hooked_model, hooked_model, sae, _prompts(), per_prompt_top=-1)
    broken = copy.deepcopy(hooked_model)
    with torch.no_grad():
        broken.blocks[0].mlp.b_out[0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite"):
        diff_latents(hooked_model, broken, sae, _prompts(), scope="all")
    assert hooks_attached(broken) == [] and hooks_attached(hooked_model) == []
    d = diff_latents(hooked_model, hooked_model, sae, _prompts(), per_prompt_top=0)
    with pytest.raises(ValueError, match="no per-prompt values"):
        d.bootstrap_ci(0)
    d2 = diff_latents(hooked_model, hooked_model, sae, _prompts(), per_prompt_top=1)
    missing = next(j for j in range(64) if j not in d2.per_prompt.latents.tolist())
    with pytest.raises(KeyError, match="per_prompt_top"):
        d2.bootstrap_ci(missing)
    with pytest.raises(ValueError, match="direction"):
        d.rank("up")
    with pytest.raises(ValueError, match="by="):
        d.top(3, by="size")


# --------------------------------------------------------------------------- ranking helpers
def _toy_diff():
    base, ft = LatentStats(4), LatentStats(4)
    base.update(torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 2.0, 0.0]]))
    ft.update(torch.tensor([[2.0, 1.0, 2.0, 0.0], [6.0, 0.0, 2.0, 0.0]]))
    return LatentDiff(base, ft, None, {"scope": "all"})


def test_ranking_and_table():
    d = _toy_diff()
    assert d.delta.tolist() == [2.0, 0.5, 0.0, 0.0]
    assert d.rank("increase").tolist() == [0, 1, 2, 3]
    assert d.rank("decrease").tolist() == [2, 3, 1, 0]
    rel = d.relative_delta
    assert rel[0] == 1.0 and torch.isinf(rel[1]) and torch.isnan(rel[3])
    # relative delta: inf sorts first, NaN always last
    assert d.rank("increase", by="relative_delta").tolist() == [1, 0, 2, 3]
    assert d.rank("decrease", by="relative_delta").tolist() == [2, 0, 1, 3]
    # effect size: delta over the pooled sd (latent 0: m2 = 2 + 8, n = 2 + 2 tokens)
    assert float(d.effect_size[0]) == pytest.approx(2.0 / np.sqrt(10.0 / 2))
    assert float(d.effect_size[3]) == 0.0
    df = d.top(2)
    assert list(df.index) == [0, 1] and df.index.name == "latent"
    assert {"base_mean", "finetuned_mean", "delta", "relative_delta", "effect_size", "base_freq",
            "finetuned_freq", "base_max", "finetuned_max"} <= set(df.columns)
    assert df.loc[0, "finetuned_freq"] == 1.0 and df.loc[1, "finetuned_freq"] == 0.5
    assert len(d.to_pandas()) == 4


# --------------------------------------------------------------------------- persistence
def _assert_same(a: LatentDiff, b: LatentDiff):
    for s, t in ((a.base, b.base), (a.finetuned, b.finetuned)):
        for k, v in s.state_dict().items():
            assert torch.equal(v, t.state_dict()[k]), k
    if a.per_prompt is None:
        assert b.per_prompt is None
    else:
        for k in ("latents", "prompt_ids", "counts", "base_sums", "finetuned_sums"):
            assert torch.equal(getattr(a.per_prompt, k), getattr(b.per_prompt, k)), k
    assert a.meta == b.meta
    import pandas as pd

    pd.testing.assert_frame_equal(a.to_pandas(), b.to_pandas())


def test_save_load_round_trips_every_field(model, tmp_path):
    sae = testing.tiny_sae("jumprelu", hook_name=HOOK)
    ft = _shifted(model, _enc_dir(sae, 3), 1.5)
    d = diff_latents(model, ft, sae, _prompts(), scope="prompt", batch_size=4, per_prompt_top=5, seed=7)
    path = d.save(tmp_path / "sub" / "diff")
    assert path.name == "diff.safetensors" and path.exists()
    e = LatentDiff.load(path)
    _assert_same(d, e)
    m = e.meta
    assert m["scope"] == "prompt" and m["seed"] == 7 and m["hook_name"] == HOOK
    assert m["prompts"]["hash"] == PromptSet.from_list(_prompts()).content_hash
    assert m["base"]["weight_hash"] != m["finetuned"]["weight_hash"]
    assert m["sae"]["architecture"] == "jumprelu" and m["sae"]["d_sae"] == 64
    assert {"torch", "transformer-lens", "sae-lens", "python"} <= set(m["versions"])
    assert e.bootstrap_ci(3, n_boot=100) == d.bootstrap_ci(3, n_boot=100)
    _assert_same(d, LatentDiff.load(tmp_path / "sub" / "diff"))  # suffix optional on load too
    plain = _toy_diff()
    plain.save(tmp_path / "plain.safetensors")
    _assert_same(plain, LatentDiff.load(tmp_path / "plain.safetensors"))


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a saved LatentDiff"):
        LatentDiff.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        LatentDiff.load(tmp_path / "none.safetensors")


class _Boom(Exception):
    pass


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    d = _toy_diff()
    target = tmp_path / "d.safetensors"
    d.save(target)
    before = target.read_bytes()
    changed = LatentDiff(d.finetuned, d.base, None, {"scope": "changed"})

    real_fdopen = os.fdopen

    class Dying:
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                raise _Boom("disk full / killed midway")
            return self.fh.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, k):
            return getattr(self.fh, k)

    monkeypatch.setattr(D, "_WRITE_CHUNK", 64)
    monkeypatch.setattr(D.os, "fdopen", lambda fd, mode: Dying(real_fdopen(fd, mode)))
    with pytest.raises(_Boom):
        changed.save(target)
    assert target.read_bytes() == before  # the old file is intact
    with pytest.raises(_Boom):
        changed.save(tmp_path / "new.safetensors")
    assert not (tmp_path / "new.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.safetensors"]  # no temp files left
    monkeypatch.undo()
    assert LatentDiff.load(target).meta == d.meta


def test_killed_writer_never_leaves_a_file_at_the_target(tmp_path):
    """A process killed (SIGKILL) in the middle of save: the target path never holds partial data."""
    target = tmp_path / "killed.safetensors"
    marker = tmp_path / "started"
    code = f"""
import time, torch
from tl_persona import diff as D
from tl_persona import engine
from tl_persona.stats import LatentStats
s = LatentStats(4096).update(torch.rand(8, 4096))
D._WRITE_CHUNK = 1024
real = D.os.fdopen
class Slow:
    def __init__(self, fh): self.fh = fh
    def write(self, b):
        open({str(marker)!r}, "w").close(); time.sleep(0.05); return self.fh.write(b)
    def __enter__(self): return self
    def __exit__(self, *e): self.fh.close()
    def __getattr__(self, k): return getattr(self.fh, k)
D.os.fdopen = lambda fd, mode: Slow(real(fd, mode))
D.LatentDiff(s, s, None, {{}}).save({str(target)!r})
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "writer exited before writing"
            assert time.time() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not target.exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.safetensors.")]
    assert leftovers and all(p.suffix == ".tmp" for p in leftovers)  # partial data only under a temp name


# --------------------------------------------------------------------------- provenance
def test_model_identity_tracks_weights(hooked_model):
    a = model_identity(hooked_model)
    assert a == model_identity(hooked_model)
    assert a["n_params"] == sum(p.numel() for p in hooked_model.parameters())
    b = copy.deepcopy(hooked_model)
    with torch.no_grad():
        b.blocks[2].ln2.b[3] += 1e-3
    assert model_identity(b)["weight_hash"] != a["weight_hash"]
    c = copy.deepcopy(hooked_model)
    with torch.no_grad():
        for p in c.parameters():
            p.mul_(1.0001)
    assert model_identity(c)["weight_hash"] != a["weight_hash"]


# --------------------------------------------------------------------------- distributed
def _dist_setup(tok_dir):
    tok = testing.word_tokenizer(folder=tok_dir)
    base = testing.tiny_hooked_transformer(tok)
    sae = testing.tiny_sae("topk", hook_name=HOOK, seed=2)
    ft = _shifted(base, _enc_dir(sae, 11), 4.0)
    return base, ft, sae, _prompts(23, seed=9)


def _dist_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        base, ft, sae, prompts = _dist_setup(Path(out_dir) / f"tok{rank}")
        s = collect(base, sae, prompts, scope="response", batch_size=3, latents_per_prompt=[1, 11, 40])
        d = diff_latents(base, ft, sae, prompts, scope="all", batch_size=2, per_prompt_top=4)
        torch.save({"stats": s.state_dict(), "pp": s.per_prompt.state_dict()}, Path(out_dir) / f"collect{rank}.pt")
        d.save(Path(out_dir) / f"diff{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_collection_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    base, ft, sae, prompts = _dist_setup(tmp_path / "tok_single")
    # The workers run at one thread; so does the reference, so that both sides use the same kernels.
    # Shards still batch prompts differently, so float results agree to rounding, not bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        s = collect(base, sae, prompts, scope="response", batch_size=3, latents_per_prompt=[1, 11, 40])
        d = diff_latents(base, ft, sae, prompts, scope="all", batch_size=2, per_prompt_top=4)
    finally:
        torch.set_num_threads(threads)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"collect{rank}.pt")
        g = LatentStats.from_state_dict(got["stats"])
        assert g.n == s.n
        torch.testing.assert_close(g.mean, s.mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g.var, s.var, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g.max, s.max, rtol=1e-6, atol=1e-7)
        assert torch.equal(g.fire_count, s.fire_count)
        assert got["pp"]["prompt_ids"].tolist() == list(range(23))
        torch.testing.assert_close(got["pp"]["sums"], s.per_prompt.sums, rtol=1e-5, atol=1e-6)
        e = LatentDiff.load(tmp_path / f"diff{rank}.safetensors")
        assert e.meta["world_size"] == 2 and e.n_tokens == d.n_tokens
        torch.testing.assert_close(e.delta, d.delta, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(e.base.var, d.base.var, rtol=1e-5, atol=1e-7)
        assert int(e.rank("increase")[0]) == int(d.rank("increase")[0]) == 11
        assert sorted(e.per_prompt.latents.tolist()) == sorted(d.per_prompt.latents.tolist())
        o1, o2 = torch.argsort(e.per_prompt.latents), torch.argsort(d.per_prompt.latents)
        torch.testing.assert_close(e.per_prompt.finetuned_sums[:, o1], d.per_prompt.finetuned_sums[:, o2], rtol=1e-5, atol=1e-6)
        assert torch.equal(e.per_prompt.counts, d.per_prompt.counts)
