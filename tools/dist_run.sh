#!/usr/bin/env bash
# Run a script of tools/ on GPUS processes per node with torchrun: the part
# dist_train.sh and dist_test.sh share.
#   bash tools/dist_run.sh SCRIPT GPUS [SCRIPT args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node;
# PYTHON picks the interpreter.

SCRIPT=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

if [ -z "$SCRIPT" ] || [ -z "$GPUS" ]; then
    echo "usage: bash $0 SCRIPT GPUS [SCRIPT args]" >&2
    exit 2
fi

PYTHONPATH="$(dirname "$0")/..":$PYTHONPATH \
exec $PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$(dirname "$0")/$SCRIPT" \
    "${@:3}"
