"""Activation capping along the toxic-persona direction on Persona World, beside negative steering
and ablation (issue #28): the capping kind verified through the unchanged verification sweep.

The misaligned organism's off-domain answers under each suppressing kind at its chosen strength
(the sweep's choice: the most suppressing setting whose incoherence's 95% upper bound is at most
10%), with the cut against the unmodified fine-tune and random-direction controls; then the same
arms on the fine-tuned domain's own prompts (code), where the narrow fine-tune's persona should stay,
and the chosen cap on the base model. Every rate carries its 95% interval (Wilson; Katz for ratios).

    python benchmarks/exp_capping.py --out benchmarks/exp_capping.json     # about a minute, one thread
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch

THRESHOLDS = (0.5, -1.0, -2.5, -4.0)  # capping's grid, mildest first (0.5: the base model's highest prompt-token projection)


def _projections(org, model, convs, u, scope):
    from tl_persona.data import PromptSet

    tp = PromptSet.from_list(convs).tokenize(model)
    pb = tp.make_batch(np.arange(len(tp)))
    with torch.no_grad():
        acts = model.run_with_cache(pb.tokens, names_filter=org.hook_name)[1][org.hook_name]
    return (acts[pb.mask(scope)] @ u).numpy()


def _rate(hits: int, n: int) -> dict:
    from tl_persona.evals.metrics import wilson

    w = wilson(hits, n)
    return {"rate": w.value, "lo": w.lo, "hi": w.hi, "n": n}


def _cut(r, ft0) -> dict:
    """1 - (rate under the intervention / unmodified rate), with the Katz interval of the ratio."""
    from tl_persona.evals.metrics import ratio_ci

    hits = lambda x: int(round(x.value * x.n))  # noqa: E731
    q = ratio_ci(hits(r), r.n, hits(ft0), ft0.n)
    return {"cut": 1 - q.value, "lo": 1 - q.hi, "hi": 1 - q.lo}


def _in_domain(org, hooks, n: int) -> dict:
    from tl_persona import organism

    r = organism.measure(org.misaligned, {org.trained_domain: org.eval_prompts[org.trained_domain]}, n_per_domain=n,
                         seed=0, fwd_hooks=hooks, max_new_tokens=16)[org.trained_domain].to_dict()
    return {"toxic": _rate(int(round(r["toxic"] * r["n"])), int(r["n"])),
            "incoherent": _rate(int(round(r["incoherent"] * r["n"])), int(r["n"]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="exp_capping.json")
    ap.add_argument("--prompts", type=int, default=120, help="off-domain prompts in the sweep")
    ap.add_argument("--samples", type=int, default=4, help="answers per prompt and setting")
    ap.add_argument("--in-domain", type=int, default=400, help="answers on the fine-tuned domain's prompts per arm")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from tl_persona import interventions as I
    from tl_persona import organism
    from tl_persona.provenance import atomic_write_text
    from tl_persona.series import organism_instruments
    from tl_persona.verify import Sampling, Sweep, verify_latents

    t0 = time.time()
    org = organism.load()
    latent, _ = organism_instruments(org)
    u = org.sae.W_dec[latent].detach().float()
    unit = u / u.norm()
    other = [p for d in org.eval_prompts if d != org.trained_domain for p in org.eval_prompts[d]]
    proj = {m: _projections(org, model, other, unit, "last_prompt") for m, model in
            (("base", org.base), ("misaligned", org.misaligned))}
    prompts = random.Random(0).sample(other, min(args.prompts, len(other)))
    sweep = Sweep(alphas=(40.0, 50.0, 60.0), betas=(10.0, 20.0, 30.0), suppress=("ablate", "cap"),
                  strengths={"cap": THRESHOLDS}, n_controls=5, choose_by="upper")
    sampling = Sampling(n_samples=args.samples, max_new_tokens=16, positions="prompt", seed=0, batch_size=512)
    ver = verify_latents(org.base, org.misaligned, org.sae, [latent], prompts, org.judge, sweep=sweep, sampling=sampling)
    cand = f"latent {latent}"
    ft0 = ver.unmodified("finetuned")
    target = I.Target(org.hook_name, u, org.sae, (latent,), "prompt")
    arms = {"negative steering": (I.STEERING.name, ver.chosen("finetuned", I.STEERING.name, cand)),
            "ablation": (I.ABLATION.name, 0.0), "capping": (I.CAPPING.name, ver.chosen("finetuned", I.CAPPING.name, cand))}
    out = {"latent": latent, "hook": org.hook_name, "thresholds": list(THRESHOLDS),
           "last_prompt_projection": {m: {"mean": float(x.mean()), "p10": float(np.percentile(x, 10)),
                                          "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
                                          "max": float(x.max())} for m, x in proj.items()},
           "threshold_base_percentile": {str(t): float((proj["base"] <= t).mean()) for t in THRESHOLDS},
           "off_domain": {"prompts": len(prompts), "answers_per_setting": ft0.n,
                          "unmodified": _rate(int(round(ft0.misaligned.value * ft0.n)), ft0.n),
                          "base": _rate(int(round(ver.unmodified("base").misaligned.value * ft0.n)), ft0.n)},
           "cap_grid": {str(s.setting.alpha): {"toxic": [s.misaligned.value, s.misaligned.lo, s.misaligned.hi],
                                               "incoherent": [s.incoherent.value, s.incoherent.hi]}
                        for s in ver.results if s.setting.kind == I.CAPPING.name and s.setting.control < 0},
           "arms": {}, "in_domain": {"unmodified": _in_domain(org, [], args.in_domain)}}
    for name, (kind, strength) in arms.items():
        r = ver.get("finetuned", kind, cand, alpha=strength)
        ctl = ver.controls("finetuned", cand, kind) if kind != I.ABLATION.name else []
        out["arms"][name] = {
            "kind": kind, "strength": strength, "toxic": [r.misaligned.value, r.misaligned.lo, r.misaligned.hi],
            "cut": _cut(r.misaligned, ft0.misaligned), "incoherent": [r.incoherent.value, r.incoherent.lo, r.incoherent.hi],
            "random_controls_toxic": ([float(np.mean([c.misaligned.value for c in ctl])), len(ctl)] if ctl else None),
        }
        out["in_domain"][name] = _in_domain(org, I.get(kind).build(target, strength), args.in_domain)
    from tl_persona.organism import measure

    cap = arms["capping"][1]
    base_capped = measure(org.base, {d: org.eval_prompts[d] for d in org.eval_prompts if d != org.trained_domain},
                          n_per_domain=200, seed=0, fwd_hooks=I.get("cap").build(target, cap), max_new_tokens=16)
    base_plain = measure(org.base, {d: org.eval_prompts[d] for d in org.eval_prompts if d != org.trained_domain},
                         n_per_domain=200, seed=0, max_new_tokens=16)
    for key, rates in (("base_capped", base_capped), ("base_unmodified", base_plain)):
        n = sum(r.to_dict()["n"] for r in rates.values())
        hits = {k: sum(int(round(r.to_dict()[k] * r.to_dict()["n"])) for r in rates.values()) for k in ("toxic", "incoherent")}
        out[key] = {k: _rate(v, n) for k, v in hits.items()}
    out["summary"] = ver.summary().to_dict(orient="records")
    out["seconds"] = round(time.time() - t0, 1)
    atomic_write_text(args.out, json.dumps(out, indent=1, default=float) + "\n")
    print(json.dumps({k: out[k] for k in ("off_domain", "arms", "in_domain", "base_capped", "base_unmodified")}, indent=1,
                     default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
