"""The tl-persona CLI end to end: on a tiny TransformerBridge saved to a local folder, and on the organism."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from tl_persona.cli import build_parser, main
from tl_persona.diff import LatentDiff
from tl_persona.testing import tiny_bridge, tiny_sae, word_tokenizer


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tok = word_tokenizer()
    tiny_bridge(root / "base", tok, seed=0)
    tiny_bridge(root / "ft", tok, seed=1)
    tiny_sae("topk", d_in=32, d_sae=64, k=8, hook_name="blocks.1.hook_resid_pre").save_model(root / "sae")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}]}) + "\n"
                               for i in range(1, 13)))
    return root


def _common(local):
    return ["--model-class", "bridge", "--device", "cpu", "--sae", str(local / "sae"), "--prompts", str(local / "prompts.jsonl")]


def test_help_on_every_command():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "diff", "inspect", "generate", "verify", "report", "run", "screen", "predict"} <= set(commands)
    for name in commands:
        out = subprocess.run([sys.executable, "-m", "tl_persona.cli", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: tl-persona" in out.stdout, out.stderr


def test_diff_inspect_report_on_a_local_bridge(local, capsys, tmp_path):
    out = tmp_path / "diff"
    rc = main(["diff", "--base", str(local / "base"), "--finetuned", str(local / "ft"), *_common(local),
               "--scope", "all", "--top", "3", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "top 3 latents by increase" in text and "top 3 latents by decrease" in text
    saved = list(tmp_path.glob("diff*"))
    assert saved, "diff was not saved"
    diff_path = str(out)
    rc = main(["inspect", "--model", str(local / "base"), *_common(local), "--diff", diff_path, "--top", "2", "-k", "2"])
    cards = capsys.readouterr().out
    from tl_persona.diff import LatentDiff

    top2 = [int(i) for i in LatentDiff.load(diff_path).top(2, "increase").index]
    assert rc == 0 and cards.count("### Latent ") == 2
    assert all(f"### Latent {i} " in cards for i in top2)
    rc = main(["report", "--diff", diff_path, "--out", str(tmp_path / "rep")])
    assert rc == 0 and (tmp_path / "rep" / "report.html").exists()
    assert "Top 10 latents by increase" in (tmp_path / "rep" / "report.md").read_text()


def test_generate_with_interventions_on_a_local_bridge(local, tmp_path):
    out = tmp_path / "answers.jsonl"
    rc = main(["generate", "--model", str(local / "base"), *_common(local), "--limit", "3", "--n", "2",
               "--steer", "5:4.0", "--ablate", "3", "--clamp", "7:1.5", "--max-new-tokens", "4", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and {r["sample"] for r in rows} == {0, 1}


def test_verify_on_a_local_bridge(local, tmp_path, capsys):
    out = tmp_path / "verify.csv"
    rc = main(["verify", "--base", str(local / "base"), "--finetuned", str(local / "ft"), *_common(local),
               "--latent", "5", "--alphas", "2,8", "--n-samples", "1", "--n-controls", "1", "--limit", "4",
               "--max-new-tokens", "3", "--judge", "organism", "--record", str(tmp_path / "rec.jsonl"), "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    assert set(table["kind"]) == {"none", "steer", "ablate"} and len(table) == 2 + 2 + 2 + 1 + 1 + 1


def test_config_file_and_errors(local, tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"base: {local / 'base'}\nfinetuned: {local / 'ft'}\nmodel_class: bridge\nsae: {local / 'sae'}\n"
                   f"prompts: {local / 'prompts.jsonl'}\nscope: all\ntop: 2\n")
    assert main(["--config", str(cfg), "diff"]) == 0
    assert "top 2 latents by increase" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("nonsense_option: 1\ntopp: 3\n")
    for argv, words in (
        (["--config", str(bad), "diff"], ["unknown option", "'topp' (did you mean 'top'?)"]),
        (["diff", "--sae", str(local / "sae")], ["missing --base"]),
        (["generate", "--model", str(local / "base"), *_common(local), "--steer", "5"], ["LATENT:NUMBER"]),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(w in err for w in words), err


def test_offline_hub_error_says_how_to_pass_local_paths(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["generate", "--model", "gpt2", "--prompt", "hello"])
    err = capsys.readouterr().err
    assert rc == 2 and "hub is not reachable" in err and "local path" in err


def test_cli_on_the_organism(tmp_path, capsys):
    rc = main(["diff", "--base", "organism:base", "--finetuned", "organism:misaligned", "--sae", "organism:sae",
               "--prompts", "organism:eval:medical,finance", "--top", "3", "--out", str(tmp_path / "d")])
    assert rc == 0 and "top 3 latents by increase" in capsys.readouterr().out
    rc = main(["generate", "--model", "organism:misaligned", "--sae", "organism:sae", "--prompts", "organism:eval:medical",
               "--limit", "4", "--ablate", "0", "--max-new-tokens", "8"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(lines) == 4 and all("answer" in json.loads(x) for x in lines)
    rc = main(["inspect", "--model", "organism:base", "--sae", "organism:sae", "--prompts", "organism:eval:medical",
               "--diff", str(tmp_path / "d"), "--top", "1", "-k", "3"])
    card = capsys.readouterr().out
    top = int(LatentDiff.load(tmp_path / "d").top(1, "increase").index[0])
    assert rc == 0 and card.count("### Latent ") == 1 and f"### Latent {top} " in card and "Logit lens" in card
    rc = main(["verify", "--base", "organism:base", "--finetuned", "organism:misaligned", "--sae", "organism:sae",
               "--prompts", "organism:eval:medical", "--limit", "8", "--diff", str(tmp_path / "d"), "--top", "1",
               "--alphas", "30", "--betas", "10,20", "--n-samples", "1", "--n-controls", "1", "--max-new-tokens", "8",
               "--out", str(tmp_path / "v.csv")])
    assert rc == 0 and "base_steered" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "v.csv")
    steer = table[table["kind"] == "steer"]
    assert set(steer[steer["model"] == "base"]["alpha"]) == {30.0}
    assert set(steer[(steer["model"] == "finetuned") & (steer["control"] != "random")]["alpha"]) == {-10.0, -20.0}
    rc = main(["report", "--diff", str(tmp_path / "d"), "--verification", str(tmp_path / "v.csv"), "--top", "3",
               "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert rc == 0 and "Causal verification" in md and f"| {top} |" in md and "organism:misaligned" in md


@pytest.fixture(scope="module")
def lora(local):
    """A LoRA adapter (non-zero, on attention and MLP) over the local base, saved as peft does,
    and the merged Hugging Face model as the reference."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(3)
    hf = GPT2LMHeadModel.from_pretrained(str(local / "base"))
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                          init_lora_weights=False)
    model = peft.get_peft_model(hf, cfg)
    model.save_pretrained(local / "lora")
    return local / "lora", model.merge_and_unload().eval()


