#!/usr/bin/env bash
# Debezium benchmark peer for outboxd: Debezium's PostgreSQL connector (pgoutput) + outbox
# EventRouter in the embedded engine, producing to Kafka (acks=all, idempotent, at-least-once).
#
#   run.sh build                      build if needed (Maven; cached under <repo>/.cache/debezium)
#   run.sh setup   [--pg-host H] [--pg-port P] [--user U] --db DB --table SCHEMA.TABLE
#                                     create the database if missing, and the outbox table
#   run.sh cleanup [--pg-host H] [--pg-port P] [--user U] --db DB --slot NAME [--offsets-dir DIR]
#                                     drop the replication slot and publication NAME (and the
#                                     offsets file); a leftover slot makes PostgreSQL retain WAL
#   run.sh [run] --pg-host H --pg-port P --db DB --user U --table SCHEMA.TABLE --slot NAME \
#                --kafka BOOTSTRAP --topic TOPIC --offsets-dir DIR [--password PW] \
#                [--create-topic-partitions N] [--dbz-prop k=v]... [--kafka-prop k=v]...
#                                     build if needed, then exec the JVM. stdout gets exactly one
#                                     line, "ready", once the replication stream is up; logs go to
#                                     stderr. Stop it with SIGTERM.
# The publication is named like the slot. Env: DEBEZIUM_PEER_JAVA_OPTS (extra JVM options),
# DEBEZIUM_PEER_CACHE (build cache, default <repo>/.cache/debezium), PGPASSWORD.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${DEBEZIUM_PEER_CACHE:-$REPO/.cache/debezium}
JAR=$CACHE/target/debezium-peer.jar
LIB=$CACHE/lib

die() { echo "run.sh: $*" >&2; exit 2; }

build() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/build.lock"
  flock 9
  # Up to date: the jar and the lib stamp exist and nothing in pom.xml or src/ is newer.
  if [[ -f $JAR && -f $LIB/.complete && -z $(find "$HERE/pom.xml" "$HERE/src" -newer "$JAR" -print -quit) ]]; then
    flock -u 9; return 0
  fi
  echo "run.sh: building the Debezium peer (Maven) ..." >&2
  rm -rf "$LIB"
  local t0=$SECONDS
  # (pipefail is on: a failed build fails here; sed only strips the colour codes mvn -q still prints)
  mvn -q -B -Dstyle.color=never -f "$HERE/pom.xml" -Doutboxd.cache="$CACHE" package 2>&1 \
    | sed 's/\x1b\[[0-9;]*m//g' >&2
  touch "$JAR" "$LIB/.complete"
  echo "run.sh: built in $((SECONDS - t0)) s: $JAR + $(ls "$LIB" | wc -l) jars in $LIB" >&2
  flock -u 9
}

# Connection options shared by setup and cleanup; defaults from PG* env, then the project's cluster.
PGH=${PGHOST:-127.0.0.1}; PGP=${PGPORT:-55432}; PGU=${PGUSER:-postgres}
DB=""; TABLE=""; SLOT=""; OFFSETS=""
parse_pg_args() {
  while (($#)); do
    [[ $# -ge 2 ]] || die "missing value for $1"
    case $1 in
      --pg-host) PGH=$2 ;; --pg-port) PGP=$2 ;; --user) PGU=$2 ;; --db) DB=$2 ;;
      --table) TABLE=$2 ;; --slot) SLOT=$2 ;; --offsets-dir) OFFSETS=$2 ;;
      *) die "unknown option $1" ;;
    esac
    shift 2
  done
  [[ -n $DB ]] || die "--db is required"
}
psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$PGH" -p "$PGP" -U "$PGU" "$@"; }

setup() {
  parse_pg_args "$@"
  [[ $TABLE == *.* ]] || die "--table SCHEMA.TABLE is required"
  if [[ -z $(psql_ -d postgres -tA -v db="$DB" <<<"SELECT 1 FROM pg_database WHERE datname = :'db'") ]]; then
    psql_ -d postgres -v db="$DB" <<<'CREATE DATABASE :"db"'
  fi
  psql_ -d "$DB" -v schema="${TABLE%%.*}" -v tbl="${TABLE#*.}" -f "$HERE/setup.sql"
}

cleanup() {
  parse_pg_args "$@"
  [[ -n $SLOT ]] || die "--slot is required"
  # A peer that was just sent SIGTERM may still hold the slot for a moment: wait up to 15 s.
  local i active
  for ((i = 0; i < 150; i++)); do
    active=$(psql_ -d "$DB" -tA -v slot="$SLOT" <<<"SELECT active FROM pg_replication_slots WHERE slot_name = :'slot'")
    [[ $active == t ]] || break
    sleep 0.1
  done
  [[ $active != t ]] || { echo "run.sh: slot $SLOT is still in use (is a peer running?)" >&2; exit 1; }
  psql_ -d "$DB" -v slot="$SLOT" >/dev/null <<'SQL'
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = :'slot';
DROP PUBLICATION IF EXISTS :"slot";
SQL
  if [[ -n $OFFSETS ]]; then rm -f "$OFFSETS/offsets.dat"; fi
  echo "run.sh: dropped slot and publication $SLOT${OFFSETS:+, removed $OFFSETS/offsets.dat}" >&2
}

case ${1:-} in
  build) build ;;
  setup) shift; setup "$@" ;;
  cleanup) shift; cleanup "$@" ;;
  run|--*)
    [[ ${1:-} == run ]] && shift
    build
    # shellcheck disable=SC2086
    exec java -Xmx512m -XX:+ExitOnOutOfMemoryError ${DEBEZIUM_PEER_JAVA_OPTS:-} \
      -cp "$JAR:$LIB/*" outboxd.bench.DebeziumPeer "$@" ;;
  *) sed -n '2,22p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
