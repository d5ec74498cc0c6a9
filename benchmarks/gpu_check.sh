#!/usr/bin/env bash
# GPU check of the single-pass GGAM training step, at most 5 minutes on one CUDA GPU.
#
# At the paper's setting (resnet50, 448 px, batch 32), bf16 autocast, channels_last:
#   0. first, tests/test_fused.py on the GPU (at most 60 s; FUSED_TESTS=0 skips it) -> results/fused_tests_gpu.txt
#   1. step time and peak memory (torch.cuda.max_memory_allocated) of plain fine-tuning, GGAM (closed form, the
#      fused Triton head), GGAM unfused (the PyTorch head), GGAM (autograd beta) and the authors' two-backward step;
#      inference (fused and unfused); head + loss alone, fused and unfused (HEAD_COMPILE=1: compiled too); each kernel
#      alone with the bytes of A it moves and the bandwidth achieved; the gradient check; and
#      torch.cuda.set_sync_debug_mode('error') around the GGAM loss and around the whole GGAM step, which raises on
#      any host sync (the result is recorded in the JSON) -> benchmarks/results/step_time_gpu.{json,md}
#   2. plain, GGAM (fused) and, when at least 150 s are left, GGAM unfused under torch.compile, with whatever time
#      is left -> benchmarks/results/step_time_gpu_compiled.{json,md}
#
# Usage (from anywhere; extra arguments go to step_time.py and win over the defaults):
#   bash benchmarks/gpu_check.sh
#   bash benchmarks/gpu_check.sh --device cpu --quick     # dry run of the Python side on a CPU (writes to /tmp)
#   TRITON_INTERPRET=1 bash benchmarks/gpu_check.sh --device cpu --quick --force-fused  # ... with the fused head
# Environment: PYTHON (default .venv/bin/python if present, else python), BUDGET_S (default 290), HEAD_COMPILE (0),
# FUSED_TESTS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
BUDGET_S=${BUDGET_S:-290}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

device=cuda
quick=0
prev=
for arg in "$@"; do
    [[ "$prev" == "--device" ]] && device=$arg
    [[ "$arg" == --device=* ]] && device=${arg#--device=}
    [[ "$arg" == "--quick" ]] && quick=1
    prev=$arg
done

common=(--amp bf16)
if [[ "$device" == "cuda" ]]; then
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: run with --device cpu --quick for a dry run")'
    common+=(--channels-last)
    out=(--out-dir benchmarks/results)
else  # dry run: a tiny model, since bf16 convolutions are slow on CPUs without native bf16
    out=(--out-dir "${TMPDIR:-/tmp}/ggam_gpu_check_dryrun")
    [[ $quick -eq 1 ]] && common+=(--settings test_resnet:96:2)
fi
if [[ $quick -eq 0 ]]; then
    common+=(--settings resnet50:448:32 --warmup 3 --repeats 20)
fi

start=$SECONDS
# 0. on CUDA: the fused kernels' tests (tests/test_fused.py, full size included), at most 60 s; the result is kept
if [[ "$device" == "cuda" && "${FUSED_TESTS:-1}" == 1 ]]; then
    mkdir -p benchmarks/results
    # (torch.compile and opcheck, the slow ones, are left to CI; Triton compiles each kernel variant once here)
    timeout 60 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_fused.py -k 'not compile and not opcheck' 2>&1 \
        | tail -n 30 \
        | tee benchmarks/results/fused_tests_gpu.txt || true
fi
eager_s=$(((BUDGET_S - (SECONDS - start)) * 65 / 100))
# 1. eager: everything that must come back, with a hard limit that leaves room for part 2
head=(--head)
[[ "${HEAD_COMPILE:-0}" == 1 ]] && head+=(--head-compile)
timeout "$eager_s" "$PYTHON" -m benchmarks.step_time "${common[@]}" --sync-check "${head[@]}" \
    --compile-methods \
    --name "step_time_gpu$([[ $device == cuda ]] || echo _dryrun)" "${out[@]}" "$@"
left=$((BUDGET_S - (SECONDS - start)))
echo "gpu_check: eager part done in $((SECONDS - start)) s, ${left} s left"

# 2. compiled plain and GGAM (compilation takes most of it); skipped when too little time is left
compiled=(plain ggam)
[[ $left -gt 150 ]] && compiled+=(ggam_unfused)
if [[ $quick -eq 0 && $left -gt 60 ]]; then
    timeout "$left" "$PYTHON" -m benchmarks.step_time "${common[@]}" --methods "${compiled[@]}" \
        --compile-methods "${compiled[@]}" --memory off --no-grad-check --no-inference --warmup 2 --repeats 10 \
        --name "step_time_gpu_compiled$([[ $device == cuda ]] || echo _dryrun)" "${out[@]}" "$@" \
        || echo "gpu_check: compiled part stopped (exit $?), eager results are in place"
else
    echo "gpu_check: compiled part skipped (quick run or ${left} s left)"
fi
echo "gpu_check: done in $((SECONDS - start)) s"
