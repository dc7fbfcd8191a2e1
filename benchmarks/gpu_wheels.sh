#!/usr/bin/env bash
# Download, here, the CPython 3.12 x86-64 wheels that a GPU machine without a package registry lacks for
# benchmarks/gpu_check.sh: what `import napari_hires.engine / .models / .training`, writing an OME-Zarr output,
# the cuda-marked tests and the benchmarks import, at the versions of the local environment (.venv by default).
#
#     bash benchmarks/gpu_wheels.sh                    # into .whl/ (git-ignored), about 20 MB
#     PIP_FREEZE="/path/to/.venv/bin/pip freeze" bash benchmarks/gpu_wheels.sh
#
# The GPU machine already has torch, numpy, scipy, scikit-image, tifffile, safetensors, pytest, tqdm, pillow, psutil,
# pyyaml, toolz, cloudpickle, fsspec, click and packaging; typing-extensions travels anyway (pydantic needs a recent
# one). Everything else (napari, Qt, imagecodecs, rasterio) is not imported by what gpu_check.sh runs.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(dask zarr numcodecs donfig google-crc32c ome-zarr-models pydantic-zarr pydantic pydantic-core
          annotated-types typing-inspection typing-extensions)
FREEZE=${PIP_FREEZE:-"$PWD/.venv/bin/pip freeze"}
[ -x "${FREEZE%% *}" ] || FREEZE="/work/main/.venv/bin/pip freeze"
frozen=$($FREEZE)

exclude="$(git rev-parse --git-common-dir)/info/exclude"  # .gitignore names /.whl/ too; this covers older checkouts
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl
for name in "${PACKAGES[@]}"; do
    # pip freeze spells names as installed (pydantic_core, typing_extensions): compare normalised
    pin=$(printf '%s\n' "$frozen" | awk -F'==' -v n="$name" \
        'BEGIN { gsub(/[-_.]+/, "-", n); n = tolower(n) } { k = tolower($1); gsub(/[-_.]+/, "-", k); if (k == n) print $2 }')
    [ -n "$pin" ] || { echo "gpu_wheels: $name is not installed in the local environment" >&2; exit 1; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$pin"
done
ls .whl
du -sh .whl
