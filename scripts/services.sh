#!/usr/bin/env bash
# Start/stop the dev services outboxd needs: PostgreSQL (scripts/pg.sh) and a
# single-node Kafka (scripts/kafka.sh single).
#   scripts/services.sh start|stop|status|env
# start (and env) print the export lines on stdout, logs go to stderr:
#   eval "$(scripts/services.sh start)"
# status exits 0 when both run, 3 otherwise.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

S="$ROOT/scripts"

case "${1:-}" in
  start)
    "$S/pg.sh" start
    "$S/kafka.sh" start single
    "$S/pg.sh" env
    "$S/kafka.sh" env single
    ;;
  env)
    "$S/pg.sh" env
    "$S/kafka.sh" env single
    ;;
  stop)
    rc=0
    "$S/kafka.sh" stop single || rc=1
    "$S/pg.sh" stop || rc=1
    exit "$rc"
    ;;
  status)
    rc=0
    "$S/pg.sh" status || rc=3
    "$S/kafka.sh" status single || rc=3
    exit "$rc"
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
