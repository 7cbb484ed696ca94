#!/usr/bin/env bash
# The demo: services, build, schema, outboxd, and an application committing messages that arrive
# in Kafka (and one rolled-back transaction whose message never does).
#   scripts/demo.sh        run it (again: it restarts its own outboxd)
#   scripts/demo.sh stop   stop the demo's outboxd (make stop also stops the services)
# OUTBOXD_CONFIG: another configuration file (default config/outboxd.toml).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=demo

# OUTBOXD_DEMO_DIR: where the pidfile and the log go (tests use their own).
DEMO="${OUTBOXD_DEMO_DIR:-$CACHE/demo}"
PIDFILE="$DEMO/outboxd.pid"
TOPIC=orders

# The demo's outboxd, if the pidfile names a running outboxd (not a reused pid).
demo_pid() {
  local pid
  [[ -f "$PIDFILE" ]] || return 1
  pid=$(cat "$PIDFILE")
  pid_alive "$pid" outboxd run || return 1
  printf '%s' "$pid"
}

stop_outboxd() {
  local pid
  if pid=$(demo_pid); then
    kill -TERM "$pid"
    wait_until 20 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    log "stopped the demo's outboxd (pid $pid)"
  elif [[ -f "$PIDFILE" ]]; then
    log "the demo's outboxd (pid $(cat "$PIDFILE")) is not running: nothing to stop"
  fi
  rm -f "$PIDFILE"
}

# die_outboxd <what>: outboxd's own last lines of this run, then the error.
die_outboxd() {
  printf '[%s] outboxd log (%s), last lines:\n' "$LOG_TAG" "$OUTBOXD_LOG" >&2
  tail -n 15 "$OUTBOXD_LOG" | sed 's/^/  | /' >&2
  die "$1"
}

# check_outboxd_alive: dies with outboxd's exit code and log when it is no longer running.
check_outboxd_alive() {
  if ! kill -0 "$OUTBOXD_PID" 2>/dev/null; then
    local rc=0
    wait "$OUTBOXD_PID" || rc=$?
    die_outboxd "outboxd exited with code $rc"
  fi
}

if [[ "${1:-}" == stop ]]; then
  stop_outboxd
  exit 0
fi

"$ROOT/scripts/build.sh"
"$ROOT/scripts/services.sh" start >/dev/null
eval "$("$ROOT/scripts/services.sh" env)"
# config/outboxd.toml takes the two ports from the environment.
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
mkdir -p "$DEMO"
OUTBOXD="$ROOT/build/outboxd"
# OUTBOXD_CONFIG (as for outboxd itself) runs the demo with another configuration file.
CONFIG="${OUTBOXD_CONFIG:-$ROOT/config/outboxd.toml}"
OUTBOXD_LOG="$DEMO/outboxd.log"
psql_app() { PGOPTIONS="-c client_min_messages=warning" "$ROOT/scripts/pg.sh" psql -v ON_ERROR_STOP=1 -q "$@"; }
# Bounded, so that a Kafka that does not answer cannot stall the demo.
kcat_topic() { timeout 10 kcat -C -b "$OUTBOXD_KAFKA_BOOTSTRAP" -t "$TOPIC" -o beginning -e -q "$@"; }

log "applying the schema: outboxd migrate --config ${CONFIG#"$ROOT"/}"
"$OUTBOXD" migrate --config "$CONFIG"

stop_outboxd
# Each run has its own log (the previous one is kept as outboxd.log.1): only this run's lines count.
[[ -f "$OUTBOXD_LOG" ]] && mv -f "$OUTBOXD_LOG" "$OUTBOXD_LOG.1"
log "starting outboxd (log: $OUTBOXD_LOG)"
nohup "$OUTBOXD" run --config "$CONFIG" >"$OUTBOXD_LOG" 2>&1 &
OUTBOXD_PID=$!
echo "$OUTBOXD_PID" >"$PIDFILE"
deadline=$((SECONDS + 30))
until grep -q "leading the outbox" "$OUTBOXD_LOG"; do
  check_outboxd_alive
  ((SECONDS < deadline)) || die_outboxd "outboxd did not lead the outbox within 30 s"
  sleep 0.1
