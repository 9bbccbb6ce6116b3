#!/usr/bin/env bash
# Train with GPUS processes per node through torchrun; NNODES, NODE_RANK, MASTER_ADDR and PORT set up multi-node
# runs. GPUS <= 1 on one node runs one plain process. Without CUDA the processes train on CPU over gloo.
# Usage: bash tools/dist_train.sh CONFIG GPUS [tools/train.py options]
# PYTHON picks the interpreter (default: python).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
TOOLS=$(cd "$(dirname "$0")" && pwd)

export PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}"
if [[ $NNODES -eq 1 && $GPUS -le 1 ]]; then
    exec "$PYTHON" "$TOOLS/train.py" "$CONFIG" --launcher none "${@:3}"
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$TOOLS/train.py" "$CONFIG" --launcher pytorch "${@:3}"
