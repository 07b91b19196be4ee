#!/usr/bin/env bash
# Create .venv with the pinned OpenMMLab stack. Idempotent: a stamp file that
# records the hash of the requirement files makes a second call a no-op.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
STAMP="$VENV/.mmifso-env"
HASH=$(cat requirements/*.txt setup.py | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
C="-c requirements/constraints.txt"
$PIP install -q --upgrade pip wheel
# mmcv compiles against the installed torch, so torch and the build tools go first.
$PIP install $C setuptools torch torchvision numpy ninja
# mmcv 2.1.0 has no prebuilt wheel for this stack: build it with its C++ ops
# (about 12 min on 2 cores the first time; pip's wheel cache makes later runs fast).
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install $C --no-build-isolation mmcv
fi
$PIP install $C -r requirements/runtime.txt -r requirements/tests.txt
$PIP install $C --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import mmcv.ops, mmdet, mmpretrain, torch_pruning, mmifso"
echo "$HASH" > "$STAMP"
echo "environment ready: $VENV"
