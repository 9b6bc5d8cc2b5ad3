#!/usr/bin/env bash
# A pinned Python virtual environment: `scripts/pyvenv.sh ROOT REQUIREMENTS` makes ROOT/venv with REQUIREMENTS
# installed, rebuilding it only when the requirements changed since the last install. Prints the venv's python.
set -euo pipefail
root="$1"
requirements="$2"
venv="$root/venv"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$root/requirements.installed"; then
    rm -rf "$venv"
    mkdir -p "$root"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$root/requirements.installed"
fi
echo "$venv/bin/python"
