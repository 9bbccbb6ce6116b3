#!/usr/bin/env bash
# The demo (make demo): writes the synthetic shapes data set and scikit-learn's handwritten digits, trains Mask R-CNN,
# UperNet (shapes) and an image classifier (digits) with a small VMamba from scratch, tests the trained checkpoints on
# the held-out images and prints their metrics. A few minutes on a 2-core CPU.
#   PYTHON         interpreter (default: the project venv's python if there is one, else python)
#   GPUS           processes per run (default 1; >1 without CUDA trains on CPU over gloo)
#   OMP_NUM_THREADS  threads per process (default 1: on a small or shared CPU, more threads spin on busy cores)
#   DEMO_WORK_DIR  logs and checkpoints (default work_dirs/demo)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${MMVMAMBA_VENV:-$ROOT/.venv}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -x $VENV/bin/python ]]; then PYTHON=$VENV/bin/python; else PYTHON=python; fi
fi
export PYTHON
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
GPUS=${GPUS:-1}
WORK=${DEMO_WORK_DIR:-work_dirs/demo}
START=$SECONDS

echo "==> [demo +$((SECONDS - START))s] synthetic shapes and handwritten digits (tools/make_demo_data.py)"
"$PYTHON" tools/make_demo_data.py --out data/demo

for run in mask_rcnn:configs/demo/mask_rcnn_vmamba_demo.py upernet:configs/demo/upernet_vmamba_demo.py \
           digits:configs/demo/vmamba_demo_digits.py; do
    task=${run%%:*}
    config=${run#*:}
    echo "==> [demo +$((SECONDS - START))s] train $config on $GPUS process(es)"
    bash tools/dist_train.sh "$config" "$GPUS" --work-dir "$WORK/$task"
    checkpoint=$(cat "$WORK/$task/last_checkpoint")
    echo "==> [demo +$((SECONDS - START))s] test $checkpoint"
    bash tools/dist_test.sh "$config" "$checkpoint" "$GPUS" --work-dir "$WORK/$task" | tee "$WORK/$task/test.log"
done

echo "==> [demo +$((SECONDS - START))s] results on the held-out images: 20 synthetic validation images, 359 test" \
    "digits (docs/results.md has an untrained model's)"
"$PYTHON" - "$WORK" <<'EOF'
import json
import sys

work = sys.argv[1]
shown = {'mask_rcnn': ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'),
         'upernet': ('mIoU', 'mAcc', 'aAcc'), 'digits': ('accuracy/top1',)}
for task, keys in shown.items():
    with open(f'{work}/{task}/test.log') as log:
        metrics = json.loads([line for line in log if line.startswith('metrics: ')][-1][len('metrics: '):])
    print(f'{task:>9}: ' + '  '.join(f'{key} {metrics[key]:.3f}' for key in keys))
EOF
echo "==> demo done in $((SECONDS - START))s"
