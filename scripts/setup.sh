#!/usr/bin/env bash
# Create .venv (once) and install scnet-torch with its test extras at the versions CI pins.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints/ci.txt -e ".[test]" 2>&1 \
    | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import scnet, torchvision.ops; print('scnet', scnet.__version__, 'ready in .venv')"
