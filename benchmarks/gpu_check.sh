#!/usr/bin/env bash
# The GPU check, in one go (issue 12, item 9): the cuda-marked tests, then the GPU rows of the inference, preview and
# training benchmarks (pinned input copies, channels-last, fp32/bf16/fp16 autocast, out-of-memory batch halving),
# then one table. About 7 minutes on a GPU machine; BUDGET_S bounds the parts (no row starts after it, a part still
# running at its end is stopped) and the table always comes out.
#
#     bash benchmarks/gpu_wheels.sh                 # here, once: the wheels a registry-less GPU machine lacks
#     bash benchmarks/gpu_check.sh                  # there: installs .whl/ into /tmp/site, runs on cuda
#     DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh   # a CPU smoke test of this script (tiny sizes)
#
# Python: $PYTHON if set; else python3 with .whl/ installed into /tmp/site where .whl/ exists and python3 is 3.12
# (the wheels' version); else .venv/bin/python. Results: $WORK (default $OUT, else a fresh temporary folder) gets
# machine.txt, tests.xml, tests.log, rows.jsonl, parts.log and table.md. Exit status: 1 when a test failed or did not run.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-420}
WORK=${WORK:-${OUT:-$(mktemp -d)}}
mkdir -p "$WORK" && rm -f "$WORK"/{machine.txt,tests.xml,tests.log,rows.jsonl,parts.log,table.md}

if [ -z "${PYTHON:-}" ] && [ -d .whl ] && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
    PYTHON=python3
else
    PYTHON=${PYTHON:-.venv/bin/python}
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
start=$(date +%s)
deadline=$((start + BUDGET_S))

"$PYTHON" - "$DEVICE" > "$WORK/machine.txt" <<'EOF'
import os, platform, sys, torch
device = sys.argv[1]
name = torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else platform.processor()
print(f"gpu_check on {platform.node()}: device {device} ({name or platform.machine()}), torch {torch.__version__}, "
      f"Python {platform.python_version()}, {os.cpu_count()} cores, CUDA available: {torch.cuda.is_available()}")
EOF
cat "$WORK/machine.txt"
if [ "$DEVICE" = cuda ] && ! grep -q "CUDA available: True" "$WORK/machine.txt"; then
    echo "gpu_check: DEVICE=cuda but torch sees no CUDA device (use DEVICE=cpu for the smoke test)" >&2
    exit 1
fi

left() { echo $((deadline - $(date +%s) > 10 ? deadline - $(date +%s) : 10)); }

# The cuda-marked tests: napari, Qt and their pytest plugins are not needed (nor installed on a GPU machine).
echo "== tests (pytest -m cuda)"
timeout --kill-after=10 "$(left)" "$PYTHON" -m pytest -q -p no:cacheprovider -p no:napari -p no:napari-plugin-engine \
    -p no:npe2 -p no:pytest-qt -p no:xvfb -p no:zarr -m cuda --junitxml="$WORK/tests.xml" tests/engine/test_cuda.py \
    2>&1 | tee "$WORK/tests.log"
tests_rc=${PIPESTATUS[0]}

# Each part starts no row after its own share of the budget; the last one runs to its end.
for part_share in runner:50 inference:65 training:85 preview:100; do
    part=${part_share%%:*}
    part_deadline=$((start + BUDGET_S * ${part_share##*:} / 100))
    echo "== $part"
    echo "== $part" >> "$WORK/parts.log"
    timeout --kill-after=10 "$(left)" "$PYTHON" benchmarks/gpu_rows.py "$part" --device "$DEVICE" \
        --rows "$WORK/rows.jsonl" --deadline "$part_deadline" 2>&1 | tee -a "$WORK/parts.log" | tail -n 3
    rc=${PIPESTATUS[0]}
    if [ $rc -ne 0 ]; then
        why="exited with $rc, see parts.log"
        [ $rc -eq 124 ] || [ $rc -eq 137 ] && why="stopped at the time budget"
        printf '{"part": "%s", "row": "(the part)", "setting": "", "value": null, "unit": "", "note": "%s"}\n' \
            "$part" "$why" >> "$WORK/rows.jsonl"
    fi
done

echo "== table ($(( $(date +%s) - start )) s)"
"$PYTHON" benchmarks/gpu_summary.py --machine "$WORK/machine.txt" --junit "$WORK/tests.xml" --rows "$WORK/rows.jsonl" \
    | tee "$WORK/table.md"
[ "$tests_rc" -eq 0 ] || exit 1
