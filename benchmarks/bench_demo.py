"""Time `tl-persona demo` as a user would: the whole process (imports, load, every step, the
report), three times each for --quick and the full run, and report the medians.

    python benchmarks/bench_demo.py [--runs 3] [--only quick|full]

Figures go into the README and benchmarks/README.md. Run it on a quiet machine: on shared cores
torch's threads spin-wait on each other and every figure inflates several-fold.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_once(quick: bool) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        cmd = [sys.executable, "-m", "tl_persona.cli", "demo", "--no-progress", "--out", str(out)] + (["--quick"] if quick else [])
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        data = json.loads((out / "data.json").read_text())
        return wall, {"timings": data["timings"], "claims_met": sum(c["met"] for c in data["claims"]),
                      "claims": len(data["claims"])}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["quick", "full"])
    a = ap.parse_args()
    for mode in ("quick", "full"):
        if a.only and a.only != mode:
            continue
        walls, last = [], {}
        for i in range(a.runs):
            w, last = time_once(mode == "quick")
            walls.append(w)
            print(f"{mode} run {i + 1}: {w:.1f} s  ({last['claims_met']}/{last['claims']} claims met)", flush=True)
        print(f"{mode}: median {statistics.median(walls):.1f} s of {a.runs} ({', '.join(f'{w:.1f}' for w in walls)}); "
              f"steps of the last run: {last['timings']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
