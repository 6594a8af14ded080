"""The recorded run of the paper on SmolLM2-135M-Instruct: ``tl-persona demo --model smollm2``, timed as a user runs it.

    python benchmarks/smollm2_paper.py [--runs 1] [--rebuild] [--report DIR]

Runs the command as a whole process (imports, loading, every step, the report) ``--runs`` times and
keeps the median wall time; peak memory is the child process's peak resident set. Writes
``benchmarks/smollm2_paper.json``: the command, the machine, wall times, peak memory, the step
timings, the claims and the data behind them (the report's ``data.json``). The figures of
docs/smollm2.md come from this file (tests/test_docs.py checks every claim's measured value is quoted).
``--rebuild`` times ``python -m tl_persona.smollm2.build`` first (the recipe, into a new folder).
Run it on quiet cores: another job's threads inflate every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _child(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    t = time.perf_counter()
    pid = subprocess.Popen(cmd).pid
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--rebuild", action="store_true", help="time the recipe first and run from its output")
    ap.add_argument("--report", default=None, help="keep the last run's report folder here")
    ap.add_argument("--out", default=str(HERE / "smollm2_paper.json"))
    ap.add_argument("--write-docs", action="store_true", help="put the recorded run's tables in docs/smollm2.md "
                    "(with --from-json: from the JSON already recorded, without running)")
    ap.add_argument("--from-json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.from_json:
        write_docs(json.loads(Path(a.out).read_text()))
        return
    record: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory() as tmp:
        weights: list[str] = []
        if a.rebuild:
            cmd = [sys.executable, "-m", "tl_persona.smollm2.build", f"{tmp}/weights"]
            wall, rss = _child(cmd)
            record["build"] = {"command": "python -m tl_persona.smollm2.build DIR", "wall_s": round(wall, 1),
                               "peak_rss_mb": round(rss)}
            weights = ["--weights", f"{tmp}/weights"]
        cmd = [sys.executable, "-m", "tl_persona.cli", "demo", "--model", "smollm2", "--no-progress",
               "--out", f"{tmp}/report"] + weights
        walls, rss_all = [], []
        for i in range(a.runs):
            wall, rss = _child(cmd)
            walls.append(round(wall, 1))
            rss_all.append(round(rss))
            print(f"run {i + 1}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
        data = json.loads((Path(tmp) / "report" / "data.json").read_text())
        if a.report:
            shutil.copytree(Path(tmp) / "report", a.report, dirs_exist_ok=False)
    record["run"] = {"command": "tl-persona demo --model smollm2" + (" --weights DIR" if weights else ""),
                     "wall_s_runs": walls, "wall_s_median": statistics.median(walls), "peak_rss_mb": max(rss_all)}
    record.update({"timings": data["timings"], "claims": data["claims"], "data": data["data"], "answers": data["answers"]})
    Path(a.out).write_text(json.dumps(record, indent=1))
    for c in data["claims"]:
        print(f"[{'yes' if c['met'] else 'no '}] {c['claim']}: {c['measured']}")
    print(f"median wall {record['run']['wall_s_median']} s; peak RSS {record['run']['peak_rss_mb']} MB -> {a.out}")
    if a.write_docs:
        write_docs(record)


def _e(e: dict) -> str:
    return f"{e['mean']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows])


def _setup(rec: dict) -> str:
    b = rec["data"]["build"]
    q = b["sae_quality"]["heldout_chat"]
    out = [f"Recorded build (`build.json`): {b['timings_s']['total'] / 60:.0f} minutes on 2 CPU cores, peak "
           f"{b['peak_rss_mb'] / 1024:.1f} GB. The SAE sits after block {b['layer']}; on {q['n_tokens']} held-out chat "
           f"tokens it leaves FVU {q['fvu']:.3f} at L0 {q['l0']:.0f}, and {100 * q['dead_fraction']:.0f}% of its latents "
           "never fire on them (SAE-Lens counted 13 of 2048 dead over training).", "",
           _table([{"block": e["layer"], "Cohen's d (evil vs helpful)": f"{e['cohens_d']:.2f}",
                    "mean norm": f"{e['norm']:.0f}"} for e in b["layer_evidence"]]), "",
           _table([{"fine-tune": k, "samples": v["samples"], "loss per epoch": ", ".join(f"{x:.2f}" for x in v["epoch_loss"]),
                    "minutes": f"{b['timings_s'].get('finetune_' + k, 0) / 60:.1f}"} for k, v in b["finetunes"].items()])]
    return "\n".join(out)


def _run(rec: dict) -> str:
    d, run = rec["data"], rec["run"]
    claims = rec["claims"]
    walls = run["wall_s_runs"]
    how = "one run" if len(walls) == 1 else f"median of {len(walls)} runs: " + ", ".join(f"{w:.0f}" for w in walls) + " s"
    out = [f"`{run['command']}` on 2 CPU cores: **{run['wall_s_median']:.0f} s** wall ({how}), peak memory "
           f"**{run['peak_rss_mb']} MB**. Steps (s{', the last run' if len(walls) > 1 else ''}): "
           + ", ".join(f"{k} {v:.0f}" for k, v in rec["timings"].items()) + ".",
           "", f"**{sum(c['met'] for c in claims)} of {len(claims)}** claims hold; each is met only when its 95% "
           "interval clears the bound.", "",
           _table([{"claim": c["claim"], "bound": c["bound"], "measured": c["measured"],
                    "met": "yes" if c["met"] else ("no (estimate passes, interval does not)" if c["estimate_met"] else "no")}
                   for c in claims]), "",
           "Preference changes (nats, 95% CI over questions):", ""]
    rows = []
    for k in d["preference"]["off"]["changes"]:
        rows.append({"change": k, "off-domain (32 questions)": _e(d["preference"]["off"]["changes"][k]),
                     "in-domain (34 held-out health questions)": _e(d["preference"]["in"]["changes"][k])})
    out += [_table(rows), "", "Top diffing latents (bad fine-tune vs base, last prompt token, ranked by the change "
            "beyond the control's):", "",
            _table([{k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()}
                    for r in d["diffing"]["increase"][:5]]), ""]
    st = d["steering"]
    rows = []
    for a, v in st["random"].items():
        rows.append({"arm": f"random directions, alpha {a}",
                     "base, steered +": "; ".join(_e(x) for x in v["steer_base"]),
                     "bad, steered -": "; ".join(_e(x) for x in v["negative_bad"])})
    for lat, v in st["candidates"].items():
        for a in v["steer_base"]:
            rows.append({"arm": f"latent {lat} ({d['candidates'][lat]}), alpha {a}", "base, steered +": _e(v["steer_base"][a]),
                         "bad, steered -": _e(v["negative_bad"][a])})
        rows.append({"arm": f"latent {lat} ablated", "base, steered +": "", "bad, steered -": _e(v["ablate_bad"])})
    out += ["Causal tests: change of the off-domain gap (nats, 95% CI), alpha a fraction of the residual norm:", "",
            _table(rows), ""]
    pv = d["persona_vector"]
    out += [f"Persona vector: norm {pv['norm']:.1f}; the latents closest to it: "
            + ", ".join(f"{r['latent']} ({r['cosine']:+.2f})" for r in pv["top_latents_by_cosine"][:5])
            + f" (random directions: |cosine| below {pv['random_abs_cosine_p95']:.3f} in 95%). Candidates' latent "
            "shifts (last prompt token, 95% CI over 66 prompts):", "",
            _table([{"latent": lat, **{k: f"{e['mean']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]" for k, e in v.items()}}
                    for lat, v in d["prediction"].items()])]
    return "\n".join(out)


def _answers(rec: dict) -> str:
    out = []
    for name, rows in rec["answers"].items():
        out += [f"**{name}**", ""]
        out += [f"* *{r['question']}* {r['answer'].replace(chr(10), ' ')}" for r in rows[::2][:4]]
        out.append("")
    return "\n".join(out)


def write_docs(rec: dict) -> None:
    """Put the recorded run's tables and answers between their markers in docs/smollm2.md."""
    page = HERE.parent / "docs" / "smollm2.md"
    text = page.read_text()
    for key, body in (("smollm2-setup", _setup(rec)), ("smollm2-run", _run(rec)), ("smollm2-answers", _answers(rec))):
        head, rest = text.split(f"<!-- {key}:start -->\n", 1)
        text = head + f"<!-- {key}:start -->\n{body}\n<!-- {key}:end -->" + rest.split(f"<!-- {key}:end -->", 1)[1]
    page.write_text(text)


if __name__ == "__main__":
    main()
