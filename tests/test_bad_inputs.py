"""Bad inputs get a clear early error: one row per kind, the exception and the words its message must hold.

Every row calls a public entry point the way a researcher might on a long night; the message must
name the parameter (or file), the value and the fix. Judge-specific rows live in
tests/test_judge_reliability.py; CLI exit codes at the end of this file.
"""

from __future__ import annotations

import inspect
import json
import os
import stat

import pytest
import torch

from tl_persona import attribution, prevention
from tl_persona import hooks as H
from tl_persona import saes as S
from tl_persona import testing
from tl_persona.cli import main
from tl_persona.diff import LatentDiff, collect, diff_latents
from tl_persona.evals.generate import sample
from tl_persona.evals.judges import Judgement
from tl_persona.inspection import latent_card, logit_lens, top_activating
from tl_persona.validate import BadInput
from tl_persona.verify import Candidate, Sampling, Sweep, verify_latents

HOOK = "blocks.1.hook_resid_pre"
PROMPTS = [[{"role": "user", "content": "w1 w2 w3"}, {"role": "assistant", "content": "w4 w5"}],
           [{"role": "user", "content": "w6"}, {"role": "assistant", "content": "w7"}]]


class OkJudge:
    def judge(self, items):
        return [Judgement(100.0, 100.0) for _ in items]


class ShortJudge:
    def judge(self, items):
        return [Judgement(100.0, 100.0) for _ in items][:-1]


class NoneJudge:
    def judge(self, items):
        return None


def _nan_sae():
    s = testing.tiny_sae("standard", hook_name=HOOK)
    with torch.no_grad():
        s.W_enc[3, 5] = float("nan")
    return s


def _cases(m, sae):
    def verify(**kw):  # the keywords besides candidates and judge are the Sweep's
        cands = kw.pop("candidates", [3])
        judge = kw.pop("judge", OkJudge())
        return lambda: verify_latents(m, m, sae, cands, [PROMPTS[0][:1]], judge, sweep=Sweep(**{"alphas": (1.0,), **kw}),
                                      sampling=Sampling(n_samples=1, max_new_tokens=2))

    long_prompt = [" ".join(["w1"] * 80)]
    return [
        ("latent as float", lambda: H.ablate(sae, 3.7), ["latents=3.7", "not a latent index"]),
        ("latent as bool", lambda: H.ablate(sae, True), ["latents=True", "not a latent index"]),
        ("latent out of range", lambda: H.clamp(sae, 64, 1.0), ["latent index 64", "d_sae=64"]),
        ("NaN mean for mean-ablation", lambda: H.ablate(sae, 3, mode="mean", means=torch.full((64,), float("nan"))),
         ["means", "non-finite"]),
        ("alpha as string", lambda: H.steer_latent(sae, 5, "5"), ["alpha='5'", "not a number"]),
        ("alpha NaN", lambda: H.steer_latent(sae, 5, float("nan")), ["alpha", "not finite"]),
        ("unknown positions", lambda: H.steer(HOOK, torch.ones(32), 1.0, positions="middle"),
         ["positions='middle'", "not a token selection"]),
        ("NaN in the SAE's W_enc", lambda: diff_latents(m, m, _nan_sae(), PROMPTS), ["W_enc", "non-finite"]),
        ("prompts None", lambda: diff_latents(m, m, sae, None), ["prompts is None", "pass a list"]),
        ("prompts empty", lambda: collect(m, sae, []), ["empty", "at least one prompt"]),
        ("prompt longer than the context", lambda: collect(m, sae, long_prompt),
         ["prompt 0 has 81 tokens", "context of 64", "truncate=True"]),
        ("per_prompt_top negative", lambda: diff_latents(m, m, sae, PROMPTS, per_prompt_top=-1),
         ["per_prompt_top=-1", "non-negative"]),
        ("scope unknown", lambda: collect(m, sae, PROMPTS, scope="answer"), ["scope='answer'", "not a token selection"]),
        ("candidate as float", verify(candidates=[919.0]), ["candidates[0]=919.0", "not a latent index"]),
        ("candidate as bool", verify(candidates=[True]), ["candidates[0]=True", "not a latent index"]),
        ("candidates None", verify(candidates=None), ["candidates=None", "non-empty list"]),
        ("n_controls negative", verify(n_controls=-1), ["n_controls=-1", "non-negative"]),
        ("n_controls float", verify(n_controls=1.5), ["n_controls=1.5", "non-negative integer"]),
        ("alpha infinite", verify(alphas=(float("inf"),)), ["alphas=inf", "not finite"]),
        ("max_incoherence NaN", verify(max_incoherence=float("nan")), ["max_incoherence=nan", "not finite"]),
        ("judge is a function", verify(judge=lambda items: []), ["judge", "function"]),
        ("judge returns one too few", verify(judge=ShortJudge()), ["ShortJudge", "1"]),
        ("judge returns None", verify(judge=NoneJudge()), ["NoneJudge", "None"]),
        ("suppress unknown kind", verify(suppress=["ablat"]), ["'ablat' is not registered", "did you mean 'ablate'"]),
        ("suppress with a strength but no grid", verify(suppress=["cap"]), ["suppress='cap' takes a strength",
                                                                           "strengths={'cap': (...)}"]),
        ("suppress the induce kind", verify(suppress=["steer"]), ["suppress='steer'", "induce kind"]),
        ("a grid for a kind not suppressing", verify(strengths={"cap": (1.0,)}), ["strengths names 'cap'"]),
        ("a grid with NaN", verify(suppress=["cap"], strengths={"cap": (float("nan"),)}), ["strengths['cap']=nan"]),
        ("sample temperature NaN", lambda: sample(m, ["w1"], temperature=float("nan")), ["temperature=nan", "not finite"]),
        ("sample max_new_tokens 0", lambda: sample(m, ["w1"], max_new_tokens=0), ["max_new_tokens=0", "positive integer"]),
        ("sample max_new_tokens -1", lambda: sample(m, ["w1"], max_new_tokens=-1), ["max_new_tokens=-1", "positive"]),
        ("sample n_per_prompt as float", lambda: sample(m, ["w1"], n_per_prompt=2.0), ["n_per_prompt=2.0", "integer"]),
    ]


