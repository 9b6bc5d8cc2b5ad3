#!/usr/bin/env bash
# The test command (README, `.ci/run`): installs what the tests need into .cache/, then lints and tests the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
