#!/usr/bin/env bash
# The benchmarks (README "Performance"): backlog drain beside its two ceilings, live latency at
# fixed rates, the cost to the application's commits, outboxd's peak RSS, and the Debezium peer on
# the same workload. Prints a table; writes bench/results/latest.json (and a dated copy).
#   BENCH_MESSAGES (1000000)  BENCH_RATES ("5000 7000")  BENCH_SECONDS (60)  BENCH_PEER (1: run Debezium)
#   BENCH_ONLY: a subset of drain,latency,inflight,appcost,peer,eo,norelay,ab,peerapp,profile,logcost,
#   writepath
#   (and ab and delay, run only when named), e.g. "drain" (then results go to bench/results/<date>-drain-<N>.json,
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
OUTBOXD=${BENCH_OUTBOXD:-$ROOT/build/outboxd}  # another build: its binary (and its schema)
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
pgbench_db() { /usr/lib/postgresql/15/bin/pgbench -h 127.0.0.1 -p "$PGPORT" -U postgres -n "$@" "$DB"; }
record() { echo "{\"name\": \"$1\", \"result\": $2}" >>"$RESULTS"; log "$1: $2"; }
source "$ROOT/bench/cost.sh"  # cost_mark / cost_json: CPU seconds and WAL bytes per message

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
$RELAY_EXTRA
[log]
level = "warn"
[admin]
listen = "127.0.0.1:0"
TOML
}
KAFKA_EXTRA=  # extra [kafka.properties] lines for a variant run
RELAY_EXTRA=  # extra [relay] lines for a variant run
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
OPID=; cost_mark "$W/cost-a" checkpoint
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
cost_mark "$W/cost-b"
rss=$(stop_outboxd)
record "$1_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$N")"
# What the removals leave to VACUUM (the dead rows), per message: WAL and PostgreSQL CPU.
OPID=; cost_mark "$W/cost-a"; psql_db -c "VACUUM outbox.messages"; cost_mark "$W/cost-b"
record "$1_vacuum_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$N")"
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
  cost_mark "$W/cost-a" checkpoint
  paced=$("$B" paced --conninfo "$CONN" --topic "$name-$RUN" --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/commits-$rate.txt")
  cost_mark "$W/cost-b"
  record "${name}_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$(wc -l <"$W/commits-$rate.txt")")"
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
pgbench_tps() { pgbench_db -c 8 -j 2 -T 20 -f "$W/publish.sql" 2>/dev/null | awk '/tps = / {print int($3); exit}'; }
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

