#!/usr/bin/env bash
# Runs the whole system on this machine (database `ragq_demo`, vhost `ragq-demo`, sim provider,
# webhook receiver, workers, api) and prints what happened. Extra arguments go to `ragq demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
exec cargo run --quiet -p ragq-cli -- demo "$@"