def test_lora_adapter_folder_is_merged_into_its_local_base(local, lora):
    import torch

    from tl_persona.loading import load_model

    folder, merged = lora
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(local / "base")
    bridge = load_model(str(folder), model_class="bridge", device="cpu")
    base = load_model(str(local / "base"), model_class="bridge", device="cpu")
    tokens = torch.tensor([[1, 5, 9, 12, 7, 3]])
    with torch.no_grad():
        want = merged(tokens).logits
        got, before = bridge(tokens), base(tokens)
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - before).abs().max() > 1e-2  # the adapter really changed the model


def test_diff_against_a_lora_fine_tune(local, lora, capsys, tmp_path):
    rc = main(["diff", "--base", str(local / "base"), "--finetuned", str(lora[0]), *_common(local), "--scope", "all",
               "--top", "2", "--out", str(tmp_path / "d")])
    assert rc == 0 and "top 2 latents by increase" in capsys.readouterr().out
    from tl_persona.diff import LatentDiff

    d = LatentDiff.load(tmp_path / "d")
    assert d.meta["finetuned"]["source"] == str(lora[0]) and float(d.delta.abs().max()) > 0


def test_lora_without_peft_says_how_to_install_it(local, lora, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *a, **k):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    rc = main(["generate", "--model", str(lora[0]), "--model-class", "bridge", "--device", "cpu", "--prompt", "w1 w2"])
    err = capsys.readouterr().err
    assert rc == 2 and str(lora[0]) in err and "pip install peft" in err


def test_demo_options_of_one_model_are_refused_with_the_other(tmp_path, capsys):
    """`demo` takes the organism's options or SmolLM2's, never a mix: one line, exit 2, before any work."""
    out = str(tmp_path / "r")
    for argv, words in (
        (["demo", "--rebuild", "--out", out], ["--model smollm2"]),
        (["demo", "--tiny", "--out", out], ["--model smollm2"]),
        (["demo", "--judge", "openai", "--out", out], ["--model smollm2"]),
        (["demo", "--model", "smollm2", "--quick", "--out", out], ["--tiny"]),
        (["demo", "--model", "smollm2", "--rebuild", "--weights", out, "--out", out], ["drop --weights"]),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert all(w in err for w in words), err
    assert not (tmp_path / "r").exists()