# The Debezium peer (parts 4 and 7): peer TOPIC starts it and waits for "ready"; stop_peer prints its peak RSS.
D="$ROOT/bench/debezium/run.sh"
peer() { # peer TOPIC: starts the peer, waits for "ready"
  "$D" --pg-host 127.0.0.1 --pg-port "$PGPORT" --db "$DB" --user postgres --table public.dbz_outbox \
    --slot dbz_bench --kafka "$K" --topic "$1" --offsets-dir "$W/dbz-offsets" \
    >"$W/peer.out" 2>>"$W/peer.log" &
  PPID_=$!
  wait_until 120 grep -q ready "$W/peer.out" || die "Debezium peer did not start; see $W/peer.log"
}
stop_peer() { local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$PPID_/status"); kill -TERM "$PPID_"; wait "$PPID_" || true; echo "$rss"; }

# 4. The Debezium peer: the same drain (a backlog in its replication slot) and live latency.
if [[ $PEER == 1 ]] && want peer; then
  "$D" build >&2
  fresh_db
  "$D" setup --pg-port "$PGPORT" --db "$DB" --table public.dbz_outbox >&2
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
  "$B" topic --bootstrap "$K" --topic dbz-drain-$RUN --partitions 6 >/dev/null
  peer "dbz-drain-$RUN"; stop_peer >/dev/null          # creates the slot: the backlog waits in it
  "$B" load --conninfo "$CONN" --count "$N" --topic x --target public.dbz_outbox >/dev/null
  cost_mark "$W/cost-a"
  t0=$(now); peer "dbz-drain-$RUN"
  "$B" wait-topic --bootstrap "$K" --topic dbz-drain-$RUN --count "$N" --timeout 1800 >/dev/null
  t1=$(now); cost_mark "$W/cost-b"; rss=$(stop_peer)
  record debezium_drain_cost "$(cost_json "$W/cost-a" "$W/cost-b" "$N")"
  record debezium_drain "$(python3 -c "print('{\"messages\": %d, \"seconds\": %.2f, \"msgs_per_s\": %.0f, \"peak_rss_kib\": $rss}' % ($N, $t1-$t0, $N/($t1-$t0)))")"
  for rate in $RATES; do
    "$B" topic --bootstrap "$K" --topic "dbz-live-$rate-$RUN" --partitions 6 >/dev/null
    "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
    peer "dbz-live-$rate-$RUN"; sleep 1
    cost_mark "$W/cost-a"
    paced=$("$B" paced --conninfo "$CONN" --topic x --target public.dbz_outbox --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/dbz-commits-$rate.txt")
    cost_mark "$W/cost-b"
    record "debezium_latency_${rate}_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$(wc -l <"$W/dbz-commits-$rate.txt")")"
    lat=$("$B" latency --bootstrap "$K" --topic "dbz-live-$rate-$RUN" --commits "$W/dbz-commits-$rate.txt")
    rss=$(stop_peer)
    record "debezium_latency_$rate" "$(python3 -c "import json; a=json.loads('$paced'); b=json.loads('$lat'); a.update(b); a['offered_per_s']=$rate; a['peak_rss_kib']=$rss; print(json.dumps(a))")"
  done
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
fi

# 5. Exactly-once (relay.delivery = "exactly_once") beside at-least-once, in the same run: the
# backlog drain at each batch size (one transaction per batch) next to at-least-once's drain, the
# smallest batch that keeps exactly-once within 0.7 of it, and live latency measured the same way
# for both modes: commit -> the record reached a live read_committed consumer (`visible`).
#   BENCH_EO_BATCHES ("1000 2000 5000")
if want eo; then
  EO_BATCHES=${BENCH_EO_BATCHES:-"1000 2000 5000"}
  # Each run has its own transactional.id: a fresh database must not meet an earlier run's checkpoint.
  eo_relay() { # eo_relay BATCH NAME
    RELAY_EXTRA=$(printf 'delivery = "exactly_once"\nbatch_size = %s\nmax_in_flight = %s\ntransactional_id = "bench-%s-%s"' \
      "$1" "$(($1 > 20000 ? $1 : 20000))" "$2" "$RUN")
  }
  run_visible() { # run_visible RATE NAME
    local rate=$1 name=$2 vpid
    fresh_db
    "$B" topic --bootstrap "$K" --topic "$name-$RUN" --partitions 6 >/dev/null
    start_outboxd
    sleep 2
    rm -f "$W/visible-commits.txt"
    "$B" visible --bootstrap "$K" --topic "$name-$RUN" --commits "$W/visible-commits.txt" >"$W/visible.out" &
    vpid=$!
    paced=$("$B" paced --conninfo "$CONN" --topic "$name-$RUN" --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/visible-commits.tmp")
    mv "$W/visible-commits.tmp" "$W/visible-commits.txt"  # whole, so `visible` reads it complete
    wait "$vpid" || true
    rss=$(stop_outboxd)
    record "$name" "$(python3 -c "import json; a=json.loads('$paced'); b=json.loads('$(cat "$W/visible.out")'); a.update(b); a['offered_per_s']=$rate; a['peak_rss_kib']=$rss; print(json.dumps(a))")"
  }
  RELAY_EXTRA=
  run_drain eo_alo_drain
  for bs in $EO_BATCHES; do
    eo_relay "$bs" "drain$bs"
    run_drain "eo_drain_batch$bs"
  done
  for rate in $RATES; do
    RELAY_EXTRA=
    run_visible "$rate" "eo_alo_visible_$rate"
    eo_relay 1000 "visible$rate"
    run_visible "$rate" "eo_visible_$rate"
  done
  RELAY_EXTRA=
  python3 - "$RESULTS" "$EO_BATCHES" "$RATES" <<'PY' >&2
import json, sys
r = {}
for line in open(sys.argv[1]):
    row = json.loads(line); r[row["name"]] = row["result"]
alo = r["eo_alo_drain"]["msgs_per_s"]
print("exactly-once vs at-least-once, same run (a loaded machine: the ratios are the figures)")
print(f"  drain at-least-once (batch 1000): {alo:,.0f} msgs/s")
within = None
for bs in sys.argv[2].split():
    eo = r[f"eo_drain_batch{bs}"]["msgs_per_s"]
    print(f"  drain exactly-once, batch {bs}: {eo:,.0f} msgs/s, ratio {eo / alo:.2f}")
    if within is None and eo / alo >= 0.7:
        within = bs
print(f"  smallest batch within 0.7 of at-least-once: {within or 'none of ' + sys.argv[2]}")
for rate in sys.argv[3].split():
    a, e = r[f"eo_alo_visible_{rate}"], r[f"eo_visible_{rate}"]
    print(f"  live {rate}/s, commit -> read_committed consumer: at-least-once p50 {a['visible_p50_ms']} / p99 "
          f"{a['visible_p99_ms']} ms; exactly-once p50 {e['visible_p50_ms']} / p99 {e['visible_p99_ms']} ms")
PY
fi

# 6. Cost per message without any relay: the same paced load into each outbox table with
# nothing reading it, so that the WAL bytes and PostgreSQL CPU per message of the application's own
# insert can be subtracted from the runs above. BENCH_ONLY=norelay
if want norelay; then
  OPID=
  for rate in $RATES; do
    fresh_db
    cost_mark "$W/cost-a"
    "$B" paced --conninfo "$CONN" --topic "norelay-$RUN" --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/norelay-$rate.txt" >/dev/null
    cost_mark "$W/cost-b"
    record "norelay_latency_${rate}_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$(wc -l <"$W/norelay-$rate.txt")")"
    if [[ $PEER == 1 ]]; then
      "$ROOT/bench/debezium/run.sh" setup --pg-port "$PGPORT" --db "$DB" --table public.dbz_outbox >&2
      cost_mark "$W/cost-a"
      "$B" paced --conninfo "$CONN" --topic x --target public.dbz_outbox --rate "$rate" --seconds "$SECS" --connections 16 --out "$W/norelay-$rate.txt" >/dev/null
      cost_mark "$W/cost-b"
      record "norelay_dbz_latency_${rate}_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$(wc -l <"$W/norelay-$rate.txt")")"
    fi
  done
