#!/usr/bin/env bash
# The one device run of a session that is lent a GPU (bench/NOTES.md entries 86 and 99).
#
# Through the device tool, from the repository root here, with a numpy 2.4.6 cp312 wheel in .whl
# (numpy 2.5 breaks numba-cuda 0.30.4; fetched here with `echo /.whl/ >> .git/info/exclude;
# python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation
# cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl numpy==2.4.6`):
#
#     run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# then give_back. Two gpu_check runs (each writes its JSON even when it stops at its budget),
# then gpu_decide on both (no GPU needed: the verdicts, predictions and targets come back in
# the output's tail and in $OUT/decide.md). Files under $OUT (6, within the tool's 8):
# gpu1.json gpu1_log.txt gpu2.json gpu2_log.txt decide.md nvidia_smi.txt.
#
# Settings (environment): B1, B2 the two runs' budgets in seconds (250 each: ~9 min in all
# with the starts and the grace); S1, S2 their sections; SMOKE=1 tries the script itself on
# numba's simulator (tiny sizes, NUMBA_ENABLE_CUDASIM=1; minutes per section on a CPU).
# Exit status: 0; 3 when a gpu_check run did not end normally (abandoned past its grace, or a
# crash: its JSON holds what it saved); 4 when the wheels do not install; 5 when numpy is 2.5 or
# later (no wheel carried).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 4
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# numba-cuda 0.30.4 fails at its first kernel compile with numpy 2.5 (np.row_stack is gone):
# stop here, in seconds, rather than after two runs of errors
python3 - <<'PY' || exit 5
import sys
import numpy
v = tuple(int(x) for x in numpy.__version__.split(".")[:2])
print(f"numpy {numpy.__version__} from {numpy.__file__}")
if v >= (2, 5):
    sys.exit("gpu_session: expected numpy < 2.5 (numba-cuda 0.30.4), got " + numpy.__version__ + ": carry a "
             "numpy 2.4.x cp312 wheel in .whl (bench/gpu_session.sh's header)")
PY
EXTRA=()
if [ "${SMOKE:-0}" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
    EXTRA=(--smoke --sizes 8 --batches 1,3)
fi
(nvidia-smi --query-gpu=name,clocks.max.sm,clocks.sm,power.limit,temperature.gpu,utilization.gpu \
    --format=csv 2>&1 || echo "no nvidia-smi") >"$OUT/nvidia_smi.txt"
cat "$OUT/nvidia_smi.txt"
rc=0
G=(python3 bench/gpu_check.py --grace 20 "${EXTRA[@]}")
"${G[@]}" --budget "${B1:-250}" --sections "${S1:-step,persist}" --out "$OUT/gpu1.json" 2>&1 |
    grep -v NumbaPerformance | tee "$OUT/gpu1_log.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=3
"${G[@]}" --budget "${B2:-250}" --sections "${S2:-seq,parity,more,hostcall}" --out "$OUT/gpu2.json" 2>&1 |
    grep -v NumbaPerformance | tee "$OUT/gpu2_log.txt"
[ "${PIPESTATUS[0]}" = 0 ] || rc=3
python3 bench/gpu_decide.py "$OUT/gpu1.json" "$OUT/gpu2.json" | tee "$OUT/decide.md"
exit $rc
