#!/usr/bin/env bash
# Train on a Slurm cluster with srun, one task per GPU: GPUS tasks in all (or NNODES nodes), GPUS_PER_NODE per node.
# MASTER_ADDR (default: the job's first node) and PORT (default 29500) as for tools/dist_train.sh; Slurm numbers
# the nodes and tasks (no NODE_RANK). tools/dist_env.sh describes and checks the variables.
# Usage: [GPUS=16 | NNODES=2] [GPUS_PER_NODE=8] [PORT=29500] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#     bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [tools/train.py options]
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
TOOLS=$(cd "$(dirname "$0")" && pwd)
source "$TOOLS/dist_env.sh"
read_slurm_env

set -x
PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --nodes="$NNODES" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$TOOLS/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "${@:5}"