fi

# 7. A/B of outboxd builds or settings, interleaved (A, B, A, B, ...) so that the machine's load
# falls on all alike. BENCH_AB_VARIANTS ("A B"); for each variant V: BENCH_AB_V_BIN (its binary,
# default build/outboxd; "none": no relay, for an appcost baseline), BENCH_AB_V_RELAY (extra
# [relay] lines), BENCH_AB_V_KAFKA (extra [kafka.properties] lines); BENCH_AB_BIN, BENCH_AB_RELAY,
# BENCH_AB_KAFKA are B's too. BENCH_AB_ROUNDS (2), BENCH_AB_RUNS ("drain latency"; also
# "appcost": 20 s of pgbench, 8 clients, with the variant running). Every run records its cost
# (CPU and WAL per message) and its rate, latency or tps, named ab_<V>_<round>_<run>. BENCH_ONLY=ab
if [[ ",$ONLY," == *",ab,"* ]]; then  # only when named: a full run has no variants to compare
  BENCH_AB_B_BIN=${BENCH_AB_B_BIN:-${BENCH_AB_BIN:-}}
  BENCH_AB_B_RELAY=${BENCH_AB_B_RELAY:-${BENCH_AB_RELAY:-}}
  BENCH_AB_B_KAFKA=${BENCH_AB_B_KAFKA:-${BENCH_AB_KAFKA:-}}
  echo "SELECT outbox.publish('ab-appcost-$RUN', 'key-' || (random() * 1000)::int, repeat('x', 200));" >"$W/ab-publish.sql"
  BASE_OUTBOXD=$OUTBOXD
  for round in $(seq 1 "${BENCH_AB_ROUNDS:-2}"); do
    for v in ${BENCH_AB_VARIANTS:-A B}; do
      bin=BENCH_AB_${v}_BIN relay=BENCH_AB_${v}_RELAY kafka=BENCH_AB_${v}_KAFKA
      OUTBOXD=${!bin:-$BASE_OUTBOXD}; RELAY_EXTRA=${!relay:-}; KAFKA_EXTRA=${!kafka:-}
      for what in ${BENCH_AB_RUNS:-drain latency}; do
        if [[ $what == appcost ]]; then
          fresh_db
          "$B" topic --bootstrap "$K" --topic "ab-appcost-$RUN" --partitions 6 >/dev/null 2>&1 || true
          OPID=
          [[ $OUTBOXD != none ]] && { start_outboxd; sleep 1; }
          cost_mark "$W/cost-a" checkpoint
          out=$(pgbench_db -c 8 -j 2 -T 20 -f "$W/ab-publish.sql" 2>/dev/null)
          cost_mark "$W/cost-b"
          [[ $OUTBOXD != none ]] && stop_outboxd >/dev/null
          tx=$(awk '/number of transactions actually processed/ {print $NF}' <<<"$out" | cut -d/ -f1)
          record "ab_${v}_${round}_appcost_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$tx")"
          record "ab_${v}_${round}_appcost" "{\"tps\": $(awk '/tps = / {print int($3); exit}' <<<"$out")}"
        elif [[ $OUTBOXD == none ]]; then
          continue
        elif [[ $what == drain ]]; then
          run_drain "ab_${v}_${round}_drain"
        else
          for rate in $RATES; do run_latency "$rate" "ab_${v}_${round}_latency_$rate"; done
        fi
      done
    done
  done
  OUTBOXD=$BASE_OUTBOXD; RELAY_EXTRA=; KAFKA_EXTRA=
