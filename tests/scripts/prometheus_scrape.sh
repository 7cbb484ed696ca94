#!/usr/bin/env bash
# A real Prometheus (Debian's, started by scripts/prometheus.sh on OUTBOXD_PROMETHEUS_PORT) scrapes
# a running outboxd's admin listener every second. Through Prometheus's HTTP API the backlog and
# oldest-unsent-age series must exist and move: up while outboxd cannot reach Kafka and rows are
# written, back to 0 once an outboxd with Kafka has delivered them (kcat, an independent
# consumer, counts the records). `promtool check metrics` passes on /metrics taken mid-drain.
# Usage: prometheus_scrape.sh OUTBOXD_BINARY CREATE_TOPIC_BINARY. Needs the services (scripts/services.sh start);
# without them or without Prometheus it is skipped (exit 77), except under CI=true: it fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
OUTBOXD="${1:?usage: prometheus_scrape.sh OUTBOXD_BINARY CREATE_TOPIC_BINARY}"
CREATE_TOPIC="${2:?usage: prometheus_scrape.sh OUTBOXD_BINARY CREATE_TOPIC_BINARY}"
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
KAFKA="127.0.0.1:$OUTBOXD_KAFKA_PORT"
PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$OUTBOXD_PG_PORT" -U postgres)
PROM_URL=$("$ROOT/scripts/prometheus.sh" url)
ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }
missing() {
  if ci; then
    echo "FAIL: $* (under CI a missing piece fails)" >&2
    exit 1
  fi
  echo "SKIP: $*" >&2
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  [[ -f "$work/outboxd.log" ]] && tail -n 30 "$work/outboxd.log" >&2
  exit 1
}
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  missing "prometheus/promtool not installed (scripts/deps.sh)"
fi
"${PSQL[@]}" -d postgres -c 'SELECT 1' >/dev/null 2>&1 || missing "PostgreSQL on $OUTBOXD_PG_PORT"
kcat -b "$KAFKA" -L -m 5 >/dev/null 2>&1 || missing "Kafka on $KAFKA"

work=$(mktemp -d)
db="prom_$$"
topic="prom_scrape_$$"
pid=""
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  "$ROOT/scripts/prometheus.sh" stop || true
  "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"${PSQL[@]}" -d postgres -c "CREATE DATABASE $db" >/dev/null
# The broker does not auto-create topics.
"$CREATE_TOPIC" "$KAFKA" "$topic" 1 || fail "could not create topic $topic"
admin_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

config() {  # config FILE BOOTSTRAP
  cat >"$1" <<TOML
[postgres]
conninfo = "host=127.0.0.1 port=$OUTBOXD_PG_PORT dbname=$db user=postgres"
[kafka]
bootstrap_servers = "$2"
[relay]
shutdown_timeout = "1s"
[admin]
listen = "127.0.0.1:$admin_port"
TOML
}
# Phase 1: Kafka unreachable (a port where nothing listens): rows pile up in the outbox.
config "$work/stuck.toml" "127.0.0.1:1"
config "$work/live.toml" "$KAFKA"
"$OUTBOXD" migrate --config "$work/live.toml" >/dev/null
"$OUTBOXD" run --config "$work/stuck.toml" >"$work/outboxd.log" 2>&1 &
pid=$!

cat >"$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: outboxd
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
YML
"$ROOT/scripts/prometheus.sh" start "$work/prometheus.yml"

# query EXPR: the first result's value ("" when there is none).
query() {
  curl -fsS --get "$PROM_URL/api/v1/query" --data-urlencode "query=$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
# wait_query SECONDS EXPR PYTHON-CONDITION-ON-v
wait_query() {
  local deadline=$((SECONDS + $1)) v
  while ((SECONDS < deadline)); do
    v=$(query "$2" || true)
    if [[ -n "$v" ]] && python3 -c "import sys; v=float(sys.argv[1]); sys.exit(0 if ($3) else 1)" "$v"; then
      echo "ok: $2 = $v ($3)"
      return 0
    fi
    sleep 0.5
  done
  fail "$2 never satisfied $3 within $1 s (last value '${v:-none}')"
}

wait_query 30 'up{job="outboxd"}' 'v == 1'
wait_query 30 'outboxd_backlog_messages' 'v == 0'
"${PSQL[@]}" -d "$db" -c "SELECT outbox.publish('$topic', 'k' || (i % 10), 'payload ' || i)
                          FROM generate_series(1, 500) AS i" >/dev/null
wait_query 30 'outboxd_backlog_messages' 'v == 500'
wait_query 30 'outboxd_oldest_unsent_age_seconds' 'v >= 2'

# Phase 2: the same admin port, an outboxd that reaches Kafka: the backlog drains.
kill "$pid"
wait "$pid" || true
"$OUTBOXD" run --config "$work/live.toml" >>"$work/outboxd.log" 2>&1 &
pid=$!
metrics_mid=""
for _ in $(seq 1 100); do  # /metrics while it drains (or right after), for promtool
  metrics_mid=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" 2>/dev/null) && break
  sleep 0.1
done
[[ -n "$metrics_mid" ]] || fail "no /metrics from the second outboxd"
lint=$(promtool check metrics <<<"$metrics_mid" 2>&1) || fail "promtool check metrics: $lint"
[[ -z "$lint" ]] || fail "promtool check metrics: $lint"
echo "ok: promtool check metrics passes on /metrics"
wait_query 60 'outboxd_backlog_messages' 'v == 0'
wait_query 30 'outboxd_oldest_unsent_age_seconds' 'v == 0'
wait_query 30 'outboxd_messages_acknowledged_total' 'v >= 500'
wait_query 30 'max_over_time(outboxd_backlog_messages[5m])' 'v == 500'
wait_query 30 'max_over_time(outboxd_oldest_unsent_age_seconds[5m])' 'v >= 2'
wait_query 30 'outboxd_commit_to_ack_seconds_count' 'v >= 500'
received=$(kcat -C -b "$KAFKA" -t "$topic" -o beginning -e -q -f '%o\n' 2>/dev/null | wc -l)
((received >= 500)) || fail "kcat read $received records of $topic, expected 500"
echo "ok: kcat read $received records; Prometheus saw the backlog rise to 500 and drain to 0"
