#!/usr/bin/env bash
# Creates (or completes) the project environment and installs everything: torch, mmcv 2.1.0
# with compiled ops (built once from source, then reused from a wheel cache), the OpenMMLab
# stack, the test tools and mmvmamba itself (editable). Rerunning on a complete env is quick.
#   PYTHON                interpreter the venv is made from (default: python3); if it already
#                         has torch (e.g. a CUDA build), the venv keeps that torch
#   MMVMAMBA_VENV         where the venv lives (default: .venv in the repo root)
#   MMVMAMBA_WHEEL_CACHE  built mmcv wheels (default: ${XDG_CACHE_HOME:-~/.cache}/mmvmamba/wheels)
#   FORCE_CUDA=1          build mmcv's CUDA ops even where no GPU is visible
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MMVMAMBA_VENV:-$ROOT/.venv}
CACHE=${MMVMAMBA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmvmamba/wheels}
PY=$VENV/bin/python
MMCV_VERSION=2.1.0
DEFAULT_TORCH=(torch==2.14.1 torchvision==0.29.1)
IMPORT_CHECK='import mmvmamba, mmcv.ops, mmdet.models, mmseg.models, mmpretrain.models'

START=$SECONDS
STEP=start
BUILD_DIR=
step() {
    STEP=$1
    echo "==> [setup_env +$((SECONDS - START))s] $STEP"
}
trap 'echo "setup_env FAILED during: $STEP (after $((SECONDS - START))s)" >&2' ERR
trap '[[ -z $BUILD_DIR ]] || rm -rf "$BUILD_DIR"' EXIT

pip_install() {
    "$PY" -m pip install --quiet -c "$VENV/torch-constraints.txt" "$@"
}

step "venv at $VENV"
if [[ ! -x $PY ]]; then
    BASE=${PYTHON:-python3}
    if "$BASE" -c 'import torch' 2>/dev/null; then
        echo "    $BASE has torch: the venv sees it (--system-site-packages) and keeps it"
        "$BASE" -m venv --system-site-packages "$VENV"
    else
        "$BASE" -m venv "$VENV"
    fi
fi

step "pip tooling (setuptools<81 for mmcv's pkg_resources, wheel, ninja)"
: >"$VENV/torch-constraints.txt"
pip_install 'setuptools>=77,<81' wheel ninja

step "torch"
if ! "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
    echo "    no torch in the venv: installing ${DEFAULT_TORCH[*]}"
    pip_install "${DEFAULT_TORCH[@]}"
fi
TORCH_INFO=$(MMCV_VERSION=$MMCV_VERSION "$PY" - <<'EOF'
import importlib.metadata
import importlib.util
import os
import sys

import torch

try:
    import mmcv.ops  # noqa: F401
    mmcv_ok = importlib.metadata.version('mmcv') == os.environ['MMCV_VERSION']
except ImportError:
    mmcv_ok = False
release = tuple(int(part) for part in torch.__version__.split('+')[0].split('.')[:2])
cuda_ops = torch.version.cuda and (torch.cuda.is_available() or os.getenv('FORCE_CUDA') == '1')
print(f'{sys.version_info[0]}.{sys.version_info[1]}', importlib.metadata.version('torch'), torch.__version__,
      'cu' + torch.version.cuda.replace('.', '') if cuda_ops else 'cpu', int(release >= (2, 14)),
      int(importlib.util.find_spec('torchvision') is not None), int(mmcv_ok))
EOF
)
read -r PYVER TORCH_DIST TORCH OPS CXX20 HAS_TORCHVISION MMCV_OK <<<"$TORCH_INFO"
echo "torch==$TORCH_DIST" >"$VENV/torch-constraints.txt"
[[ $HAS_TORCHVISION == 1 ]] || pip_install torchvision
echo "    python $PYVER, torch $TORCH, mmcv ops for: $OPS (torch is pinned for the rest of the setup)"

step "mmcv $MMCV_VERSION with compiled ops"
MMCV_WHEEL=()
if [[ $MMCV_OK == 0 ]]; then
    WHEEL_DIR=$CACHE/py$PYVER-torch$TORCH-$OPS
    if ! compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" >/dev/null; then
        echo "    no cached wheel in $WHEEL_DIR: building mmcv $MMCV_VERSION from source"
        echo "    (one time: about 15 minutes on 2 idle cores; longer on a busy machine or with CUDA ops)"
        BUILD_DIR=$(mktemp -d)
        "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
            "mmcv==$MMCV_VERSION" -d "$BUILD_DIR"
        tar -xzf "$BUILD_DIR/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD_DIR"
        SRC=$BUILD_DIR/mmcv-$MMCV_VERSION
        if [[ $CXX20 == 1 ]]; then
            echo "    torch >= 2.14 headers need C++20: patching mmcv's -std=c++17 flags"
            sed -i "s/'-std=c++17'/'-std=c++20'/g" "$SRC/setup.py"
            grep -q "'-std=c++20'" "$SRC/setup.py"
            "$PY" -m py_compile "$SRC/setup.py"
        fi
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "$PY" -m pip wheel --no-deps --no-build-isolation "$SRC" -w "$BUILD_DIR/dist"
        mkdir -p "$WHEEL_DIR"
        mv "$BUILD_DIR"/dist/mmcv-*.whl "$WHEEL_DIR/"
    fi
    MMCV_WHEEL=("$(compgen -G "$WHEEL_DIR/mmcv-$MMCV_VERSION-*.whl" | head -n 1)")
    echo "    installing ${MMCV_WHEEL[0]}"
    if "$PY" -m pip show mmcv >/dev/null 2>&1; then
        "$PY" -m pip uninstall --quiet -y mmcv
    fi
fi

step "OpenMMLab stack and test tools"
pip_install "${MMCV_WHEEL[@]}" -r "$ROOT/requirements/mminstall.txt" -r "$ROOT/requirements/tests.txt"

step "mmvmamba (editable)"
pip_install --no-build-isolation -e "$ROOT"

step "import check: $IMPORT_CHECK"
"$PY" -W ignore -c "$IMPORT_CHECK"
echo "==> environment ready in $((SECONDS - START))s: $VENV"
