#!/usr/bin/env bash
# The GPU check, ready to run on a lent device (e.g. the device tool's `run`, from the repo root):
#
#     bash benchmarks/gpu_check.sh            # writes logs to $OUT (or ./gpu_check_out), under 7 minutes
#
# What it does, each step bounded by `timeout` so the whole script ends well inside its budget:
#   1. puts the package on PYTHONPATH (the device has no network) and checks that torch with CUDA,
#      transformer-lens and sae-lens import; the device's image lacks the last two and some of their
#      needs, so carry them as wheels in .whl (`carry: [".whl"]`; the list that worked is
#      benchmarks/gpu_wheels.txt, fetched with `pip download --no-deps` for CPython 3.12 as the device
#      tool's README says) and the script installs them under /tmp/site first;
#   2. tests/test_cuda.py (the same numbers on the GPU as on the CPU: diffing, an SAE left on the CPU,
#      steering, ablation, greedy generation, attribution) and the diffing and hook suites;
#   3. bench_diff at GPU scale (200k tokens) at batch 8 and 32, and its multi-layer case (4 SAEs);
#   4. bench_generate at full size (GPT-2-small- and Qwen2-0.5B-shaped, 48 prompts of 16-512 tokens,
#      one repeat: the device's minutes are few);
#   5. bench_judge is CPU-bound and left out (run it anywhere: python3 benchmarks/bench_judge.py).
# Every log goes to $OUT so the figures come back even when a step runs out of time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t0=$SECONDS
         timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
         echo "   rc=$rc in $((SECONDS - t0))s"; tail -n 25 "$OUT/$name.log"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
if [ -d .whl ]; then  # wheels carried for what the device's image lacks (transformer-lens, sae-lens, their needs)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 || { echo "wheel install failed"; tail -n 20 "$OUT/wheels.log"; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step imports 60 python3 -c "import torch, transformer_lens, sae_lens, tl_persona; assert torch.cuda.is_available(); print(torch.__version__, transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '', sae_lens.__version__)"
step tests 60 python3 -m pytest -q -x tests/test_cuda.py tests/test_diff.py tests/test_hooks.py -k "not gloo"
step bench_diff 90 python3 benchmarks/bench_diff.py --device cuda --tokens 200000 --skip-memory
step bench_diff_b32 60 python3 benchmarks/bench_diff.py --device cuda --tokens 200000 --skip-memory --batch-size 32 --rounds 3
step bench_diff_layers 60 python3 benchmarks/bench_diff.py --device cuda --layers 2,5,8,11 --tokens 20000
step bench_generate 90 python3 benchmarks/bench_generate.py --device cuda --prompts 48 --repeats 1
echo "== done in ${SECONDS}s; logs in $OUT"
