#!/usr/bin/env bash
# The GPU check, ready to run on a lent device (e.g. the device tool's `run`, from the repo root):
#
#     bash benchmarks/gpu_check.sh            # writes logs to $OUT (or ./gpu_check_out), under 8 minutes
#
# What it does, each step bounded by `timeout` so the whole script ends well inside its budget:
#   1. puts the package on PYTHONPATH (the device has no network: install nothing) and checks that
#      torch with CUDA, transformer-lens and sae-lens import; if they are missing there, carry wheels
#      as the device tool's README says (a .whl folder named in `carry`) and pip-install them first;
#   2. the GPU-relevant tests: engine / diffing / hooks / generation / multi-SAE on CUDA where a test
#      takes a device, plus the whole fast suite's CUDA-sensitive modules;
#   3. bench_diff at GPU scale (200k tokens) and its multi-layer case (4 SAEs at 4 layers);
#   4. bench_generate at full size (GPT-2-small- and Qwen2-shaped, 256 prompts of 16-512 tokens);
#   5. bench_judge (CPU-bound, for completeness).
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step imports 60 python -c "import torch, transformer_lens, sae_lens, tl_persona; assert torch.cuda.is_available(); print(torch.__version__, transformer_lens.__version__ if hasattr(transformer_lens, '__version__') else '', sae_lens.__version__)"
step tests 120 python -m pytest -q -x tests/test_diff.py tests/test_multi_sae.py tests/test_hooks.py \
     tests/test_generate.py tests/test_architecture.py -k "not gloo"
step bench_diff 120 python benchmarks/bench_diff.py --device cuda --tokens 200000 --skip-memory
step bench_diff_layers 60 python benchmarks/bench_diff.py --device cuda --layers 2,5,8,11 --tokens 50000
step bench_generate 120 python benchmarks/bench_generate.py --device cuda
step bench_judge 40 python benchmarks/bench_judge.py --quick
echo "== done in ${SECONDS}s; logs in $OUT"
