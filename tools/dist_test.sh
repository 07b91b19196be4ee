#!/usr/bin/env bash
# Distributed testing on one or more nodes with torchrun.
#   bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [tools/test.py args]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and PORT on every node
# (see tools/dist_run.sh).

CONFIG=$1
CHECKPOINT=$2
GPUS=$3

if [ -z "$CONFIG" ] || [ -z "$CHECKPOINT" ] || [ -z "$GPUS" ]; then
    echo "usage: bash $0 CONFIG CHECKPOINT GPUS [tools/test.py args]" >&2
    exit 2
fi

exec bash "$(dirname "$0")/dist_run.sh" test.py "$GPUS" \
    "$CONFIG" "$CHECKPOINT" --launcher pytorch "${@:4}"
