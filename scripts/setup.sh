#!/usr/bin/env bash
# Create .venv (once) and install scnet-torch with its test extras at the versions CI pins.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# --no-compile: pip byte-compiles every installed module (12,000, of which the test suite imports fewer than half) one at a time,
# a third of the install. Instead the check below imports the package with bytecode writing on, which compiles
# what `scnet` loads (torch, timm, torchvision: 2,800 modules) once; anything else is compiled on its first
# import (tests/conftest.py lets the test processes write it even where PYTHONDONTWRITEBYTECODE=1 is set).
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints/ci.txt -e ".[test]" \
    2>&1 | grep -v "^WARNING: Location" || true
PYTHONDONTWRITEBYTECODE= .venv/bin/python -c "import scnet, torchvision.ops; print('scnet', scnet.__version__, 'ready in .venv')"
