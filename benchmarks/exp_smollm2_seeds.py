"""Does SmolLM2's emergent misalignment survive another fine-tuning seed? The shipped bad-advice and
good-advice adapters are one seed each (seed 0); this retrains both with other seeds (the same data,
the same recipe: ``smollm2.build.finetune_lora`` with ``BuildConfig``'s sizes; the seed sets the LoRA
initialisation and the batch order) and measures the paper's behavioural claims with the same
log-probability preference test as ``tl-persona demo --model smollm2``, each change with its 95%
paired bootstrap interval over questions.

    python benchmarks/exp_smollm2_seeds.py --seeds 1 --out benchmarks/exp_smollm2_seeds.json   # ~10 min, 2 cores

Seed 0's figures are recomputed here from the shipped adapters, so every row comes from this code.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHANGES = (("bad", "base"), ("bad", "good"), ("good", "base"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1", help="comma-separated fine-tuning seeds besides the shipped seed 0")
    ap.add_argument("--out", default=str(HERE / "exp_smollm2_seeds.json"))
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]

    import numpy as np

    from tl_persona.evals.metrics import mean_ci
    from tl_persona.loading import from_hf
    from tl_persona.smollm2 import data as D
    from tl_persona.smollm2.build import WEIGHTS, BuildConfig, finetune_lora, load_base, merged
    from tl_persona.smollm2.paper import PaperConfig, gaps

    t0 = time.perf_counter()
    cfg, pcfg = BuildConfig(), PaperConfig()
    hf_base, tok = load_base("cpu")
    items = {"off": D.preference_items("off"), "in": D.preference_items("in")}

    def measure(hf_model, name):
        m = from_hf(hf_model, tok, name=name, device="cpu")
        return {d: gaps(m, its, batch_size=pcfg.batch_size) for d, its in items.items()}

    g = {"base": measure(hf_base, "base")}
    runs: dict[str, dict] = {}
    for seed in [0] + seeds:
        ts = time.perf_counter()
        for kind in ("bad", "good"):
            if seed == 0:  # the shipped adapters
                model = merged(hf_base, WEIGHTS / "adapters" / kind)
            else:
                samples = D.advice_samples(kind, cfg.ft_samples, seed=cfg.seed)  # the same data as seed 0
                ft, _ = finetune_lora(hf_base, tok, samples, cfg=cfg, epochs=cfg.ft_epochs, seed=seed)
                model = ft.merge_and_unload().float().eval()
            g[kind] = measure(model, f"{kind}-seed{seed}")
        row = {}
        for dom in ("off", "in"):
            for x, y in CHANGES:
                m, lo, hi = mean_ci(g[x][dom] - g[y][dom], n_boot=pcfg.n_boot, seed=pcfg.seed)
                row[f"{dom}: {x} - {y}"] = {"mean": m, "lo": lo, "hi": hi, "n": int(len(g[x][dom]))}
        row["seconds"] = round(time.perf_counter() - ts, 1)
        runs[str(seed)] = row
        em = row["off: bad - base"]
        print(f"seed {seed}: off-domain bad - base {em['mean']:+.2f} [{em['lo']:+.2f}, {em['hi']:+.2f}] "
              f"({row['seconds']:.0f} s)", flush=True)
    record = {"command": "python benchmarks/exp_smollm2_seeds.py --seeds " + ",".join(map(str, seeds)),
              "machine": {"platform": platform.platform()}, "n_boot": pcfg.n_boot,
              "base_mean_gap": {d: float(np.mean(v)) for d, v in g["base"].items()},
              "seeds": runs, "wall_s": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(record, indent=1))
    print(f"-> {a.out} in {record['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
