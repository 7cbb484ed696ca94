#!/usr/bin/env bash
# The benchmarks (README "Performance"): backlog drain beside its two ceilings, live latency at
# fixed rates, the cost to the application's commits, outboxd's peak RSS, and the Debezium peer on
# the same workload. Prints a table; writes bench/results/latest.json (and a dated copy).
#   BENCH_MESSAGES (1000000)  BENCH_RATES ("5000 7000")  BENCH_SECONDS (60)  BENCH_PEER (1: run Debezium)
#   BENCH_ONLY: a subset of drain,latency,inflight,appcost,peer, e.g. "drain" (then results go to bench/results/<date>-drain-<N>.json,
#   not latest.json). A 10M drain: BENCH_MESSAGES=10000000 BENCH_ONLY=drain make bench
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
LOG_TAG=bench

N=${BENCH_MESSAGES:-1000000}
RATES=${BENCH_RATES:-"5000 7000"}
SECS=${BENCH_SECONDS:-60}
PEER=${BENCH_PEER:-1}
ONLY=${BENCH_ONLY:-}
want() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
"$ROOT/scripts/build.sh" >&2
eval "$("$ROOT/scripts/services.sh" start)"
B="$ROOT/build/bench/outboxd_bench"
OUTBOXD="$ROOT/build/outboxd"
PGPORT=${OUTBOXD_PG_PORT:-55432}
DB=outboxd_bench
CONN="host=127.0.0.1 port=$PGPORT dbname=$DB user=postgres"
K=$OUTBOXD_KAFKA_BOOTSTRAP
W="$CACHE/bench"
mkdir -p "$W"
RESULTS="$W/results.jsonl"
RUN=$(date +%s)  # topics are new in every run, so no earlier run's records are read
: >"$RESULTS"
psql_db() { psql -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$DB" -qtAX "$@"; }
record() { echo "{\"name\": \"$1\", \"result\": $2}" >>"$RESULTS"; log "$1: $2"; }

fresh_db() {
  psql -h 127.0.0.1 -p "$PGPORT" -U postgres -qtAX -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  write_config notify true
  "$OUTBOXD" migrate --config "$W/outboxd.toml" >/dev/null
}
write_config() { # write_config notify true|false
  cat >"$W/outboxd.toml" <<TOML
[postgres]
conninfo = "$CONN"
[kafka]
bootstrap_servers = "$K"
[kafka.properties]
$KAFKA_EXTRA
[relay]
notify = $2
[log]
level = "warn"
[admin]
listen = "127.0.0.1:0"
TOML
}
KAFKA_EXTRA=  # extra [kafka.properties] lines for a variant run
OPID=
start_outboxd() {
  "$OUTBOXD" run --config "$W/outboxd.toml" >>"$W/outboxd.log" 2>&1 &
  OPID=$!
}
stop_outboxd() { # prints peak RSS in KiB
  local rss
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$OPID/status")
  kill -TERM "$OPID"; wait "$OPID" || true
  echo "$rss"
}
now() { date +%s.%N; }

# run_drain NAME: the backlog drain (BENCH_MESSAGES rows already in the outbox) into a new topic.
run_drain() {
fresh_db
"$B" topic --bootstrap "$K" --topic "$1-$RUN" --partitions 6 >/dev/null
"$B" load --conninfo "$CONN" --count "$N" --topic "$1-$RUN" >/dev/null
psql_db -c "VACUUM ANALYZE outbox.messages"
first=$(psql_db -c "SELECT min(id) FROM outbox.messages")
t0=$(now)
start_outboxd
# Progress = lowest id left; the first and last 10% give the rate at both ends of the backlog.
# Start-up (process start to the first removed row) is reported apart from the rates.
tenth=$((N / 10)); t_first=""; t_last_start=""; t_go=""
while true; do
  low=$(psql_db -c "SELECT coalesce(min(id), -1) FROM outbox.messages")
  t=$(now)
  [[ -z $t_go && $low != "$first" ]] && t_go=$t
  [[ $low == -1 ]] && break
  done_n=$((low - first))
  [[ -z $t_first && $done_n -ge $tenth ]] && t_first=$t
  [[ -z $t_last_start && $done_n -ge $((N - tenth)) ]] && t_last_start=$t
  sleep 0.05
done
t1=$(now)
rss=$(stop_outboxd)
record "$1" "$(python3 -c "
n=$N; t0=$t0; t1=$t1; tg=${t_go:-$t0}; tf=${t_first:-$t1}; tl=${t_last_start:-$t0}
print('{\"messages\": %d, \"seconds\": %.2f, \"msgs_per_s\": %.0f, \"startup_s\": %.2f, \"first_tenth_msgs_per_s\": %.0f, \"last_tenth_msgs_per_s\": %.0f, \"peak_rss_kib\": $rss}' % (n, t1-t0, n/(t1-t0), tg-t0, n/10/max(1e-3, tf-tg), n/10/max(1e-3, t1-tl)))")"
}

# 1. Backlog drain, and the two ceilings of the same messages.
if want drain; then
run_drain drain
"$B" load --conninfo "$CONN" --count "$N" --topic drain-$RUN >/dev/null
psql_db -c "VACUUM ANALYZE outbox.messages"
record db_ceiling "$("$B" db-ceiling --conninfo "$CONN")"
"$B" topic --bootstrap "$K" --topic kafka-ceiling-$RUN --partitions 6 >/dev/null
record kafka_ceiling "$("$B" kafka-ceiling --bootstrap "$K" --topic kafka-ceiling-$RUN --count "$N" 2>/dev/null)"
fi

# run_latency RATE NAME: single-message transactions at a fixed rate, commit -> broker append time.
run_latency() {
  local rate=$1 name=$2
  fresh_db
  "$B" topic --bootstrap "$K" --topic "$name-$RUN" --partitions 6 >/dev/null
  start_outboxd
  sleep 1
  paced=$("$B" paced --conninfo "$CONN" --topic "$name-$RUN" --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/commits-$rate.txt")
  lat=$("$B" latency --bootstrap "$K" --topic "$name-$RUN" --commits "$W/commits-$rate.txt")
  rss=$(stop_outboxd)
  record "$name" "$(python3 -c "import json; a=json.loads('$paced'); b=json.loads('$lat'); a.update(b); a['offered_per_s']=$rate; a['peak_rss_kib']=$rss; print(json.dumps(a))")"
}

# 2. Live latency at each rate.
for rate in $RATES; do
  want latency || break
  run_latency "$rate" "latency_$rate"
done

# 2b. The same drain and live latency with 5 requests in flight per broker (librdkafka's default,
# and outboxd's before the fix for implicit acks), beside the default of 1 measured above.
if want inflight; then
  KAFKA_EXTRA='"max.in.flight.requests.per.connection" = 5'
  run_drain inflight5_drain
  for rate in $RATES; do run_latency "$rate" "inflight5_latency_$rate"; done
  KAFKA_EXTRA=
fi

# 3. Cost to the application: pgbench commit rate of one publish per transaction.
if want appcost; then
echo "SELECT outbox.publish('appcost-$RUN', 'key-' || (random() * 1000)::int, repeat('x', 200));" >"$W/publish.sql"
pgbench_tps() { /usr/lib/postgresql/15/bin/pgbench -h 127.0.0.1 -p "$PGPORT" -U postgres -n -c 8 -j 2 -T 20 \
  -f "$W/publish.sql" "$DB" 2>/dev/null | awk '/tps = / {print int($3); exit}'; }
fresh_db
"$B" topic --bootstrap "$K" --topic appcost-$RUN --partitions 6 >/dev/null
off=$(pgbench_tps)
psql_db -c "TRUNCATE outbox.messages"
start_outboxd; sleep 1; on_notify=$(pgbench_tps); stop_outboxd >/dev/null
psql_db -c "TRUNCATE outbox.messages"
write_config notify false
start_outboxd; sleep 1; on_poll=$(pgbench_tps); stop_outboxd >/dev/null
record app_cost "{\"tps_without_outboxd\": $off, \"tps_with_outboxd_notify\": $on_notify, \"tps_with_outboxd_no_notify\": $on_poll}"
fi

# 4. The Debezium peer: the same drain (a backlog in its replication slot) and live latency.
if [[ $PEER == 1 ]] && want peer; then
  D="$ROOT/bench/debezium/run.sh"
  "$D" build >&2
  fresh_db
  "$D" setup --pg-port "$PGPORT" --db "$DB" --table public.dbz_outbox >&2
  peer() { # peer TOPIC: starts the peer, waits for "ready"
    "$D" --pg-host 127.0.0.1 --pg-port "$PGPORT" --db "$DB" --user postgres --table public.dbz_outbox \
      --slot dbz_bench --kafka "$K" --topic "$1" --offsets-dir "$W/dbz-offsets" \
      >"$W/peer.out" 2>>"$W/peer.log" &
    PPID_=$!
    wait_until 120 grep -q ready "$W/peer.out" || die "Debezium peer did not start; see $W/peer.log"
  }
  stop_peer() { local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$PPID_/status"); kill -TERM "$PPID_"; wait "$PPID_" || true; echo "$rss"; }
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
  "$B" topic --bootstrap "$K" --topic dbz-drain-$RUN --partitions 6 >/dev/null
  peer "dbz-drain-$RUN"; stop_peer >/dev/null          # creates the slot: the backlog waits in it
  "$B" load --conninfo "$CONN" --count "$N" --topic x --target public.dbz_outbox >/dev/null
  t0=$(now); peer "dbz-drain-$RUN"
  "$B" wait-topic --bootstrap "$K" --topic dbz-drain-$RUN --count "$N" --timeout 1800 >/dev/null
  t1=$(now); rss=$(stop_peer)
  record debezium_drain "$(python3 -c "print('{\"messages\": %d, \"seconds\": %.2f, \"msgs_per_s\": %.0f, \"peak_rss_kib\": $rss}' % ($N, $t1-$t0, $N/($t1-$t0)))")"
  for rate in $RATES; do
    "$B" topic --bootstrap "$K" --topic "dbz-live-$rate-$RUN" --partitions 6 >/dev/null
    "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
    peer "dbz-live-$rate-$RUN"; sleep 1
    paced=$("$B" paced --conninfo "$CONN" --topic x --target public.dbz_outbox --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/dbz-commits-$rate.txt")
    lat=$("$B" latency --bootstrap "$K" --topic "dbz-live-$rate-$RUN" --commits "$W/dbz-commits-$rate.txt")
    rss=$(stop_peer)
    record "debezium_latency_$rate" "$(python3 -c "import json; a=json.loads('$paced'); b=json.loads('$lat'); a.update(b); a['offered_per_s']=$rate; a['peak_rss_kib']=$rss; print(json.dumps(a))")"
  done
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
fi

python3 "$ROOT/bench/report.py" "$RESULTS" "$ROOT/bench/results" "${ONLY:+$ONLY-$N}"
