#!/usr/bin/env bash
# Makes sure Debian's chromium is installed: the dashboard's test drives a real headless browser.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [[ -n "${CHROMIUM:-}" ]]; then
  exit 0
fi
echo "browser.sh: installing chromium (apt-get) for the dashboard's browser test"
export DEBIAN_FRONTEND=noninteractive
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
sudo_if_needed apt-get update -qq
sudo_if_needed apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core > /dev/null
command -v chromium >/dev/null
