#!/usr/bin/env bash
# The demo: services, build, schema, outboxd, and an application committing messages that arrive
# in Kafka (and one rolled-back transaction whose message never does).
#   scripts/demo.sh        run it (again: it restarts its own outboxd)
#   scripts/demo.sh stop   stop the demo's outboxd (make stop also stops the services)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=demo

DEMO="$CACHE/demo"
PIDFILE="$DEMO/outboxd.pid"
TOPIC=orders

stop_outboxd() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    wait_until 20 bash -c "! kill -0 $(cat "$PIDFILE")" || kill -KILL "$(cat "$PIDFILE")" 2>/dev/null || true
    log "stopped the demo's outboxd"
  fi
  rm -f "$PIDFILE"
}

if [[ "${1:-}" == stop ]]; then
  stop_outboxd
  exit 0
fi

"$ROOT/scripts/build.sh"
"$ROOT/scripts/services.sh" start
eval "$("$ROOT/scripts/services.sh" env)"
# config/outboxd.toml takes the two ports from the environment.
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
mkdir -p "$DEMO"
OUTBOXD="$ROOT/build/outboxd"
CONFIG="$ROOT/config/outboxd.toml"
psql_app() { "$ROOT/scripts/pg.sh" psql -v ON_ERROR_STOP=1 -q "$@"; }

log "applying the schema: outboxd migrate --config config/outboxd.toml"
"$OUTBOXD" migrate --config "$CONFIG"

stop_outboxd
log "starting outboxd (log: $DEMO/outboxd.log)"
nohup "$OUTBOXD" run --config "$CONFIG" >>"$DEMO/outboxd.log" 2>&1 &
echo $! >"$PIDFILE"
wait_until 30 grep -q "leading the outbox" "$DEMO/outboxd.log" ||
  die "outboxd did not start; see $DEMO/outboxd.log"

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
count_run() { kcat -C -b "$OUTBOXD_KAFKA_BOOTSTRAP" -t "$TOPIC" -o beginning -e -q \
  -f '%h\n' 2>/dev/null | grep -c "demo-run=$RUN" || true; }
n=0
for _ in $(seq 150); do
  n=$(count_run)
  ((n >= 4)) && break
  sleep 0.2
done
((n >= 4)) || die "the messages did not arrive; see $DEMO/outboxd.log"
sleep 1 # let a (wrongly) sent fifth message show up, if there were one
kcat -C -b "$OUTBOXD_KAFKA_BOOTSTRAP" -t "$TOPIC" -o beginning -e -q \
  -f '  partition %p offset %o  key=%k  value=%s  headers: %h\n' | grep "demo-run=$RUN"
n=$(count_run)
if grep -q cancelled <(kcat -C -b "$OUTBOXD_KAFKA_BOOTSTRAP" -t "$TOPIC" -o beginning -e -q -f '%s %h\n' | grep "demo-run=$RUN"); then
  die "the rolled-back message arrived: this is a bug"
fi
log "$n messages arrived, in commit order per key; the rolled-back one did not."
log "outbox rows left: $(psql_app -tA -c 'SELECT count(*) FROM outbox.messages') (removed after Kafka acknowledged them)"
cat <<EOF2

outboxd is still running (pid $(cat "$PIDFILE"), log $DEMO/outboxd.log). Try:
  scripts/pg.sh psql -c "SELECT outbox.publish('$TOPIC', '44', '{\"event\":\"hello\"}')"
  kcat -C -b $OUTBOXD_KAFKA_BOOTSTRAP -t $TOPIC -o beginning -e -f 'key=%k value=%s headers=%h\n'
Stop everything with:  make stop
EOF2
