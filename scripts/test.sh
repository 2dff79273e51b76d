#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the real PostgreSQL and RabbitMQ.
# Each test creates its own database and vhost and removes them afterwards, so runs can overlap.
# The Qdrant-server suite is reported as ignored unless QDRANT_URL names a server. The dashboard's
# test drives Debian's chromium, installed here when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/browser.sh
bash scripts/schemathesis.sh --version > /dev/null
extra=()
if [[ -n "${QDRANT_URL:-}" ]]; then extra=(-- --include-ignored); fi
exec cargo test --workspace --all-targets --no-fail-fast "$@" "${extra[@]}"
