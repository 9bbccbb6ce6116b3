#!/usr/bin/env bash
# Test a checkpoint with GPUS processes per node through torchrun; NNODES, NODE_RANK, MASTER_ADDR and PORT set up
# multi-node runs. GPUS <= 1 on one node runs one plain process. Without CUDA the processes run on CPU over gloo.
# Usage: bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options, e.g. --aug-test]
# PYTHON picks the interpreter (default: python).
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
TOOLS=$(cd "$(dirname "$0")" && pwd)

export PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}"
if [[ $NNODES -eq 1 && $GPUS -le 1 ]]; then
    exec "$PYTHON" "$TOOLS/test.py" "$CONFIG" "$CHECKPOINT" --launcher none "${@:4}"
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$TOOLS/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