fi

# 8. The application's cost with each relay, side by side: pgbench (8 clients, 20 s, one
# message per transaction) without a relay and with it, for outboxd (outbox.publish, notify on) and
# for the Debezium peer (an INSERT into its outbox table, the slot streaming), with the CPU and WAL
# per transaction of each run. BENCH_AB_ROUNDS (2) rounds, interleaved. BENCH_ONLY=peerapp
if [[ $PEER == 1 ]] && want peerapp; then
  "$D" build >&2
  fresh_db
  "$D" setup --pg-port "$PGPORT" --db "$DB" --table public.dbz_outbox >&2
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
  "$B" topic --bootstrap "$K" --topic peerapp-$RUN --partitions 6 >/dev/null
  "$B" topic --bootstrap "$K" --topic dbz-peerapp-$RUN --partitions 6 >/dev/null
  echo "SELECT outbox.publish('peerapp-$RUN', 'key-' || (random() * 1000)::int, repeat('x', 200));" >"$W/publish.sql"
  echo "INSERT INTO public.dbz_outbox (aggregatetype, aggregateid, type, payload) VALUES ('bench', 'key-' || (random() * 1000)::int, 'e', ('{\"pad\":\"' || repeat('x', 190) || '\"}')::jsonb);" >"$W/dbz.sql"
  pgbench_cost() { # pgbench_cost SCRIPT NAME: a 20 s pgbench run; records tps, CPU and WAL per transaction
    local out tx
    cost_mark "$W/cost-a"
    out=$(pgbench_db -c 8 -j 2 -T 20 -f "$1" 2>/dev/null)
    cost_mark "$W/cost-b"
    tx=$(awk '/number of transactions actually processed/ {print $NF}' <<<"$out" | cut -d/ -f1)
    record "$2" "$(python3 -c "import json; d=json.loads('$(cost_json "$W/cost-a" "$W/cost-b" "$tx")'); d['tps']=int(float('$(awk '/tps = / {print $3; exit}' <<<"$out")')); print(json.dumps(d))")"
  }
  for round in $(seq 1 "${BENCH_AB_ROUNDS:-2}"); do
    OPID=; PPID_=
    pgbench_cost "$W/publish.sql" "peerapp_${round}_outbox_without"
    start_outboxd; sleep 1; pgbench_cost "$W/publish.sql" "peerapp_${round}_outbox_with_outboxd"; stop_outboxd >/dev/null
    OPID=
    pgbench_cost "$W/dbz.sql" "peerapp_${round}_dbz_without"
    peer "dbz-peerapp-$RUN"; sleep 1; pgbench_cost "$W/dbz.sql" "peerapp_${round}_dbz_with_peer"; stop_peer >/dev/null
    PPID_=
    psql_db -c "TRUNCATE outbox.messages, public.dbz_outbox"
  done
  "$D" cleanup --pg-port "$PGPORT" --db "$DB" --slot dbz_bench --offsets-dir "$W/dbz-offsets" >&2 || true
fi

