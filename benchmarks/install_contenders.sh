#!/usr/bin/env bash
# A second published SCNet for benchmarks/other_implementations.py: OpenMMLab's (mmpose), installed into
# .contenders/ (ignored by git), apart from the project's environment, which it must not change.
#
#   bash benchmarks/install_contenders.sh        # about 220 MB, from the package index, in seconds
#
# --no-deps and a short list, on purpose: mmpose declares the full mmcv (compiled operators), xtcocotools
# (built against numpy 1) and its dataset tools; its SCNet backbone needs only mmcv's Python layers (mmcv-lite),
# mmengine and what those import. benchmarks/implementations.py imports the backbone around mmpose's package
# __init__ files, which pull in the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pip install --quiet --disable-pip-version-check --no-deps --target .contenders --upgrade \
    mmpose==1.3.2 mmcv-lite==2.2.0 mmengine==0.10.7 addict==2.4.0 yapf==0.43.0 termcolor==3.3.0 rich==15.0.0 \
    markdown-it-py mdurl pygments six==1.17.0 opencv-python-headless==5.1.0.95 pyyaml
"$python" - <<'PY'
import sys
sys.path.insert(0, 'benchmarks')
import implementations
model = implementations.mmpose_scnet('scnet50')
print(f"mmpose {implementations.MMPOSE_VERSION}'s SCNet-50 builds: "
      f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, in {implementations.CONTENDERS_DIR}")
PY
