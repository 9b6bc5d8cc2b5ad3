#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU (sm_80+): builds nothing. Finds the CUDA libraries (driver, NVRTC,
# cuBLAS) on the machine, then runs the prebuilt release binaries from kernels/gpu-prepare.sh:
#   1. the NVRTC compile check for every .cu file (and the CPU unit tests),
#   2. the GPU parity tests (every kernel vs its CPU reference, fresh random inputs, poisoned outputs),
#   3. the kernel engine on the CUDA device vs the candle CPU engine (worker/tests/gpu_engine.rs; its figures go to
#      engine.json; the fixtures are read from this checkout's worker/ folder),
#   4. the benchmark: `tandem-worker bench kernels` (table + JSON) when that subcommand is there, else the
#      benchmark test binary (table).
# Usage: kernels/gpu-check.sh [BIN_DIR (default .cache/gpu-bin)] [STEP ...] ; output also lands in
# ${OUT:-.cache/gpu-out}: gpu-check.log (every step's output under its `=== step` header), kernels-bench.json and
# engine.json, 3 files (the device tool returns 8 at most). STEPs (default: all, in this order): unit parity
# ops-parity ops-bf16-parity attention-parity attention-tc-parity engine bench; naming some lets a session split
# the run over two calls. TANDEM_CUDA_LIB_DIRS (space-separated folders) is searched first.
# Whole run: expected well under 5 minutes on an H100; the step limits add up to 580 s, under one 600 s call.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.cache/gpu-bin}"
shift || true
only=" $* "
out="${OUT:-.cache/gpu-out}"
mkdir -p "$out"

find_dir() { # library file name, then candidate folders: prints the first folder that has it
  local lib=$1; shift
  for d in "$@"; do
    for f in "$d"/$lib; do [ -e "$f" ] && { echo "$d"; return 0; }; done
  done
  return 1
}
py_nvidia=$(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/cu13/lib /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib 2>/dev/null | head -n1)
cands_cuda=(${TANDEM_CUDA_LIB_DIRS:-} /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/cuda/compat /lib/x86_64-linux-gnu)
cands_toolkit=(${TANDEM_CUDA_LIB_DIRS:-} /usr/local/cuda-13.0/targets/x86_64-linux/lib /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 $py_nvidia "$PWD/.cache/nvrtc/nvidia/cu13/lib")
driver=$(find_dir 'libcuda.so*' "${cands_cuda[@]}") || { echo "gpu-check: no libcuda.so found in ${cands_cuda[*]}" >&2; exit 2; }
nvrtc=$(find_dir 'libnvrtc.so*' "${cands_toolkit[@]}") || { echo "gpu-check: no libnvrtc.so found in ${cands_toolkit[*]}" >&2; exit 2; }
cublas=$(find_dir 'libcublas.so*' "${cands_toolkit[@]}") || { echo "gpu-check: no libcublas.so found (the benchmark needs it)" >&2; cublas=""; }
export LD_LIBRARY_PATH="$driver:$nvrtc${cublas:+:$cublas}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TANDEM_REQUIRE_GPU=1 TANDEM_REQUIRE_NVRTC=1 RUST_LOG="${RUST_LOG:-info}"
echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

status=0
log="$out/gpu-check.log"
: >"$log"
step() { # name, time limit (s), command...
  local name=$1 limit=$2; shift 2
  if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then return 0; fi
  echo "=== $name" | tee -a "$log"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
step unit 45 "$bin/kernels-unit" --include-ignored
step parity 100 "$bin/gpu-parity" --include-ignored --nocapture --test-threads=1
step ops-parity 70 "$bin/gpu-ops-parity" --include-ignored --nocapture --test-threads=1
step ops-bf16-parity 40 "$bin/gpu-ops-bf16" --include-ignored --nocapture --test-threads=1
step attention-parity 70 "$bin/gpu-attention" --include-ignored --nocapture --test-threads=1
step attention-tc-parity 55 "$bin/gpu-attention-tc" --include-ignored --nocapture --test-threads=1
step engine 75 env TANDEM_WORKER_DIR="$PWD/worker" TANDEM_GPU_JSON="$out/engine.json" "$bin/gpu-engine" --include-ignored --nocapture --test-threads=1
if [ -x "$bin/tandem-worker" ] && "$bin/tandem-worker" bench kernels --help >/dev/null 2>&1; then
  step bench 125 "$bin/tandem-worker" bench kernels --json "$out/kernels-bench.json"
else
  echo "(tandem-worker with 'bench kernels' not in $bin: the benchmark runs from its test binary, table only)"
  step bench 125 "$bin/gpu-bench" --include-ignored --nocapture
fi
exit $status
