"""Causal verification sweeps on a tiny model whose 'misalignment' is a known token.

The judge calls an answer misaligned when it contains the token ``w42``; the candidate direction is
that token's unembedding column, so steering along it makes the model say ``w42``. The
'fine-tuned' model is a copy whose last block writes that direction into the residual stream.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tl_persona import hooks as H
from tl_persona.evals.judges import Judgement
from tl_persona.testing import tiny_hooked_transformer, tiny_sae
from tl_persona.verify import Candidate, Execution, Sampling, Sweep, verify_latents

BAD = "w42"


class TokenJudge:
    """Misaligned = the answer says w42; incoherent = the answer is empty."""

    def __init__(self) -> None:
        self.calls = 0

    def judge(self, items):
        self.calls += len(items)
        return [
            Judgement(aligned=0.0 if BAD in it.answer.split() else 100.0,
                      coherent=100.0 if it.answer else 0.0,
                      label="bad" if BAD in it.answer.split() else "ok")
            for it in items
        ]


def planted_pair(tokenizer):
    """A base model and a 'fine-tune' whose last block writes the unit unembedding direction ``u`` of
    the bad token into the stream (so steering along ``u`` makes the base model say it)."""
    base = tiny_hooked_transformer(tokenizer, seed=1)
    u = base.W_U[:, base.tokenizer.convert_tokens_to_ids(BAD)].detach().clone()
    u = u / u.norm()
    ft = copy.deepcopy(base)
    with torch.no_grad():
        ft.blocks[2].mlp.b_out += 40.0 * u
    return base, ft, u


@pytest.fixture(scope="module")
def setup(tiny_word_tokenizer):
    base, ft, u = planted_pair(tiny_word_tokenizer)
    sae = tiny_sae("standard", d_in=32, d_sae=64, hook_name="blocks.2.hook_resid_pre")
    with torch.no_grad():
        sae.W_dec[7] = u  # latent 7 is the 'persona' latent
    prompts = [[{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}] for i in range(1, 9)]
    return base, ft, sae, prompts


def test_verify_finds_the_causal_latent_and_controls_stay_flat(setup, tmp_path):
    base, ft, sae, prompts = setup
    judge = TokenJudge()
    record = tmp_path / "sweep.jsonl"
    v = verify_latents(base, ft, sae, [7, 3], prompts, judge, sweep=Sweep(alphas=(2.0, 100.0), n_controls=2),
                       sampling=Sampling(n_samples=4, max_new_tokens=4, positions="all", n_boot=200),
                       execution=Execution(record=record))
    assert H.hooks_attached(base) == [] and H.hooks_attached(ft) == []
    s = v.summary().set_index("candidate")
    assert v.chosen_alpha == {"latent 7": 100.0, "latent 3": 100.0}
    assert s.loc["latent 7", "base"] < 0.2
    assert s.loc["latent 7", "base_steered"] > 0.6
    assert s.loc["latent 7", "random_steered_max"] < 0.2
    # the planted fine-tune says w42 in about 70% of its answers (measured over 1600 of them); with 32
    # answers per setting the rate is pinned as "clearly above the base model", not as a number
    assert s.loc["latent 7", "finetuned"] > 0.5
    assert s.loc["latent 7", "finetuned_neg_steered"] < 0.1
    assert s.loc["latent 3", "base_steered"] < 0.2
    table = v.table()
    # base/ft unmodified + 2 candidates x 2 alphas (base) and x 2 betas (fine-tune)
    # + per candidate: 2 base controls, 2 negative-steer controls, 1 ablation
    assert len(table) == 2 + 4 + 4 + 2 * (2 + 2 + 1)
    assert v.chosen_beta["latent 7"] == 100.0
    assert set(table["kind"]) == {"none", "steer", "ablate"}
    assert ((table["misaligned_lo"] <= table["misaligned"]) & (table["misaligned"] <= table["misaligned_hi"])).all()
    assert len(record.read_text().splitlines()) == len(table)

    # resumable: a re-run with the same record runs no setting again
    calls = judge.calls
    v2 = verify_latents(base, ft, sae, [7, 3], prompts, judge, sweep=Sweep(alphas=(2.0, 100.0), n_controls=2),
                        sampling=Sampling(n_samples=4, max_new_tokens=4, positions="all", n_boot=200),
                        execution=Execution(record=record))
    assert judge.calls == calls
    assert v2.table().equals(table)


def test_incoherence_bound_picks_alpha(setup):
    base, ft, sae, prompts = setup

    class StrictJudge(TokenJudge):
        def judge(self, items):  # steering hard makes answers "incoherent" (all w42)
            out = super().judge(items)
            return [Judgement(j.aligned, 0.0 if it.answer.split().count(BAD) >= 2 else j.coherent, j.label)
                    for it, j in zip(items, out)]

    v = verify_latents(base, ft, sae, [7], prompts, StrictJudge(), sweep=Sweep(alphas=(1.0, 100.0), n_controls=1, suppress=()),
                       sampling=Sampling(n_samples=2, max_new_tokens=4, positions="all", n_boot=100))
    assert v.chosen_alpha["latent 7"] == 1.0
    assert v.get("base", "steer", "latent 7", alpha=100.0).incoherent.value > 0.1


def test_multi_latent_and_custom_direction_candidates(setup):
    base, ft, sae, prompts = setup
    u = sae.W_dec.detach()[7].clone()
    cands = [[7, 3], ("unembed w42", u), Candidate("set", (7,))]
    v = verify_latents(base, ft, sae, cands, prompts[:4], TokenJudge(), sweep=Sweep(alphas=(100.0,), n_controls=1),
                       sampling=Sampling(n_samples=2, max_new_tokens=3, positions="all", n_boot=100))
    names = set(v.summary()["candidate"])
    assert names == {"latents 7+3", "unembed w42", "set"}
    assert v.get("base", "steer", "unembed w42").misaligned.value > 0.6
    assert "ablate" not in set(v.table().query("candidate == 'unembed w42'")["kind"])


def test_verify_errors(setup, tmp_path):
    base, ft, sae, prompts = setup
    with pytest.raises(ValueError, match="at least one prompt"):
        verify_latents(base, ft, sae, [7], [], TokenJudge())
    with pytest.raises(ValueError, match="alphas=-1 must be > 0"):
        Sweep(alphas=(-1.0,))
    with pytest.raises(ValueError, match="out of range"):
        verify_latents(base, ft, sae, [640], prompts, TokenJudge())
    rec = tmp_path / "r.jsonl"
    rec.write_text(json.dumps({"fingerprint": "other", "result": {}}) + "\n")
    with pytest.raises(ValueError, match="other settings"):
        verify_latents(base, ft, sae, [7], prompts, TokenJudge(), sweep=Sweep(alphas=(1.0,)),
                       sampling=Sampling(n_samples=1, max_new_tokens=2), execution=Execution(record=rec))


# ------------------------------------------------------------------ per-setting seeds, sweeps across ranks
_SWEEP = Sweep(alphas=(2.0, 100.0), n_controls=1)


def _sampling(batch_size):
    return Sampling(n_samples=2, max_new_tokens=3, positions="all", n_boot=50, seed=3, batch_size=batch_size)


def _rows(v, candidate):
    t = v.table()
    return t[t["candidate"].isin(["", candidate])].reset_index(drop=True)


def test_a_setting_does_not_depend_on_the_settings_that_share_its_batches(setup):
    """Each answer draws from a stream seeded by the stage seed, the setting and its prompt and
    sample index: dropping a candidate (other rows in the batches), another batch size or a resumed
    sweep leave every remaining setting's answers as they were."""
    base, ft, sae, prompts = setup
    both = verify_latents(base, ft, sae, [7, 3], prompts[:4], TokenJudge(), sweep=_SWEEP, sampling=_sampling(64))
    one = verify_latents(base, ft, sae, [7], prompts[:4], TokenJudge(), sweep=_SWEEP, sampling=_sampling(5))
    assert _rows(both, "latent 7").equals(_rows(one, "latent 7"))


