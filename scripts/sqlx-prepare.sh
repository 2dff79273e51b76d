#!/usr/bin/env bash
# Regenerates .sqlx/: the query data `sqlx::query_file!` checks SQL against at build time, so that
# builds need no database and a statement that no longer fits the schema fails the build.
# Run after changing a statement under src/**/sql or workers/sql, or a migration.
#   bash scripts/sqlx-prepare.sh          rewrite .sqlx/
#   bash scripts/sqlx-prepare.sh --check  fail if .sqlx/ is not what the statements and migrations give
# (This is what `cargo sqlx prepare --workspace` does; the macros write the data themselves when
# SQLX_OFFLINE_DIR is set, so no sqlx-cli is needed.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ragq-target}"
db="ragq_sqlx_prepare_$$"
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE $db"
trap 'psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db"' EXIT
for f in migrations/*.sql; do
  psql -q -h 127.0.0.1 -U postgres -d "$db" -v ON_ERROR_STOP=1 -f "$f" > /dev/null
done
out="$(mktemp -d)"
# Touch the crates holding queries so their macros run again, online, writing into $out.
touch src/lib.rs workers/src/lib.rs
DATABASE_URL="postgres://postgres@127.0.0.1/$db" SQLX_OFFLINE_DIR="$out" \
  cargo check --quiet -p ragq -p ragq-workers
if [[ "${1:-}" == "--check" ]]; then
  if ! diff -r "$out" .sqlx > /dev/null; then
    diff -r "$out" .sqlx || true
    echo ".sqlx/ is stale: run bash scripts/sqlx-prepare.sh and commit it" >&2
    exit 1
  fi
  echo ".sqlx/ matches the statements and migrations"
else
  rm -rf .sqlx && mkdir .sqlx && cp "$out"/*.json .sqlx/
  echo "wrote $(ls .sqlx | wc -l) queries to .sqlx/"
fi
rm -rf "$out"
