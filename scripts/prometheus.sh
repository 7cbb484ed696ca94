#!/usr/bin/env bash
# Project-owned Prometheus server (Debian's `prometheus` package) for tests and local dashboards.
#   scripts/prometheus.sh start CONFIG.yml | stop | status | url
# Port: ${OUTBOXD_PROMETHEUS_PORT:-59490}, 127.0.0.1 only. Data: .cache/prometheus-<port>/
# (wiped at every start: a test starts from an empty database). status exits 0 when running, 3
# when stopped. The config file is the caller's (e.g. deploy/prometheus/prometheus.yml, or one a
# test writes with its outboxd's admin port).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROM_PORT="${OUTBOXD_PROMETHEUS_PORT:-59490}"
PROM_DIR="$CACHE/prometheus-$PROM_PORT"
PROM_PID="$PROM_DIR/prometheus.pid"
PROM_LOG="$PROM_DIR/prometheus.log"
PROM_URL="http://127.0.0.1:$PROM_PORT"

usage() {
  echo "usage: $0 start CONFIG.yml | stop | status | url" >&2
  exit 2
}

running() {
  [[ -f "$PROM_PID" ]] && pid_alive "$(cat "$PROM_PID")" prometheus
}

ready() { curl -fsS "$PROM_URL/-/ready" >/dev/null; }

start() {
  local config="${1:-}"
  [[ -n "$config" && -f "$config" ]] || die "start needs a Prometheus config file (got '${config}')"
  need_cmd prometheus "package prometheus"
  need_cmd curl "package curl"
  if running; then
    log "stopping the running Prometheus on $PROM_PORT first (a start uses the config given)"
    stop
  fi
  port_in_use "$PROM_PORT" && die_port_busy "$PROM_PORT" "Prometheus (OUTBOXD_PROMETHEUS_PORT)"
  rm -rf "$PROM_DIR"
  mkdir -p "$PROM_DIR/data"
  cp "$config" "$PROM_DIR/prometheus.yml"
  # Rule files next to the config are copied along (the config names them relative to itself).
  local dir
  dir=$(dirname "$config")
  find "$dir" -maxdepth 1 -name '*.rules.yml' -exec cp {} "$PROM_DIR/" \;
  prometheus --config.file="$PROM_DIR/prometheus.yml" \
    --storage.tsdb.path="$PROM_DIR/data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" \
    --web.enable-lifecycle >"$PROM_LOG" 2>&1 &
  echo $! >"$PROM_PID"
  if ! wait_until 30 ready; then
    tail -n 20 "$PROM_LOG" >&2 || true
    die "Prometheus did not become ready on $PROM_URL (log: $PROM_LOG)"
  fi
  log "Prometheus ready on $PROM_URL (data $PROM_DIR)"
}

stop() {
  if ! running; then
    rm -f "$PROM_PID"
    return 0
  fi
  local pid
  pid=$(cat "$PROM_PID")
  kill "$pid"
  wait_until 20 bash -c "! kill -0 $pid 2>/dev/null" || kill -9 "$pid" 2>/dev/null || true
  rm -f "$PROM_PID"
  log "Prometheus on $PROM_PORT stopped"
}

case "${1:-}" in
  start) start "${2:-}" ;;
  stop) stop ;;
  status)
    if running; then
      echo "running on $PROM_URL (pid $(cat "$PROM_PID"), data $PROM_DIR)"
    else
      echo "stopped"
      exit 3
    fi
    ;;
  url) echo "$PROM_URL" ;;
  *) usage ;;
esac
