#!/usr/bin/env bash
# Waking without a pause: what the relay does per message at low rates, with each
# relay.sleep_below_rate, in counts a loaded machine does not change (PostgreSQL's own statistics
# of the run's database) and CPU from /proc (bench/cost.sh), beside the wall-clock latency.
#   bench/wake.sh            WAKE_RATES ("10 40 100"), WAKE_VARIANTS ("0 50"), WAKE_SECONDS (20)
# Per message: fetch rounds (scans of outbox.relay_state less publish()'s and the flag updates'),
# sleeping-flag updates (each is a sleep or a wake; a sleep means the next commit notifies), all
# transactions of the database less the writer's, and CPU of outboxd plus its relay session.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
LOG_TAG=wake

RATES=${WAKE_RATES:-"10 40 100"}
VARIANTS=${WAKE_VARIANTS:-"0 50"}
SECS=${WAKE_SECONDS:-20}
eval "$("$ROOT/scripts/services.sh" env)"
B="$ROOT/build/bench/outboxd_bench"
OUTBOXD="$ROOT/build/outboxd"
PGPORT=${OUTBOXD_PG_PORT:-55432}
DB=outboxd_wake
CONN="host=127.0.0.1 port=$PGPORT dbname=$DB user=postgres"
K=$OUTBOXD_KAFKA_BOOTSTRAP
W="$CACHE/wake"
mkdir -p "$W"
RUN=$(date +%s)
psql_db() { psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$DB" -qtAX "$@"; }
source "$ROOT/bench/cost.sh"

# relay_state scans, its updates, and the database's commits, as PostgreSQL counted them.
counts() {
  psql_db -F ' ' -c "SELECT t.seq_scan, t.n_tup_upd, d.xact_commit
    FROM pg_stat_user_tables t, pg_stat_database d
    WHERE t.relid = 'outbox.relay_state'::regclass AND d.datname = current_database()"
}

for rate in $RATES; do
  for v in $VARIANTS; do
    psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qtAX -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
    cat >"$W/outboxd.toml" <<TOML
[postgres]
conninfo = "$CONN"
[kafka]
bootstrap_servers = "$K"
[relay]
sleep_below_rate = $v
[log]
level = "warn"
[admin]
listen = ""
TOML
    "$OUTBOXD" migrate --config "$W/outboxd.toml" >/dev/null
    topic="wake-$rate-$v-$RUN"
    "$B" topic --bootstrap "$K" --topic "$topic" --partitions 6 >/dev/null
    "$OUTBOXD" run --config "$W/outboxd.toml" >>"$W/outboxd.log" 2>&1 &
    OPID=$!
    sleep 2 # leading, asleep on LISTEN
    psql_db -c "SELECT pg_stat_force_next_flush()" >/dev/null
    read -r scans0 upd0 xact0 < <(counts)
    cost_mark "$W/cost-a"
    paced=$("$B" paced --conninfo "$CONN" --topic "$topic" --rate "$rate" --seconds "$SECS" --connections 1 --out "$W/commits.txt")
    n=$(wc -l <"$W/commits.txt")
    until [[ $(psql_db -c "SELECT count(*) FROM outbox.messages") == 0 ]]; do sleep 0.1; done
    cost_mark "$W/cost-b"
    cost=$(cost_json "$W/cost-a" "$W/cost-b" "$n")
    lat=$("$B" latency --bootstrap "$K" --topic "$topic" --commits "$W/commits.txt")
    kill -TERM "$OPID"
    wait "$OPID" || true
    sleep 1.5 # the relay's backends have ended and sent their statistics
    read -r scans1 upd1 xact1 < <(counts)
    python3 - "$rate" "$v" "$n" "$((scans1 - scans0))" "$((upd1 - upd0))" "$((xact1 - xact0))" "$cost" "$lat" <<'PY'
import json, sys
rate, v, n, scans, upd, xact = (int(x) for x in sys.argv[1:7])
cost, lat = json.loads(sys.argv[7]), json.loads(sys.argv[8])
cpu = lambda party: cost.get(party + "_cpu_s_per_M")
# publish() reads relay_state once per message, each flag update scans it once
fetches = scans - n - upd
print(json.dumps({"rate": rate, "sleep_below_rate": v, "messages": n,
  "fetch_rounds_per_msg": round(fetches / n, 2), "flag_updates_per_msg": round(upd / n, 2),
  "other_xacts_per_msg": round((xact - n) / n, 2),
  "cpu_s_per_million_outboxd": cpu("outboxd"), "cpu_s_per_million_relay_pg": cpu("relay_pg"),
  "p50_ms_from_commit_returned": lat.get("from_commit_returned_p50_ms"),
  "p99_ms_from_commit_returned": lat.get("from_commit_returned_p99_ms")}))
PY
  done
done