# 9. A CPU profile (perf, cpu-clock samples with call graphs) of outboxd and of its PostgreSQL
# backend during the drain and during a live run at the first rate of BENCH_RATES; the reports go to
# $W/profile-{drain,live}.txt (sorted by process, library and function). BENCH_ONLY=profile
if want profile; then
  command -v perf >/dev/null || die "perf is missing (Debian: apt-get install linux-perf)"
  relay_backend() { psql_db -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'outboxd host=% pid=$OPID'" | head -1; }
  has_backend() { [[ -n $(relay_backend) ]]; }
  outbox_empty() { [[ $(psql_db -c "SELECT count(*) FROM (SELECT 1 FROM outbox.messages LIMIT 1) x") == 0 ]]; }
  profile() { # profile NAME SECONDS: samples outboxd and its backend
    local bp=""
    wait_until 20 has_backend || die "no backend of outboxd $OPID"
    bp=$(relay_backend)
    perf record -q -e cpu-clock -F 999 -g -p "$OPID,$bp" -o "$W/perf-$1.data" -- sleep "$2" >/dev/null 2>&1
    perf report -i "$W/perf-$1.data" --stdio --no-children --sort comm,dso,symbol -g none --percent-limit 0.7 \
      2>/dev/null >"$W/profile-$1.txt"
    log "profile of $1: $W/profile-$1.txt"
  }
  fresh_db
  "$B" topic --bootstrap "$K" --topic "profile-drain-$RUN" --partitions 6 >/dev/null
  "$B" load --conninfo "$CONN" --count "$N" --topic "profile-drain-$RUN" >/dev/null
  psql_db -c "VACUUM ANALYZE outbox.messages"
  start_outboxd
  profile drain "${BENCH_PROFILE_SECONDS:-4}"
  wait_until 600 outbox_empty
  stop_outboxd >/dev/null
  rate=${RATES%% *}
  fresh_db
  "$B" topic --bootstrap "$K" --topic "profile-live-$RUN" --partitions 6 >/dev/null
  start_outboxd; sleep 1
  "$B" paced --conninfo "$CONN" --topic "profile-live-$RUN" --rate "$rate" --seconds 15 --connections 16 --out "$W/profile-commits.txt" >/dev/null &
  sleep 3; profile live 10; wait $!
  stop_outboxd >/dev/null
fi

# 10. What removing rows one by one costs ("the outbox as a log"): the relay's own rounds
# without Kafka (outboxd_bench db-ceiling) over the same backlog with the DELETE and without it
# (fetch only, as a log that is never deleted from), and the VACUUM that the DELETE leaves;
# CPU of all of PostgreSQL and WAL per message. BENCH_AB_ROUNDS (2) rounds. BENCH_ONLY=logcost
if want logcost; then
  OPID=
  for round in $(seq 1 "${BENCH_AB_ROUNDS:-2}"); do
    for remove in 1 0; do
      fresh_db
      "$B" load --conninfo "$CONN" --count "$N" --topic x >/dev/null
      psql_db -c "VACUUM ANALYZE outbox.messages"
      cost_mark "$W/cost-a" checkpoint
      r=$("$B" db-ceiling --conninfo "$CONN" --remove "$remove")
      cost_mark "$W/cost-b"
      record "logcost_${round}_remove${remove}" "$r"
      record "logcost_${round}_remove${remove}_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$N")"
      if [[ $remove == 1 ]]; then
        cost_mark "$W/cost-a"; psql_db -c "VACUUM outbox.messages"; cost_mark "$W/cost-b"
        record "logcost_${round}_vacuum_cost" "$(cost_json "$W/cost-a" "$W/cost-b" "$N")"
      fi
    done
  done
fi

