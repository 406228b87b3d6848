#!/usr/bin/env bash
# The GPU run of the performance issue: under 8 minutes on one CUDA GPU, one JSON report.
#
#   bash benchmarks/gpu.sh                         # writes benchmarks/results/gpu.json
#   bash benchmarks/gpu.sh --dry-run --output-dir D  # CPU rehearsal at tiny sizes (1-3 min): D/gpu_dry_run.json
#   SCNET_GPU_DRY_RUN=1 bash benchmarks/gpu.sh       # the same rehearsal
#   bash benchmarks/gpu.sh --output-dir "$OUT" --log-dir "$OUT/logs"   # on a lent GPU machine (the device
#       tool returns what is under $OUT); then copy gpu.json into benchmarks/results/ and commit it
#
# The lent machines' image has torch, torchvision, triton and safetensors but not necessarily the timm CI pins,
# and cannot download: carry it as a wheel (`pip download --no-deps timm==1.0.31 -d .whl`, carry ".whl") and
# start the command with `python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
# export PYTHONPATH=/tmp/site;`. The other dependencies (pycocotools, webdataset, datasets) are not needed:
# the dry run passes with them unimportable.
#
# Sections (the fused gate op, resnet50/scnet50/authors' structure eager and compiled at batch 1, 32 and 256,
# one `scnet train --amp` epoch, one DDP process over NCCL) each run with their own time limit; a failure is
# recorded in the JSON and the others still run. See benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # each section's line as it ends, also through a pipe
python=${PYTHON:-.venv/bin/python}
if [ ! -x "$python" ]; then
    python=$(command -v python3 || command -v python)
fi
exec "$python" benchmarks/gpu.py "$@"
