#!/usr/bin/env bash
# The kernel tests and compile_check under the triton of the GPU image we test against (3.6), not only the one that
# constraints.txt pins (3.8), on a machine without a GPU; cheap enough for CI.
#
#   scripts/gpu/triton_compat.sh        from anywhere; needs the project's .venv (make venv) and, the first time, PyPI
#
# Why: the GPU image runs torch 2.11 + triton 3.6. Triton's interpreter (the CPU kernel tests) and its compiler
# (compile_check: registers and spills) differ between the two, and a kernel that passes on 3.8 has failed on 3.6.
# How: only triton==3.6.0 goes into a side directory, $SIDE (git-ignored, ~640 MB, installed once and reused while
# its version is right), and comes first on PYTHONPATH, so that the .venv's torch drives it. torch's own use of
# triton (inductor) is not exercised on CPU, and this pair gave the same test results and the same compile_check
# table as the real torch 2.11 + triton 3.6 in a venv of their own (which takes ~70 s and 4.8 GB to install). The GPU
# is hidden, so that the tests take the interpreter path on any machine. Then, both always run:
#   1. pytest -q tests/kernels (the interpreter tests, and compile_check for sm_90 and sm_80 in subprocesses, which
#      keep the inherited PYTHONPATH and check that they compiled with this triton);
#   2. python scripts/gpu/compile_check.py --arch 90, for its table in the log.
# Exits 1 if either fails or the triton imported is not $VERSION. About 2 minutes on 2 cores (+ ~5 s to install).
#   PYTHON=.venv/bin/python   TRITON_COMPAT_VERSION=3.6.0   TRITON_COMPAT_DIR=.venv-triton36
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"

PY="${PYTHON:-.venv/bin/python}"
VERSION="${TRITON_COMPAT_VERSION:-3.6.0}"
SIDE="${TRITON_COMPAT_DIR:-.venv-triton36}"

if [ ! -d "$SIDE/triton-$VERSION.dist-info" ]; then
  # Into a scratch directory first: an interrupted install never leaves a $SIDE that looks complete.
  rm -rf "$SIDE.partial"
  "$PY" -m pip install -q --no-deps --target "$SIDE.partial" "triton==$VERSION"
  rm -rf "$SIDE"
  mv "$SIDE.partial" "$SIDE"
fi

export PYTHONPATH="$ROOT:$(cd "$SIDE" && pwd)${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=""
unset TRITON_INTERPRET  # the tests set it themselves; compile_check refuses to run under it

"$PY" -c "import sys, torch, triton
print(f'triton {triton.__version__} from {triton.__file__}; torch {torch.__version__}')
sys.exit(triton.__version__ != '$VERSION')" || { echo "triton_compat: triton $VERSION is not the one imported" >&2; exit 1; }

status=0
"$PY" -m pytest -q -p no:cacheprovider tests/kernels || status=1
"$PY" scripts/gpu/compile_check.py --arch 90 || status=1
[ "$status" = 0 ] && echo "triton_compat: triton $VERSION passes" || echo "triton_compat: triton $VERSION FAILS" >&2
exit "$status"
