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
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/python-client/requirements.txt "$root/requirements.installed"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/python-client/requirements.txt
    cp scripts/python-client/requirements.txt "$root/requirements.installed"
fi
rm -rf "$root/gen.tmp" && mkdir -p "$root/gen.tmp"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$root/gen.tmp" --grpc_python_out="$root/gen.tmp" proto/tandem.proto
rm -rf "$root/gen" && mv "$root/gen.tmp" "$root/gen"
echo "$venv/bin/python"
