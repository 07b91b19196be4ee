#!/usr/bin/env bash
# Distributed training on one or more nodes with torchrun.
#   bash tools/dist_train.sh CONFIG GPUS [tools/train.py args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node
# (see tools/dist_run.sh).

CONFIG=$1
GPUS=$2

if [ -z "$CONFIG" ] || [ -z "$GPUS" ]; then
    echo "usage: bash $0 CONFIG GPUS [tools/train.py args]" >&2
    exit 2
fi

exec bash "$(dirname "$0")/dist_run.sh" train.py "$GPUS" \
    "$CONFIG" --launcher pytorch "${@:3}"
