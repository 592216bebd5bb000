#!/usr/bin/env bash
# Make the venvs the benchmarks need, inside this checkout (shared/ is read-only in CI).
#
#   bash bench/setup.sh            # from the repo root; ~3-5 min the first time, ~5 s after
#
# Calls the anchors' own setup scripts with paths under .bench-venvs/ (git-ignored):
#   .bench-venvs/triton    NVIDIA tritonserver 2.51.0 + python backend (anchors/triton/setup.sh),
#                          plus onnxruntime 1.32.0 for bench's python-backend conv net (numpy<2 kept)
#   .bench-venvs/client    tritonclient 2.51.0 + perf_analyzer 2.51.0  (anchors/client/setup.sh)
#   .bench-venvs/mlserver  Seldon MLServer 1.7.1                        (anchors/mlserver/setup.sh)
#   .bench-venvs/kserve    KServe 0.21.0 ModelServer                    (anchors/kserve/setup.sh)
#   .bench-venvs/loadgen   numpy + uvloop + aiohttp for loadgen.py      (anchors/setup_loadgen.sh)
# naiad itself runs from the repo's .venv (README: pip install -r requirements-dev.txt); it is
# made here too when missing.
#
# Environment: ANCHORS (default ../shared/anchors beside the checkout), BENCH_VENVS
# (default .bench-venvs), PYTHON (interpreter for new venvs, default python3).
# Idempotent: each anchor script checks its stamp and does nothing when up to date.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ANCHORS="${ANCHORS:-$ROOT/../shared/anchors}"
VENVS="${BENCH_VENVS:-$ROOT/.bench-venvs}"
case "$VENVS" in /*) ;; *) VENVS="$PWD/$VENVS" ;; esac
[ -d "$ANCHORS" ] || { echo "no anchors at $ANCHORS (set ANCHORS=...)" >&2; exit 1; }
mkdir -p "$VENVS"

t0=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - t0 )) s)" >&2; }

if [ ! -x "$ROOT/.venv/bin/naiad" ]; then
    step "naiad venv: $ROOT/.venv"
    [ -x "$ROOT/.venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$ROOT/.venv"
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt"
fi

step "triton"
bash "$ANCHORS/triton/setup.sh" "$VENVS/triton"
# bench/make_convnet.py's python-backend model runs the ONNX file with onnxruntime inside the
# Triton stub; numpy must stay < 2 there (the stub is built for numpy 1.x).
if ! "$VENVS/triton/bin/python" -c 'import onnxruntime' 2>/dev/null; then
    "$VENVS/triton/bin/python" -m pip install -q --disable-pip-version-check onnxruntime==1.32.0 "numpy<2"
fi

step "client (perf_analyzer)"
bash "$ANCHORS/client/setup.sh" "$VENVS/client" >/dev/null

step "mlserver"
bash "$ANCHORS/mlserver/setup.sh" "$VENVS/mlserver"

step "kserve"
bash "$ANCHORS/kserve/setup.sh" "$VENVS/kserve"

step "loadgen"
bash "$ANCHORS/setup_loadgen.sh" "$VENVS/loadgen"

step "done"
