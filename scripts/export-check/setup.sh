#!/usr/bin/env bash
# A virtual environment with MLflow and TensorBoard (requirements.txt) under .cache/export-check/, for reading
# Tandem's MLflow and TensorBoard exports back. Idempotent; prints the environment's python on its last line.
#
#   scripts/export-check/setup.sh
#   .cache/export-check/venv/bin/python scripts/export-check/check.py --help
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/pyvenv.sh "${TANDEM_CACHE:-.cache}/export-check" scripts/export-check/requirements.txt
