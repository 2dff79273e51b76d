#!/usr/bin/env bash
# Runs schemathesis (the OpenAPI fuzzer, from PyPI) with its arguments, installing it first into a
# virtualenv outside the clone when it is missing. The hostile-input test calls this.
set -euo pipefail
version="4.32.5"
venv="${RAGQ_PY_CACHE:-$HOME/.cache/ragq-py}/schemathesis-$version"
if [[ ! -x "$venv/bin/schemathesis" ]]; then
  echo "installing schemathesis $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version" >&2
fi
exec "$venv/bin/schemathesis" "$@"
