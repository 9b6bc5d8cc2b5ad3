#!/usr/bin/env bash
# Makes sure Debian's headless browser and its WebDriver are installed (the dashboard's browser test drives them):
# `chromium` and `chromium-driver`, installed with apt-get when missing. Prints the driver's path.
set -euo pipefail

if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
    echo "ensure-chromium.sh: installing chromium and chromium-driver with apt-get" >&2
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=300 \
            chromium chromium-driver >/dev/null
    }
    if ! apt_install; then
        # Stale or missing package lists: refresh them once and try again.
        apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null
        apt_install
    fi
fi
command -v chromedriver
