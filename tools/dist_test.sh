#!/usr/bin/env bash
# Test a checkpoint with GPUS processes on this node through torchrun, one per GPU. Multi-node: run it on every node
# with the same NNODES, MASTER_ADDR and PORT and this node's NODE_RANK (tools/dist_env.sh describes them and checks
# them). GPUS <= 1 on one node runs one plain process. Without CUDA the processes run on CPU over gloo.
# Usage: [NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 PORT=29500] \
#     bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options, e.g. --aug-test]
# PYTHON picks the interpreter (default: python).
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
PYTHON=${PYTHON:-python}
TOOLS=$(cd "$(dirname "$0")" && pwd)
source "$TOOLS/dist_env.sh"
read_torchrun_env "$GPUS" "bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py options]"

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