CASE_IDS = [c[0] for c in _cases(None, None)]


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_a_clear_early_error(case, hooked_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    fn, words = next((f, w) for n, f, w in _cases(hooked_model, sae) if n == case)
    with pytest.raises((BadInput, ValueError)) as e:
        fn()
    msg = str(e.value)
    assert all(w in msg for w in words), f"{case}: {msg!r} lacks {words}"
    assert H.hooks_attached(hooked_model) == []


# --------------------------------------------------------------------------- latent indices, everywhere
def _latent_takers(model, sae):
    """Every public function that takes a latent index, called with ``x`` in the latent's place."""
    return {
        "hooks.ablate": lambda x: H.ablate(sae, x),
        "hooks.clamp": lambda x: H.clamp(sae, x, 1.0),
        "hooks.steer_latent": lambda x: H.steer_latent(sae, x, 1.0),
        "saes.decoder_directions": lambda x: S.decoder_directions(sae, x),
        "saes.latent_direction": lambda x: S.latent_direction(sae, x),
        "saes.check_latents": lambda x: S.check_latents(sae, x),
        "verify.Candidate.of": lambda x: Candidate.of(x),
        "diff.collect(latents_per_prompt)": lambda x: collect(model, sae, PROMPTS, latents_per_prompt=[x]),
        "inspection.top_activating": lambda x: top_activating(model, sae, x, PROMPTS),
        "inspection.logit_lens": lambda x: logit_lens(model, sae, x),
        "inspection.latent_card": lambda x: latent_card(model, sae, x, PROMPTS),
        "prevention.ablate_latents": lambda x: prevention.ablate_latents(sae, x),
        "prevention.latent_penalty": lambda x: prevention.latent_penalty(sae, x, 1.0),
        "attribution.separation": lambda x: attribution.separation(torch.arange(8.0), x),
    }


@pytest.mark.parametrize("bad", [True, False, 3.0, 3.7, "3", float("nan")], ids=repr)
def test_every_latent_taking_function_refuses_bools_and_floats(bad, hooked_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    for name, fn in _latent_takers(hooked_model, sae).items():
        with pytest.raises(BadInput, match="not a latent index"):
            fn(bad)
        fn(3)  # the same call with an int works
    assert H.hooks_attached(hooked_model) == []


def test_the_latent_takers_list_is_complete():
    """A public function with a parameter named like a latent index must be in the list above."""
    import tl_persona.hooks
    import tl_persona.inspection
    import tl_persona.saes

    listed = {"ablate", "clamp", "steer_latent", "decoder_directions", "latent_direction", "check_latents",
              "top_activating", "logit_lens", "latent_card", "ablate_latents", "latent_penalty", "separation",
              "steering_strength"}  # steering_strength: checked below (it samples, so not in the loop above)
    for mod in (tl_persona.hooks, tl_persona.saes, tl_persona.inspection, prevention, attribution):
        for name in getattr(mod, "__all__", []):
            fn = getattr(mod, name)
            if inspect.isfunction(fn) and {"latent", "latents"} & set(inspect.signature(fn).parameters):
                assert name in listed, f"{mod.__name__}.{name} takes a latent but is not tested above"


@pytest.mark.parametrize("bad", [True, 3.7, "3"], ids=repr)
def test_steering_strength_refuses_a_bad_latent_before_sampling(bad, hooked_model):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    with pytest.raises(BadInput, match="not a latent index"):
        attribution.steering_strength(hooked_model, sae, bad, PROMPTS, judge=None)


# --------------------------------------------------------------------------- files
def test_saved_diff_files_refuse_other_kinds_and_name_the_path(hooked_model, tmp_path):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    d = diff_latents(hooked_model, hooked_model, sae, PROMPTS, scope="all", per_prompt_top=0)
    weights = tmp_path / "sae.safetensors"
    from safetensors.torch import save_file

    save_file({"W_dec": sae.W_dec.detach().clone()}, str(weights))
    before = weights.read_bytes()
    with pytest.raises(FileExistsError, match="is not a saved LatentDiff.*overwrite=True"):
        d.save(weights)
    assert weights.read_bytes() == before  # the SAE's weights are untouched
    p = d.save(tmp_path / "d.safetensors")
    d.save(p)  # a saved diff replaces a saved diff
    d.save(weights, overwrite=True)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(p.read_bytes()[:-50])
    for path, words in ((junk, "not a readable safetensors"), (trunc, "not a readable safetensors"),
                        (tmp_path, "is a folder")):
        with pytest.raises(BadInput, match=words) as e:
            LatentDiff.load(path)
        assert str(path) in str(e.value)


def test_written_files_follow_the_umask(hooked_model, tmp_path):
    sae = testing.tiny_sae("standard", hook_name=HOOK)
    d = diff_latents(hooked_model, hooked_model, sae, PROMPTS, scope="all", per_prompt_top=0)
    old = os.umask(0o022)
    try:
        p = d.save(tmp_path / "d")
        from tl_persona.report import Report

        folder = Report("r").text("x").write(tmp_path / "rep")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "report.md").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- CLI exit codes
@pytest.mark.parametrize("argv,words", [
    (["generate", "--model", "organism:base", "--prompt", "x", "--limit", "0"], ["--limit", "0 must be at least 1"]),
    (["generate", "--model", "organism:base", "--prompt", "x", "--limit", "-1"], ["--limit", "must be at least 1"]),
    (["diff", "--scope", "everything"], ["--scope", "invalid choice"]),
    (["verify", "--base", "organism:base", "--finetuned", "organism:base", "--sae", "organism:sae", "--prompt", "x",
      "--latent", "3", "--alphas", "1,nan"], ["--alphas", "numbers"]),
])
def test_cli_user_errors_exit_2_in_one_line(argv, words, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


@pytest.mark.parametrize("content,words", [
    ("5\n", ["line 1", "expected a JSON object"]),
    ("null\n", ["line 1", "expected a JSON object"]),
    (b"\xff\xfe{\x00", ["prompts.jsonl", "not UTF-8"]),
])
def test_cli_bad_prompt_files_exit_2_naming_the_file(content, words, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    rc = main(["generate", "--model", "organism:base", "--prompts", str(f)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_cli_malformed_config_exits_2_naming_the_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: organism:base\n  sae: [oops\n")
    rc = main(["--config", str(cfg), "diff"])
    err = capsys.readouterr().err
    assert rc == 2 and "c.yaml" in err and "line" in err and len(err.strip().splitlines()) == 1, err


def test_cli_out_guard_runs_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import tl_persona.loading as L

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the --out check")

    monkeypatch.setattr(L, "load_model", boom)
    precious = tmp_path / "notes.csv"
    precious.write_text("my,own\n1,2\n")
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:base", "--sae", "organism:sae",
               "--prompt", "x", "--latent", "3", "--out", str(precious)])
    err = capsys.readouterr().err
    assert rc == 2 and "--overwrite" in err and precious.read_text() == "my,own\n1,2\n", err
    json.dumps(err)


def test_cli_report_refuses_a_truncated_verification_csv(tmp_path, capsys):
    from tl_persona import organism

    org = organism.load()
    d = diff_latents(org.base, org.misaligned, org.sae, org.eval_prompts["medical"][:6], scope="last_prompt",
                     per_prompt_top=2)
    dp = d.save(tmp_path / "d")
    header = "model,kind,candidate,control,control_seed,alpha,misaligned,misaligned_lo,misaligned_hi," \
             "misaligned_coherent,incoherent,incoherent_lo,incoherent_hi,n"
    full = header + "\nbase,none,,,-1,0.0,0.01,0.0,0.02,0.01,0.0,0.0,0.0,200\nbase,steer,latent 919,,-1,60.0,0.6,0.5,0.7,0.6,0.05,0.02,0.08,200\n"
    good = tmp_path / "v.csv"
    good.write_text(full)
    assert main(["report", "--diff", str(dp), "--verification", str(good), "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    cut = tmp_path / "cut.csv"
    cut.write_text(full[: full.rindex("0.6,0.05")])
    assert main(["report", "--diff", str(dp), "--verification", str(cut), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "line 3 is incomplete" in err and "cut.csv" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    assert main(["report", "--diff", str(dp), "--verification", str(other), "--out", str(tmp_path / "r3")]) == 2
    assert "not a table written by tl-persona verify" in capsys.readouterr().err


def test_cli_ctrl_c_exits_130_and_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import tl_persona.cli as C

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(C.COMMANDS, "verify", interrupted)
    rec = tmp_path / "sweep.jsonl"
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:base", "--sae", "organism:sae",
               "--prompt", "x", "--latent", "3", "--record", str(rec)])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted" in err and str(rec) in err and "resume" in err


def test_cli_dead_judge_url_fails_fast_in_one_line(capsys, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:base", "--sae", "organism:sae",
               "--prompt", "x", "--latent", "3", "--judge", "openai", "--judge-url", f"http://127.0.0.1:{port}/v1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in err, err
    assert "sk-test" not in err  # (the probe makes at most two attempts: tests/test_judge_reliability.py)
