# The variables of a multi-process run, read and checked in one place for tools/dist_train.sh, tools/dist_test.sh
# (torchrun, run once per node) and tools/slurm_train.sh, tools/slurm_test.sh (srun). Sourced by them, not run.
#   NNODES         nodes taking part (default 1 with torchrun; under Slurm: GPUS / GPUS_PER_NODE rounded up)
#   NODE_RANK      torchrun only: this node's number, 0 to NNODES-1, 0 on the node at MASTER_ADDR (default 0);
#                  Slurm numbers the nodes and tasks itself
#   MASTER_ADDR    address of node 0, reachable from every node. torchrun: 127.0.0.1 on one node, required for
#                  NNODES > 1; Slurm: the job's first node unless set
#   PORT           a free TCP port on node 0 (default 29500); MASTER_PORT is read as well, the same value
#   GPUS_PER_NODE  Slurm only: tasks and GPUs per node (default 8, or GPUS when fewer)
# A bad value stops the launcher with a message naming the variable and the fix, before anything starts.

launch_error() {
    echo "$(basename "$0"): $*" >&2
    exit 2
}

# is_count VALUE: VALUE is a whole number written without leading zeros
is_count() {
    [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]
}

# read_port: PORT from PORT or MASTER_PORT (default 29500), checked
read_port() {
    if [[ -n ${PORT:-} && -n ${MASTER_PORT:-} && $PORT != "$MASTER_PORT" ]]; then
        launch_error "PORT=$PORT and MASTER_PORT=$MASTER_PORT differ: set one of them, to the same port on every node."
    fi
    PORT=${PORT:-${MASTER_PORT:-29500}}
    if ! is_count "$PORT" || (( PORT < 1 || PORT > 65535 )); then
        launch_error "PORT must be a TCP port (1 to 65535) free on the node at MASTER_ADDR, got '$PORT'."
    fi
}

# read_torchrun_env GPUS USAGE: check GPUS (processes on this node) and set NNODES, NODE_RANK, MASTER_ADDR, PORT
read_torchrun_env() {
    local gpus=$1 usage=$2
    if ! is_count "$gpus"; then
        launch_error "GPUS must be the number of processes on this node (one per GPU), got '$gpus'. Usage: $usage"
    fi
    NNODES=${NNODES:-1}
    NODE_RANK=${NODE_RANK:-0}
    if ! is_count "$NNODES" || (( NNODES < 1 )); then
        launch_error "NNODES must be the number of nodes (1 or more), got '$NNODES'."
    fi
    if ! is_count "$NODE_RANK" || (( NODE_RANK >= NNODES )); then
        launch_error "NODE_RANK=$NODE_RANK is not a node of NNODES=$NNODES: number the nodes 0 to $((NNODES - 1))," \
            "NODE_RANK=0 on the node at MASTER_ADDR."
    fi
    if (( NNODES > 1 )); then
        if [[ -z ${MASTER_ADDR:-} ]]; then
            launch_error "NNODES=$NNODES needs MASTER_ADDR: the address of the node with NODE_RANK=0, reachable from" \
                "every node; set the same MASTER_ADDR (and PORT) on every node, e.g. MASTER_ADDR=10.0.0.1."
        fi
        if (( gpus < 1 )); then
            launch_error "GPUS must be 1 or more on each node of a multi-node run, got $gpus."
        fi
    fi
    MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
    read_port
}

# read_slurm_env: set GPUS (tasks in all), GPUS_PER_NODE and NNODES, export MASTER_PORT (and MASTER_ADDR if set)
read_slurm_env() {
    GPUS_PER_NODE=${GPUS_PER_NODE:-}
    if [[ -n $GPUS_PER_NODE ]] && { ! is_count "$GPUS_PER_NODE" || (( GPUS_PER_NODE < 1 )); }; then
        launch_error "GPUS_PER_NODE must be the number of GPUs (tasks) per node, 1 or more, got '$GPUS_PER_NODE'."
    fi
    if [[ -n ${NNODES:-} ]]; then
        if ! is_count "$NNODES" || (( NNODES < 1 )); then
            launch_error "NNODES must be the number of nodes (1 or more), got '$NNODES'."
        fi
        GPUS_PER_NODE=${GPUS_PER_NODE:-8}
        if [[ -n ${GPUS:-} && $GPUS != $((NNODES * GPUS_PER_NODE)) ]]; then
            launch_error "GPUS=$GPUS is not NNODES x GPUS_PER_NODE = $NNODES x $GPUS_PER_NODE: set GPUS (all tasks)" \
                "or NNODES, not both."
        fi
        GPUS=$((NNODES * GPUS_PER_NODE))
    fi
    GPUS=${GPUS:-8}
    if ! is_count "$GPUS" || (( GPUS < 1 )); then
        launch_error "GPUS must be the number of GPUs (tasks) of the whole job, 1 or more, got '$GPUS'."
    fi
    GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
    NNODES=$(( (GPUS + GPUS_PER_NODE - 1) / GPUS_PER_NODE ))
    read_port
    export MASTER_PORT=$PORT
    if [[ -n ${MASTER_ADDR:-} ]]; then
        export MASTER_ADDR
    fi
}
