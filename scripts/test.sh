#!/usr/bin/env bash
# The test command (README, `.ci/run`): installs what the tests need into .cache/, then lints and tests the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# NVRTC (no GPU needed) so the kernels crate compiles every .cu file for sm_80 and sm_90; required here.
./scripts/fetch-nvrtc.sh
export LD_LIBRARY_PATH="$PWD/.cache/nvrtc/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TANDEM_REQUIRE_NVRTC=1
# The Slurm tests start a one-node cluster (scripts/slurm/cluster.sh); stop its daemons when the tests end.
trap 'scripts/slurm/cluster.sh stop >/dev/null 2>&1 || true' EXIT
cargo test --workspace
