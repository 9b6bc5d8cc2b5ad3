#!/usr/bin/env bash
# Builds the Python client of Tandem's gRPC API: a virtual environment with the pinned grpcio packages
# (requirements.txt) and the stubs generated from proto/tandem.proto, all under .cache/python-client/.
# Idempotent; prints the environment's python on its last line.
#
#   scripts/python-client/setup.sh
#   PYTHONPATH=.cache/python-client/gen .cache/python-client/venv/bin/python scripts/python-client/tandem_client.py ...
set -euo pipefail
cd "$(dirname "$0")/../.."
root="${TANDEM_CACHE:-.cache}/python-client"
venv="$root/venv"
scripts/pyvenv.sh "$root" scripts/python-client/requirements.txt >/dev/null
rm -rf "$root/gen.tmp" && mkdir -p "$root/gen.tmp"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$root/gen.tmp" --grpc_python_out="$root/gen.tmp" proto/tandem.proto
rm -rf "$root/gen" && mv "$root/gen.tmp" "$root/gen"
echo "$venv/bin/python"
