#!/usr/bin/env bash
# Create .venv (once) and install scnet-torch with its test extras at the versions CI pins.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
pins=(-c constraints/ci.txt -e ".[test]")
pip_install() {  # quiet, without compiling (see below) and without the index's warnings about missing folders
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile "$@" \
        2>&1 | grep -v "^WARNING: Location" || true
}

# uv installs the same pins as pip in under half the time (20 s against 50 s here: the CUDA build of torch that
# the index serves brings 4 GB of NVIDIA libraries, which uv unpacks in parallel). It is told the indexes, links
# and constraints pip is configured with (scripts/pip_sources.py) and resolves as pip does
# (unsafe-best-match: the best version across all indexes). Wherever uv cannot be installed or fails, pip
# installs instead.
install_with_uv() {
    pip_install -c constraints/ci.txt uv
    [ -x .venv/bin/uv ] || return 1
    local listed sources=()
    listed=$(.venv/bin/python scripts/pip_sources.py) || return 1   # one argument a line; none: no line
    [ -z "$listed" ] || mapfile -t sources <<< "$listed"
    .venv/bin/uv pip install --quiet --no-progress --python .venv/bin/python --index-strategy unsafe-best-match \
        "${sources[@]}" "${pins[@]}"
}

# pip: --no-compile, because pip byte-compiles every installed module (12,000, of which the test suite imports
# fewer than half) one at a time, a third of its install (uv does not compile either). Instead the check below
# imports the package with bytecode writing on, which compiles what `scnet` loads (torch, timm, torchvision:
# 2,800 modules) once; anything else is compiled on its first import (tests/conftest.py lets the test processes
# write it even where PYTHONDONTWRITEBYTECODE=1 is set).
if ! install_with_uv; then
    echo "setup.sh: uv could not install; installing with pip" >&2
    pip_install "${pins[@]}"
fi
PYTHONDONTWRITEBYTECODE= .venv/bin/python -c "import scnet, torchvision.ops; print('scnet', scnet.__version__, 'ready in .venv')"
