#!/usr/bin/env bash
# End-to-end check and rough drain measurement of the Debezium peer against the project's services
# (scripts/services.sh: PostgreSQL at 127.0.0.1:55432, Kafka at 127.0.0.1:59092; kcat needed).
#
#   e2e.sh [--rows 10000] [--keys 1000] [--tx 1000] [--partitions 3] [--mode live|backlog] [--no-verify]
#          [-- more peer arguments, e.g. --dbz-prop record.processing.threads=1]
#
# live    : start the peer, insert --rows rows (--tx rows a transaction) while it runs; time from the
#           first insert to the last record acknowledged into Kafka.
# backlog : start the peer (creates the slot), stop it, insert the rows, start it again; time from
#           its second start (JVM launch) and from its "ready" to the last record in Kafka: pure drain.
# Then (unless --no-verify) every record is read back with kcat and compared with the table: key =
# aggregateid, value = payload::text, header id = the row id, per-key order by payload "seq". The
# peer's RSS is sampled every 0.5 s. Everything it made (database, slot, publication, offsets) is
# dropped at the end; the topic stays (its name has the run's timestamp).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROWS=10000 KEYS=1000 TX=1000 PARTS=3 MODE=live VERIFY=1 PEER_ARGS=()
while (($#)); do
  case $1 in
    --) shift; PEER_ARGS=("$@"); break ;;
    --rows) ROWS=$2; shift ;; --keys) KEYS=$2; shift ;; --tx) TX=$2; shift ;;
    --partitions) PARTS=$2; shift ;; --mode) MODE=$2; shift ;; --no-verify) VERIFY=0 ;;
    *) echo "e2e.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
PGH=127.0.0.1 PGP=${OUTBOXD_PG_PORT:-55432} KAFKA=${OUTBOXD_KAFKA_BOOTSTRAP:-127.0.0.1:59092}
RUN=$(date +%s)
DB=dbz_e2e_$RUN SLOT=dbz_e2e_$RUN TOPIC=dbz-e2e-$RUN
WORK=$(mktemp -d /tmp/dbz-e2e.XXXXXX)
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h "$PGH" -p "$PGP" -U postgres -d "$DB")
PEER=""

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
stop_peer() {
  [[ -n $PEER ]] || return 0
  kill -TERM "$PEER" 2>/dev/null || true
  wait "$PEER" 2>/dev/null || true
  PEER=""
}
finish() {
  stop_peer
  local i
  for ((i = 0; i < 10; i++)); do   # retried: e.g. PostgreSQL restarted under us
    "$HERE/run.sh" cleanup --pg-host "$PGH" --pg-port "$PGP" --db "$DB" --slot "$SLOT" --offsets-dir "$WORK/off" &&
      psql -X -q -h "$PGH" -p "$PGP" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB" && break
    sleep 3
  done
  ((i < 10)) || echo "e2e: CLEANUP FAILED: drop slot $SLOT and database $DB by hand" >&2
  echo "e2e: logs kept in $WORK" >&2
}
trap finish EXIT

start_peer() {  # $1: log name
  : > "$WORK/$1.out"
  T_START=$(now)
  "$HERE/run.sh" --pg-host "$PGH" --pg-port "$PGP" --db "$DB" --user postgres --table public.outbox \
    --slot "$SLOT" --kafka "$KAFKA" --topic "$TOPIC" --offsets-dir "$WORK/off" \
    --create-topic-partitions "$PARTS" ${PEER_ARGS[@]+"${PEER_ARGS[@]}"} > "$WORK/$1.out" 2> "$WORK/$1.err" &
  PEER=$!
  local i
  for ((i = 0; i < 1200; i++)); do
    grep -qx ready "$WORK/$1.out" && break
    kill -0 "$PEER" 2>/dev/null || { echo "e2e: peer died; see $WORK/$1.err" >&2; exit 1; }
    sleep 0.1
  done
  grep -qx ready "$WORK/$1.out" || { echo "e2e: no ready within 120 s" >&2; exit 1; }
  T_READY=$(now)
  echo "e2e: ready $(since "$T_START") s after launch (stdout: $(wc -l < "$WORK/$1.out") line), RSS $(( $(ps -o rss= -p "$PEER" | tr -d ' ') / 1024 )) MiB"
}

insert_rows() {
  local lo hi
  for ((lo = 1; lo <= ROWS; lo += TX)); do
    hi=$((lo + TX - 1)); ((hi <= ROWS)) || hi=$ROWS
    "${PSQL[@]}" -v lo=$lo -v hi=$hi -v keys="$KEYS" <<'SQL'
INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload)
SELECT 'order', 'agg-' || (g % :keys), 'OrderUpdated',
       jsonb_build_object('seq', g, 'aggregate', 'agg-' || (g % :keys), 'amount', g * 7 % 10007,
                          'note', repeat('x', 120), 'ts', '2026-11-25T00:00:00Z')
FROM generate_series(:lo, :hi) g;
SQL
  done
}

