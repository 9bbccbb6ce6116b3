#!/usr/bin/env bash
# The demo (make demo): writes the synthetic shapes data set, trains Mask R-CNN and UperNet with a small VMamba from
# scratch, tests the trained checkpoints and prints their metrics. A few minutes on a 2-core CPU.
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

echo "==> [demo +$((SECONDS - START))s] synthetic data (tools/make_demo_data.py)"
"$PYTHON" tools/make_demo_data.py --out data/demo

for task in mask_rcnn upernet; do
    config=configs/demo/${task}_vmamba_demo.py
    echo "==> [demo +$((SECONDS - START))s] train $config on $GPUS process(es)"
    bash tools/dist_train.sh "$config" "$GPUS" --work-dir "$WORK/$task"
    checkpoint=$(cat "$WORK/$task/last_checkpoint")
    echo "==> [demo +$((SECONDS - START))s] test $checkpoint"
    bash tools/dist_test.sh "$config" "$checkpoint" "$GPUS" --work-dir "$WORK/$task" | tee "$WORK/$task/test.log"
done

echo "==> [demo +$((SECONDS - START))s] results on the 20 validation images (docs/results.md has an untrained model's)"
"$PYTHON" - "$WORK" <<'EOF'
import json
import sys

work = sys.argv[1]
shown = {'mask_rcnn': ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'),
         'upernet': ('mIoU', 'mAcc', 'aAcc')}
for task, keys in shown.items():
    with open(f'{work}/{task}/test.log') as log:
        metrics = json.loads([line for line in log if line.startswith('metrics: ')][-1][len('metrics: '):])
    print(f'{task:>9}: ' + '  '.join(f'{key} {metrics[key]:.3f}' for key in keys))
EOF
echo "==> demo done in $((SECONDS - START))s"