def _dist_sweep(base, ft, sae, prompts, record):
    return verify_latents(base, ft, sae, [7, 3], prompts, TokenJudge(), sweep=_SWEEP, sampling=_sampling(16),
                          execution=Execution(record=record))


def _dist_worker(rank, world, init_file, out_dir):
    import pickle
    from pathlib import Path

    import torch.distributed as dist

    from tl_persona import testing

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = Path(out_dir)
        base, ft, sae, prompts = _setup(testing.word_tokenizer(folder=out / f"tok{rank}"))
        v = _dist_sweep(base, ft, sae, prompts, out / "record.jsonl")  # rank 0 alone writes it
        (out / f"table{rank}.pkl").write_bytes(pickle.dumps((v.table(), v.chosen_alpha, v.chosen_beta)))
    finally:
        dist.destroy_process_group()


def _setup(tokenizer):
    base, ft, u = planted_pair(tokenizer)
    sae = tiny_sae("standard", d_in=32, d_sae=64, hook_name="blocks.2.hook_resid_pre")
    with torch.no_grad():
        sae.W_dec[7] = u
    prompts = [[{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}] for i in range(1, 6)]
    return base, ft, sae, prompts


def test_two_process_gloo_sweep_equals_single_process(tmp_path, tiny_word_tokenizer):
    """A sweep over 2 gloo ranks returns, on every rank, exactly the table of one process (settings
    split round-robin, results gathered); only rank 0 writes the record, line for line the same."""
    import pickle

    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' kernels
    try:
        base, ft, sae, prompts = _setup(tiny_word_tokenizer)
        single = _dist_sweep(base, ft, sae, prompts, tmp_path / "single.jsonl")
    finally:
        torch.set_num_threads(threads)
    table = single.table()
    assert len(table) == 2 + 4 + 4 + 2 * (1 + 1 + 1)
    for rank in (0, 1):
        t, alpha, beta = pickle.loads((tmp_path / f"table{rank}.pkl").read_bytes())
        assert t.equals(table), rank
        assert alpha == single.chosen_alpha and beta == single.chosen_beta
    assert (tmp_path / "record.jsonl").read_text() == (tmp_path / "single.jsonl").read_text()
    # the record the ranks wrote resumes a one-process sweep: nothing is run again
    judge = TokenJudge()
    again = verify_latents(base, ft, sae, [7, 3], prompts, judge, sweep=_SWEEP, sampling=_sampling(16),
                           execution=Execution(record=tmp_path / "record.jsonl"))
    assert judge.calls == 0 and again.table().equals(table)


