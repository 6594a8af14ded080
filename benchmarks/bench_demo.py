"""Time `tl-persona demo` as a user would: the whole process (imports, load, every step, the
report), three times each for --quick and the full run, and report the medians.

    python benchmarks/bench_demo.py [--runs 3] [--only quick|full]
    python benchmarks/bench_demo.py --busy --only quick [--compare-threads 2]

``--busy`` measures the demo alone and beside one busy process (a Python busy loop, the kind of
neighbour a shared machine has), taking turns, and prints busy/alone (target <= 1.5: the demo must
not collapse when another process wants a core). The demo picks its threads itself
(:mod:`tl_persona.threads`: one for the organism's width); ``--compare-threads N`` repeats both
with ``OMP_NUM_THREADS=N`` (the user's choice wins, so N = the number of cores is torch's default,
the behaviour before the choice).

Figures go into the README and benchmarks/README.md. Run it on a quiet machine: on shared cores
torch's threads spin-wait on each other and every figure inflates several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def time_once(quick: bool, env: dict[str, str] | None = None, busy: bool = False) -> tuple[float, dict]:
    """One whole `tl-persona demo` process; with ``busy`` beside a Python busy loop (started first,
    killed after)."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "report"
            cmd = [sys.executable, "-m", "tl_persona.cli", "demo", "--no-progress", "--out", str(out)] + (["--quick"] if quick else [])
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
            wall = time.perf_counter() - t0
            data = json.loads((out / "data.json").read_text())
    finally:
        if loop is not None:
            loop.kill()
            loop.wait()
    return wall, {"timings": data["timings"], "claims_met": sum(c["met"] for c in data["claims"]),
                  "claims": len(data["claims"])}


def alone_and_busy(mode: str, runs: int, env: dict[str, str], label: str) -> None:
    """Alone and beside a busy loop, taking turns (a change in the machine's load hits both alike)."""
    walls: dict[str, list[float]] = {"alone": [], "busy": []}
    for i in range(runs):
        for k in walls:
            w, last = time_once(mode == "quick", env, busy=k == "busy")
            walls[k].append(w)
            print(f"{mode} {label} {k} run {i + 1}: {w:.1f} s  ({last['claims_met']}/{last['claims']} claims met)", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"{mode} {label}: alone median {med['alone']:.1f} s, beside a busy loop {med['busy']:.1f} s: "
          f"busy/alone {med['busy'] / med['alone']:.2f} (target <= 1.5); runs "
          + "; ".join(f"{k} " + ", ".join(f"{w:.1f}" for w in v) for k, v in walls.items()), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", choices=["quick", "full"])
    ap.add_argument("--busy", action="store_true", help="alone and beside a busy-loop process, busy/alone")
    ap.add_argument("--compare-threads", type=int, default=None,
                    help="with --busy: also with OMP_NUM_THREADS=N (the user's choice overrides the library's)")
    a = ap.parse_args()
    print(f"cpu count {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}", flush=True)
    for mode in ("quick", "full"):
        if a.only and a.only != mode:
            continue
        if a.busy:
            alone_and_busy(mode, a.runs, {}, "threads chosen by tl_persona")
            if a.compare_threads:
                alone_and_busy(mode, a.runs, {"OMP_NUM_THREADS": str(a.compare_threads)},
                               f"OMP_NUM_THREADS={a.compare_threads}")
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
