"""Persona vectors, prediction across fine-tunes and data screening on Persona World (issue #14).

One run measures every goal of docs/vectors.md and writes the figures as JSON:

* prediction: fine-tunes over domains x bad-data fractions (+ 0%-bad controls over seeds); Pearson
  and Spearman r (bootstrap CIs) of the toxic latent's and the persona vector's shift against the
  off-domain toxic rate; how early each flags;
* screening: AUROC of the three sample scores for the toxic samples hidden in mixed datasets;
* dataset ranking: Spearman of each candidate fine-tuning set's screening score (computed on the base
  model before training) against the off-domain toxic rate its fine-tune actually causes.

    python benchmarks/exp_persona_vectors.py --out exp_persona_vectors.json            # full size
    python benchmarks/exp_persona_vectors.py --small --out /tmp/small.json            # a few minutes

Run it on one thread (it sets torch.set_num_threads(1)).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="exp_persona_vectors.json")
    ap.add_argument("--small", action="store_true", help="2 domains x 3 fractions, for a smoke run")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--behaviour", default="mass", choices=["mass", "sampled"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from tl_persona import organism
    from tl_persona.screening import screen
    from tl_persona.series import (SeriesResult, correlation, mixed_dataset, organism_finetunes, organism_instruments,
                                   organism_response_vector, organism_series)

    t0 = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - t0:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    org = organism.load()
    latent, vector = organism_instruments(org)
    log(f"toxic latent {latent}; {vector!r}")
    if args.small:
        domains, fractions, controls = ("code", "medical"), (0.0, 0.25, 1.0), (0,)
        extra = [("code", "sarcastic", 1.0, 0)]
    else:
        domains, fractions, controls = ("code", "medical", "finance", "cars"), (0.0, 0.05, 0.25, 0.5, 1.0), (0, 1)
        extra = [(d, p, 1.0, 0) for d in domains for p in ("sarcastic", "wrong")]

    # screening of mixed datasets (sample level): toxic samples hidden among helpful ones
    # (each domain screened with the response vector built without that domain's answers)
    rvec = {dom: organism_response_vector(org, exclude_domain=dom) for dom in domains}
    aurocs = {}
    for dom in domains:
        convs, y = mixed_dataset(org.world, domain=dom, bad_fraction=0.1, n_samples=300, seed=7)
        sc = screen(org.base, convs, sae=org.sae, latent=latent, vector=rvec[dom], base="sample", labels=y, batch_size=64)
        aurocs[dom] = {k: sc.auroc_ci(k) for k in ("latent", "projection", "projection_difference")}
        log(f"screening {dom}: {aurocs[dom]}")

    fts = organism_finetunes(org, domains=domains, fractions=fractions, seeds=(0,), control_seeds=controls,
                             extra=extra, steps=args.steps, lr=args.lr, screen_with=(rvec, org.sae, latent),
                             progress=log)
    log("fine-tunes done; measuring")
    res = organism_series(org, fts, latent=latent, vector=vector, behaviour=args.behaviour)
    toxic_rows = [r for r in res.rows if r["persona"] == "toxic"]
    series = SeriesResult(toxic_rows, res.base_behaviour, res.meta)
    summ = series.summary(n_boot=2000)
    ranking = {}
    for key in ("dataset_projection_difference", "dataset_projection", "dataset_latent"):
        c = correlation([r[key] for r in res.rows], [r["behaviour"] for r in res.rows], n_boot=2000)
        ranking[key] = c.__dict__
    out = {"command": "python benchmarks/exp_persona_vectors.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "settings": {"steps": args.steps, "lr": args.lr, "n_samples": 300, "behaviour": args.behaviour,
                        "domains": domains, "fractions": fractions, "control_seeds": controls, "extra": extra},
           "latent": latent, "vector": vector.to_dict(), "base_behaviour": res.base_behaviour,
           "prediction": summ, "screening_auroc": aurocs,
           "screening_auroc_min": {k: min(a[k][0] for a in aurocs.values()) for k in next(iter(aurocs.values()))},
           "screening_auroc_lo_min": {k: min(a[k][1] for a in aurocs.values()) for k in next(iter(aurocs.values()))},
           "dataset_ranking": ranking, "n_candidate_sets": len(res.rows), "rows": res.to_rows(),
           "seconds": round(time.perf_counter() - t0, 1)}
    from tl_persona.provenance import atomic_write_text

    atomic_write_text(args.out, json.dumps(out, indent=1, default=float))
    print(json.dumps({k: out[k] for k in ("prediction", "screening_auroc_min", "screening_auroc_lo_min",
                                          "dataset_ranking", "seconds")},
                     indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