# ------------------------------------------------------------------ a kind with a strength: capping
def test_a_kind_with_a_strength_sweeps_its_grid_and_keeps_the_most_suppressing(tiny_word_tokenizer):
    """Capping the planted direction on the fine-tune (after the block that writes it) runs over its
    grid of ceilings through the unchanged sweep: a ceiling above every projection changes nothing, a
    ceiling of 0 removes the behaviour, the sweep keeps 0 and gives it columns, interval and controls."""
    base, ft, u = planted_pair(tiny_word_tokenizer)
    sae = tiny_sae("standard", d_in=32, d_sae=64, hook_name="blocks.2.hook_resid_post")
    with torch.no_grad():
        sae.W_dec[7] = u
    prompts = [[{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}] for i in range(1, 9)]
    v = verify_latents(base, ft, sae, [7], prompts, TokenJudge(),
                       sweep=Sweep(alphas=(100.0,), suppress=("ablate", "cap"), strengths={"cap": (1e4, 0.0)},
                                   n_controls=2),
                       sampling=Sampling(n_samples=4, max_new_tokens=4, positions="all", n_boot=100))
    assert v.chosen_strength == {"cap": {"latent 7": 0.0}}
    row = v.summary().iloc[0]
    assert row["finetuned"] > 0.5 and row["finetuned_capped"] < 0.1 and row["capped_strength"] == 0.0
    assert v.get("finetuned", "cap", "latent 7", alpha=1e4).misaligned.value > 0.5  # above every projection
    assert row["finetuned_capped_lo"] <= row["finetuned_capped"] <= row["finetuned_capped_hi"]
    assert row["capped_suppression_hi"] < 0.5 and row["random_capped_pooled"] > 0.5  # random ceilings do not cut
    assert len(v.controls("finetuned", "latent 7", "cap")) == 2
    assert {"ablated_suppression", "finetuned_capped_incoherent_hi"} <= set(row.index)
    assert H.hooks_attached(ft) == []
