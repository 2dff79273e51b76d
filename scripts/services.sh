#!/usr/bin/env bash
# Makes sure the local PostgreSQL and RabbitMQ that ragq's demo and tests use are running, starting
# them if they have stopped. Databases, vhosts and migrations are created by ragq itself.
set -euo pipefail

wait_for() { # name, check command...
  local name=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  echo "services.sh: $name did not come up" >&2
  return 1
}

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "services.sh: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start
  wait_for PostgreSQL pg_isready -q -h 127.0.0.1 -p 5432
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "services.sh: starting RabbitMQ"
  rabbitmq-server -detached
  wait_for RabbitMQ rabbitmqctl -q await_startup
fi