topic_count() {  # records in the (fresh) topic: sum of the partitions' end offsets
  kcat -b "$KAFKA" -Q $(for ((p = 0; p < PARTS; p++)); do printf -- '-t %s:%d:-1 ' "$TOPIC" $p; done) 2>/dev/null \
    | awk '/offset/ {for (i = 1; i <= NF; i++) if ($i == "offset") n += $(i + 1)} END {print n + 0}'
}

RSS_MAX=0
wait_arrival() {  # until ROWS records are in the topic; samples RSS and (time, count) to $WORK/samples
  local n=0 rss i
  : > "$WORK/samples"
  for ((i = 0; i < 6000; i++)); do
    n=$(topic_count)
    echo "$(now) $n" >> "$WORK/samples"
    rss=$(ps -o rss= -p "$PEER" 2>/dev/null | tr -d ' ' || true)
    [[ -n $rss ]] && ((rss > RSS_MAX)) && RSS_MAX=$rss
    ((n >= ROWS)) && return 0
    sleep 0.1
  done
  echo "e2e: only $n of $ROWS records arrived" >&2; exit 1
}
second_half_rate() {  # records/s between the samples where the count crossed ROWS/2 and ROWS (warmed-up JVM)
  awk -v half=$((ROWS / 2)) -v all="$ROWS" '$2 >= half && !t0 {t0 = $1; n0 = $2} $2 >= all {if ($1 > t0) printf "%d", ($2 - n0) / ($1 - t0); else printf "n/a"; exit}' "$WORK/samples"
}

"$HERE/run.sh" build
"$HERE/run.sh" setup --pg-host "$PGH" --pg-port "$PGP" --db "$DB" --table public.outbox
echo "e2e: db $DB, slot/publication $SLOT, topic $TOPIC ($PARTS partitions), $ROWS rows over $KEYS keys, $TX a transaction, mode $MODE"

if [[ $MODE == backlog ]]; then
  start_peer first
  stop_peer
  T0=$(now); insert_rows; echo "e2e: inserted $ROWS rows in $(since "$T0") s (peer stopped)"
  start_peer second
  wait_arrival
  T_END=$(now)
  echo "e2e: drained $ROWS in $(echo "$T_END - $T_START" | bc) s from JVM launch, $(echo "$T_END - $T_READY" | bc) s from ready" \
       "($(echo "$ROWS / ($T_END - $T_READY)" | bc) records/s after ready, $(second_half_rate) records/s over the second half)"
else
  start_peer only
  T0=$(now)
  (insert_rows; now > "$WORK/inserts_done") &
  INS=$!
  wait_arrival
  T_END=$(now)
  wait $INS
  T_INS=$(cat "$WORK/inserts_done")
  echo "e2e: inserts took $(echo "$T_INS - $T0" | bc) s; all $ROWS in Kafka $(echo "$T_END - $T0" | bc) s after the first insert," \
       "$(echo "$T_END - $T_INS" | bc) s after the last ($(echo "$ROWS / ($T_END - $T0)" | bc) records/s overall, $(second_half_rate) over the second half)"
fi
echo "e2e: peer RSS max $((RSS_MAX / 1024)) MiB while draining, now $(( $(ps -o rss= -p "$PEER" | tr -d ' ') / 1024 )) MiB"

if ((VERIFY)); then
  kcat -b "$KAFKA" -C -t "$TOPIC" -o beginning -e -q -f '%p\t%o\t%k\t%h\t%s\n' > "$WORK/got.tsv"
  "${PSQL[@]}" -tA -F $'\t' -c "SELECT aggregateid, 'id=' || id, payload::text FROM public.outbox" | sort > "$WORK/want.tsv"
  cut -f3- "$WORK/got.tsv" | sort > "$WORK/got3.tsv"
  echo "e2e: topic has $(wc -l < "$WORK/got.tsv") records, table $(wc -l < "$WORK/want.tsv") rows, distinct keys $(cut -f3 "$WORK/got.tsv" | sort -u | wc -l)"
  if cmp -s "$WORK/want.tsv" "$WORK/got3.tsv"; then
    echo "e2e: OK: (key, headers, value) of every record = (aggregateid, id=<row id>, payload::text) of every row"
  else
    echo "e2e: MISMATCH between table and topic (diff $WORK/want.tsv $WORK/got3.tsv)" >&2; exit 1
  fi
  python3 - "$WORK/got.tsv" <<'PY'
import json, sys
last, bad, parts = {}, 0, {}
for line in open(sys.argv[1]):
    p, o, k, h, v = line.rstrip('\n').split('\t', 4)
    s = json.loads(v)['seq']
    bad += k in last and s <= last[k]
    last[k] = s
    parts.setdefault(k, set()).add(p)
split = sum(len(x) > 1 for x in parts.values())
print(f"e2e: per-key order violations {bad}, keys on more than one partition {split}")
sys.exit(1 if bad or split else 0)
PY
fi
stop_peer
echo "e2e: peer stopped: $(grep -o 'stopped: .*' "$WORK"/*.err | tail -1)"
