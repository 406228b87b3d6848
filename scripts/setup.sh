#!/usr/bin/env bash
# Create .venv (once) and install scnet-torch with its test extras at the versions CI pins.
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# --no-compile, then compileall on every core: pip byte-compiles the installed modules (torch alone has
# thousands) one at a time, a third of the install. Bytecode has to exist before the first run, since shells
# with PYTHONDONTWRITEBYTECODE=1 would otherwise compile torch from source in every process.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -c constraints/ci.txt -e ".[test]" \
    2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    > /dev/null || true   # (a few files are for other Pythons on purpose, e.g. torch's py312_intrinsics.py)
.venv/bin/python -c "import scnet, torchvision.ops; print('scnet', scnet.__version__, 'ready in .venv')"
