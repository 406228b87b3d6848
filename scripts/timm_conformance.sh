#!/usr/bin/env bash
# Run timm's own model test suite (tests/test_models.py of the installed timm release) over scnet-torch's zoo:
# forward, backward, default configs, TorchScript, features_only, forward_intermediates, torch.fx.
# An outside conformance check, slow (minutes), so not part of the test suite; see docs/contributing.md.
#
#   bash scripts/timm_conformance.sh                 # every zoo model; pretrained downloads left out
#   bash scripts/timm_conformance.sh -k "scnet50 and fx"   # a -k of your own replaces the model selection
#
# Needs the package registry once (pip downloads the timm source release that matches the installed version,
# which carries the tests). SCNET_TIMM_SDIST=PATH uses a timm-X.Y.Z.tar.gz already on disk instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
version=$("$PYTHON" -c 'import timm; print(timm.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sdist=${SCNET_TIMM_SDIST:-}
if [ -z "$sdist" ]; then
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
        "timm==$version" -d "$work" 2>&1 | grep -v '^WARNING: Location' || true
    sdist="$work/timm-$version.tar.gz"
fi
if [ ! -f "$sdist" ]; then
    echo "timm_conformance.sh: no timm $version source release at $sdist; set SCNET_TIMM_SDIST to one" >&2
    exit 2
fi
tar -xzf "$sdist" -C "$work" "timm-$version/tests"
tests="$work/timm-$version/tests"
# the zoo (timm's module "zoo": the SC networks and the baselines timm lacks) registers itself with timm when
# scnet is imported: before timm's tests collect model names
echo 'import scnet  # noqa: F401' > "$tests/conftest.py"
# timm runs its forward_intermediates tests over a list of its own model modules; the zoo's module is 'zoo'
sed -i "s/^FEAT_INTER_FILTERS = \[/FEAT_INTER_FILTERS = ['zoo', /" "$tests/test_models.py"
models=$("$PYTHON" -c 'import scnet, timm; print(" or ".join(timm.list_models(module="zoo")))')
echo "timm $version tests/test_models.py over: $models"
cd "$work/timm-$version"
"$PYTHON" -m pytest -p no:cacheprovider -q -n 2 -W ignore::pytest.PytestUnknownMarkWarning tests/test_models.py \
    -k "($models) and not pretrained" "$@"
