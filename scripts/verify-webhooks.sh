#!/usr/bin/env bash
# Verifies webhooks with the official Standard Webhooks library (PyPI `standardwebhooks`), installed
# into a virtualenv outside the clone when missing. Reads JSON lines {"secret", "id", "timestamp",
# "signature", "body"} on stdin; prints `ok` or `fail: <why>` per line. The governance test calls this.
set -euo pipefail
version="1.1.0"
venv="${RAGQ_PY_CACHE:-$HOME/.cache/ragq-py}/standardwebhooks-$version"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import standardwebhooks" 2>/dev/null; then
  echo "installing standardwebhooks $version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==$version" >&2
fi
read -r -d '' program <<'PY' || true
import json
import sys

from standardwebhooks.webhooks import Webhook

for line in sys.stdin:
    m = json.loads(line)
    headers = {
        "webhook-id": m["id"],
        "webhook-timestamp": str(m["timestamp"]),
        "webhook-signature": m["signature"],
    }
    try:
        Webhook(m["secret"]).verify(m["body"], headers)
        print("ok")
    except Exception as e:  # the library raises WebhookVerificationError
        print(f"fail: {e}")
PY
exec "$venv/bin/python" -c "$program"
