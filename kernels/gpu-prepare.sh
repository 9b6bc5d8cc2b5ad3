#!/usr/bin/env bash
# Run on a CPU machine: builds the release binaries that kernels/gpu-check.sh runs on a GPU machine and copies
# them (stripped) into .cache/gpu-bin/, small enough to carry to the GPU machine:
#   kernels-unit      the crate's unit tests (incl. the NVRTC compile check)
#   gpu-parity        tests/gpu_parity.rs (NF4 and LoRA: GPU vs CPU reference)
#   gpu-ops-parity    tests/gpu_ops_parity.rs (the LLaMA op set: GPU vs CPU reference, determinism)
#   gpu-ops-bf16      tests/gpu_ops_bf16_parity.rs (the op set with bf16 activations: GPU vs CPU reference)
#   gpu-attention     tests/gpu_attention_parity.rs (flash attention: GPU vs CPU reference, determinism)
#   gpu-attention-tc  tests/gpu_attention_tc_parity.rs (bf16 tensor-core flash attention: GPU vs CPU reference)
#   gpu-engine        worker/tests/gpu_engine.rs (the kernel engine on the CUDA device vs the candle CPU engine)
#   gpu-bench         tests/gpu_bench.rs (the benchmark table)
#   tandem-worker     the worker binary (`tandem-worker bench kernels`, table + JSON), when it builds
set -euo pipefail
cd "$(dirname "$0")/.."
out=.cache/gpu-bin
mkdir -p "$out"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
cargo test --release -p tandem-kernels --no-run
cargo test --release -p tandem-worker --test gpu_engine --no-run
for pair in "tandem_kernels:kernels-unit" "gpu_parity:gpu-parity" "gpu_ops_parity:gpu-ops-parity" "gpu_ops_bf16_parity:gpu-ops-bf16" "gpu_attention_parity:gpu-attention" "gpu_attention_tc_parity:gpu-attention-tc" "gpu_engine:gpu-engine" "gpu_bench:gpu-bench"; do
  src=$(ls -t "$CARGO_TARGET_DIR"/release/deps/"${pair%%:*}"-* 2>/dev/null | grep -v '\.d$' | head -n1)
  test -n "$src" || { echo "no release test binary for ${pair%%:*}" >&2; exit 1; }
  cp "$src" "$out/${pair##*:}" && strip "$out/${pair##*:}" || true
done
if cargo build --release -p tandem-worker; then
  cp "$CARGO_TARGET_DIR/release/tandem-worker" "$out/" && strip "$out/tandem-worker" || true
fi
ls -la "$out"