done

RUN="demo-$(date +%s)"
log "the application commits four orders, each with its message, and rolls one back (run $RUN)"
psql_app -o /dev/null <<SQL
CREATE TABLE IF NOT EXISTS demo_orders (id int PRIMARY KEY, status text NOT NULL);
INSERT INTO demo_orders VALUES (42, 'new'), (43, 'new') ON CONFLICT (id) DO UPDATE SET status = 'new';

BEGIN;
UPDATE demo_orders SET status = 'paid' WHERE id = 42;
SELECT outbox.publish('$TOPIC', '42', '{"order":42,"event":"paid"}', '{"demo-run":"$RUN"}');
COMMIT;

BEGIN;
UPDATE demo_orders SET status = 'paid' WHERE id = 43;
SELECT outbox.publish('$TOPIC', '43', jsonb_build_object('order', 43, 'event', 'paid'), '{"demo-run":"$RUN"}');
COMMIT;

BEGIN;
UPDATE demo_orders SET status = 'shipped' WHERE id = 42;
SELECT outbox.publish('$TOPIC', '42', '{"order":42,"event":"shipped"}', '{"demo-run":"$RUN"}');
COMMIT;

BEGIN;
UPDATE demo_orders SET status = 'cancelled' WHERE id = 43;
SELECT outbox.publish('$TOPIC', '43', '{"order":43,"event":"cancelled (rolled back: never sent)"}', '{"demo-run":"$RUN"}');
ROLLBACK;

BEGIN;
UPDATE demo_orders SET status = 'shipped' WHERE id = 43;
SELECT outbox.publish('$TOPIC', '43', '{"order":43,"event":"shipped"}', '{"demo-run":"$RUN"}');
COMMIT;
SQL

log "reading topic '$TOPIC' with kcat (this run's messages):"
count_run() { { kcat_topic -f '%h\n' 2>/dev/null || true; } | grep -c "demo-run=$RUN" || true; }
n=0
deadline=$((SECONDS + 30))
while true; do
  n=$(count_run)
  ((n >= 4)) && break
  check_outboxd_alive
  ((SECONDS < deadline)) || die_outboxd "the messages did not arrive within 30 s"
  sleep 0.2
done
sleep 1 # let a (wrongly) sent fifth message show up, if there were one
kcat_topic -f '  partition %p offset %o  key=%k  value=%s  headers: %h\n' | grep "demo-run=$RUN"
n=$(count_run)
if grep -q cancelled <(kcat_topic -f '%s %h\n' | grep "demo-run=$RUN"); then
  die "the rolled-back message arrived: this is a bug"
fi
log "$n messages arrived, in commit order per key; the rolled-back one did not."
log "outbox rows left: $(psql_app -tA -c 'SELECT count(*) FROM outbox.messages') (removed after Kafka acknowledged them)"
check_outboxd_alive
# The commands below need this run's ports when they are not the defaults.
ports=""
[[ "$OUTBOXD_PG_PORT" != 55432 || "$OUTBOXD_KAFKA_PORT" != 59092 ]] &&
  ports="OUTBOXD_PG_PORT=$OUTBOXD_PG_PORT OUTBOXD_KAFKA_PORT=$OUTBOXD_KAFKA_PORT "
cat <<EOF2

outboxd is still running (pid $OUTBOXD_PID, log $OUTBOXD_LOG). Try:
  ${ports}scripts/pg.sh psql -c "SELECT outbox.publish('$TOPIC', '44', '{\"event\":\"hello\"}')"
  kcat -C -b $OUTBOXD_KAFKA_BOOTSTRAP -t $TOPIC -o beginning -e -f 'key=%k value=%s headers=%h\n'
Stop everything with:  ${ports}make stop
EOF2
