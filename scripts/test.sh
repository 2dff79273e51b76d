#!/usr/bin/env bash
# Runs every test: unit tests, and end-to-end tests against the real PostgreSQL and RabbitMQ.
# Each test creates its own database and vhost and removes them afterwards, so runs can overlap.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
exec cargo test --all-targets --no-fail-fast "$@"
