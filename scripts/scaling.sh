#!/usr/bin/env bash
# The scaling run: `ragq bench` with 1, 2 and 4 workers over 1,000 to 100,000 queued jobs, as a
# table. Usage: bash scripts/scaling.sh [workers...] (default 1 2 4); JOBS="1000 10000 100000".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --release --quiet
bin="${CARGO_TARGET_DIR:-target}/release/ragq"
workers=("${@:-1 2 4}")
printf '%-8s %-8s %10s %22s %14s %18s %s\n' workers jobs jobs/s "in-worker p50/p99 ms" "CPU us/job" "peak RSS MiB" correct
for w in ${workers[@]}; do
  for n in ${JOBS:-1000 10000 100000}; do
    "$bin" bench --jobs "$n" --workers "$w" --no-baseline --json 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
rss = "/".join("%.0f" % m for m in r["worker_peak_rss_mb"])
print("%-8d %-8d %10.0f %22s %14.0f %18s %s" % (r["workers"], r["jobs"], r["jobs_per_sec"],
      "%.1f / %.1f" % (r["in_worker_ms_p50"], r["in_worker_ms_p99"]), r["worker_cpu_us_per_job"], rss,
      "ok" if r["correctness"]["ok"] else "FAILED"))'
  done
done
