#!/usr/bin/env bash
# Installs NVRTC (CUDA's run-time compiler; no GPU needed) from the pip package nvidia-cuda-nvrtc 13.0.x into
# .cache/nvrtc, so the tests compile every kernel in kernels/cuda/ for sm_80 and sm_90 (idempotent).
# The libraries land in .cache/nvrtc/nvidia/cu13/lib (libnvrtc.so.13 and libnvrtc-builtins.so.13.0 beside it);
# put that folder on LD_LIBRARY_PATH (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${TANDEM_CACHE:-.cache}/nvrtc"
lib="$dest/nvidia/cu13/lib"
if [ -f "$lib/libnvrtc.so.13" ] && [ -f "$lib/libnvrtc-builtins.so.13.0" ]; then
  exit 0
fi
echo "installing nvidia-cuda-nvrtc 13.0.x into $dest"
python3 -m pip install --quiet --no-deps --only-binary=:all: --target "$dest.tmp" "nvidia-cuda-nvrtc==13.0.*"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
test -f "$lib/libnvrtc.so.13"
