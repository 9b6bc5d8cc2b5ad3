#!/usr/bin/env bash
# Checks Tandem's CUDA kernels on the CPU, without a GPU: compiles each .cu file together with the emulator
# (cuda_emu.h: one std::thread per CUDA thread, barriers for __syncthreads and warp shuffles) and a checker that
# compares the kernels' results with a float64 reference. Needs g++ with C++20 (std::barrier). Not part of CI
# (slow: hundreds of threads per block on the CPU); run it after changing a kernel, before a GPU session.
# Usage: kernels/tools/emu/check.sh [attention|attention_tc|ops|ops_bf16|lora|nf4|engine ...]  (default: all)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cuda="$here/../../cuda"
build="${TMPDIR:-/tmp}/tandem-cuda-emu"
mkdir -p "$build"
status=0
for name in "${@:-attention attention_tc ops ops_bf16 lora nf4 engine}"; do
  for n in $name; do
    src="$build/$n.cpp"
    {
      echo "#include \"$here/cuda_emu.h\""
      cat "$cuda/common.cuh"
      # Dynamic shared memory becomes the emulator's per-block buffer.
      sed 's/extern __shared__ float smem\[\];/float* smem = emu_dynamic_smem;/' "$cuda/$n.cu"
      cat "$here/${n}_check.cpp"
    } >"$src"
    g++ -std=c++20 -O2 -pthread -w -o "$build/$n" "$src"
    echo "=== $n"
    "$build/$n" || status=1
  done
done
exit $status