# 11. Delayed delivery (BENCH_ONLY=delay): BENCH_DELAY_DUE messages due now, drained by outboxd
# (release into the outbox, then the relay) while BENCH_DELAY_WAITING future-dated ones wait, beside
# the same drain with none waiting; and the cost of one release statement in both. The waiting rows
# must cost nothing: they are never in outbox.messages, and the release reads the due index only.
run_delay() { # run_delay NAME WAITING DUE
  local name=$1 waiting=$2 due=$3 topic="$1-$RUN" t0 t1 rss release_ms
  fresh_db
  "$B" topic --bootstrap "$K" --topic "$topic" --partitions 6 >/dev/null
  psql_db -c "INSERT INTO outbox.delayed (id, topic, key, payload, deliver_at, due_at)
    SELECT nextval('outbox.messages_id_seq'), '$topic', 'wait-' || (i % 1000), convert_to(repeat('x', 200), 'UTF8'),
           now() + interval '1 day' + i * interval '1 ms', now() + interval '1 day' + i * interval '1 ms'
      FROM generate_series(1, $waiting) i" \
    -c "INSERT INTO outbox.delayed (id, topic, key, payload, deliver_at, due_at)
    SELECT nextval('outbox.messages_id_seq'), '$topic', 'due-' || (i % 1000), convert_to(repeat('x', 200), 'UTF8'),
           now() - interval '1 s', now() - interval '1 s' FROM generate_series(1, $due) i" \
    -c "VACUUM ANALYZE outbox.delayed"
  # One release of 1,000 rows and its rollback: the statement's own cost, without outboxd.
  release_ms=$(psql_db -c "BEGIN" -c "\\timing on" -c "SELECT outbox.release_due(1000)" -c "ROLLBACK" |
    awk '/^Time:/ {print $2; exit}')
  t0=$(now)
  start_outboxd
  wait_until 1800 bash -c "[[ \$(psql -h 127.0.0.1 -p $PGPORT -U postgres -d $DB -qtAX -c \
    \"SELECT (SELECT count(*) FROM outbox.delayed WHERE due_at <= now()) + (SELECT count(*) FROM outbox.messages)\") == 0 ]]" ||
    die "delay bench: the due messages were not delivered"
  t1=$(now)
  rss=$(stop_outboxd)
  [[ $(psql_db -c "SELECT count(*) FROM outbox.delayed") == "$waiting" ]] || die "delay bench: waiting rows changed"
  record "$name" "$(python3 -c "
print('{\"waiting\": %d, \"due\": %d, \"seconds\": %.2f, \"msgs_per_s\": %.0f, \"release_1000_ms\": %s, \"peak_rss_kib\": $rss}' % ($waiting, $due, $t1-$t0, $due/($t1-$t0), '$release_ms' or 'null'))")"
}
if [[ $ONLY == *delay* ]]; then
  log "delay: the machine may be loaded (other work shares the cores): compare the two runs, not absolutes"
  run_delay delay_none_waiting 0 "${BENCH_DELAY_DUE:-100000}"
  run_delay delay_waiting "${BENCH_DELAY_WAITING:-1000000}" "${BENCH_DELAY_DUE:-100000}"
fi

# 12. The application's write path (BENCH_ONLY=writepath): the time of one transaction that
# calls a write function once, beside one that INSERTs the same row: pgbench, one client, for
# BENCH_WRITEPATH_SECONDS (5) each, with synchronous_commit = off so that no fsync is timed; the best
# of 3. No relay runs. The difference to the INSERT is what the function adds to every message (one
# call per transaction, as an application calls it: a loop of calls in one transaction would keep
# what PostgreSQL caches per transaction and hide a statement planned at every call).
if want writepath; then
  fresh_db
  declare -A WRITE=(
    [insert]="INSERT INTO outbox.messages (topic, key, payload) VALUES ('w', 'key-' || (random() * 1000)::int, convert_to(repeat('x', 200), 'UTF8'));"
    [publish_bytea]="SELECT outbox.publish('w', 'key-' || (random() * 1000)::int, convert_to(repeat('x', 200), 'UTF8'));"
    [publish_text]="SELECT outbox.publish('w', 'key-' || (random() * 1000)::int, repeat('x', 200));"
    [publish_jsonb]="SELECT outbox.publish('w', 'key-' || (random() * 1000)::int, jsonb_build_object('x', repeat('x', 190)));"
    [prepare_text]="SELECT outbox.prepare('w', 'key-' || (random() * 1000)::int, repeat('x', 200));")
  for f in insert publish_bytea publish_text publish_jsonb prepare_text; do
    echo "${WRITE[$f]}" >"$W/write-$f.sql"
    best=0
    for _ in 1 2 3; do
      tps=$(PGOPTIONS="-c synchronous_commit=off" pgbench_db -c 1 -j 1 -T "${BENCH_WRITEPATH_SECONDS:-5}" \
        -f "$W/write-$f.sql" 2>/dev/null | awk '/tps = / {print $3; exit}')
      best=$(python3 -c "print(max($best, $tps))")
    done
    record "writepath_$f" "{\"tps\": $best, \"us_per_tx\": $(python3 -c "print(round(1e6 / $best, 1))")}"
  done
fi

python3 "$ROOT/bench/report.py" "$RESULTS" "$ROOT/bench/results" "${ONLY:+$ONLY-$N}"
