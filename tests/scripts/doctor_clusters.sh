#!/usr/bin/env bash
# `outboxd doctor` against the project's single broker (replication factor 1: it must report the
# risk and exit 1) and the 3-broker cluster (replication factor 3, min.insync.replicas 2: it must
# pass, exit 0), with one outbox whose message names a topic. The brokers do not auto-create
# topics: the test creates its topic on each (with the broker's default replication factor), and a
# second topic it never creates must show as missing. Starts the cluster if it is not running (and
# stops it again then). Usage: doctor_clusters.sh BUILD_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BUILD=${1:?build directory}
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
fail() { echo "FAIL: $*" >&2; exit 1; }
eval "$("$ROOT/scripts/services.sh" env)"
SINGLE=$OUTBOXD_KAFKA_BOOTSTRAP
CLUSTER=$("$ROOT/scripts/kafka.sh" env cluster | sed -n 's/^export OUTBOXD_KAFKA_BOOTSTRAP=//p')
psql_admin() { psql -X -q -h 127.0.0.1 -p "$OUTBOXD_PG_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres -tAc "SELECT 1" >/dev/null || fail "PostgreSQL is not running (scripts/services.sh start)"

tmp=$(mktemp -d)
db="doctor_$$"
cluster_started=false
cleanup() {
  if [[ -n "${OPID:-}" ]]; then kill "$OPID" 2>/dev/null || true; fi
  psql_admin -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [[ $cluster_started == true ]]; then "$ROOT/scripts/kafka.sh" stop cluster >/dev/null 2>&1 || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
if ! "$ROOT/scripts/kafka.sh" status cluster >/dev/null 2>&1; then
  cluster_started=true
  "$ROOT/scripts/kafka.sh" start cluster >&2 || fail "the 3-broker cluster did not start"
fi

psql_admin -d postgres -c "CREATE DATABASE $db"
for name in single cluster; do
  bootstrap=$SINGLE
  [[ $name == cluster ]] && bootstrap=$CLUSTER
  # No admin listener: nothing here reads it, and a fixed port may be taken (the demo's outboxd).
  printf '[postgres]\nconninfo = "host=127.0.0.1 port=%s dbname=%s user=postgres"\n[kafka]\nbootstrap_servers = "%s"\n[log]\nlevel = "warn"\n[admin]\nlisten = ""\n' \
    "$OUTBOXD_PG_PORT" "$db" "$bootstrap" >"$tmp/$name.toml"
done
"$BUILD/outboxd" migrate -c "$tmp/single.toml" >/dev/null
topic="doctor-$$-$RANDOM"
missing="doctor-missing-$$-$RANDOM"
psql_admin -d "$db" -c "SELECT outbox.publish('$topic', 'k', 'v')" >/dev/null
psql_admin -d "$db" -c "SELECT outbox.publish('$missing', 'k', 'v')" >/dev/null
"$BUILD/tests/create_topic" "$SINGLE" "$topic" 1 || fail "could not create $topic on the single broker"

# 1. The single broker: the topic exists with RF 1; the other one does not exist, and the broker
# does not create topics.
set +e
"$BUILD/outboxd" doctor -c "$tmp/single.toml" >"$tmp/single.out"
rc=$?
"$BUILD/outboxd" doctor -c "$tmp/single.toml" --json >"$tmp/single.json"
set -e
cat "$tmp/single.out"
((rc == 1)) || fail "doctor on the single broker: exit $rc, expected 1"
grep -q "RISK  $topic: replication factor = 1" "$tmp/single.out" || fail "no replication factor 1 risk for $topic"
grep -q "RISK  $missing: exists = no$" "$tmp/single.out" || fail "no 'exists = no' risk for $missing"
grep -q "ok    broker .*: topic auto-creation = false" "$tmp/single.out" ||
  fail "no 'topic auto-creation = false' finding (the brokers must not auto-create topics)"
python3 - "$tmp/single.json" "$topic" "$missing" <<'PY' || fail "--json does not show the RF 1 risk"
import json, sys
j = json.load(open(sys.argv[1]))
assert j["at_risk"] is True
assert any(f["subject"] == sys.argv[2] and f["check"] == "replication factor" and f["verdict"] == "risk"
           for f in j["findings"])
assert any(f["subject"] == sys.argv[3] and f["check"] == "exists" and f["verdict"] == "risk"
           for f in j["findings"])
PY
psql_admin -d "$db" -c "DELETE FROM outbox.messages WHERE topic = '$missing'" >/dev/null

# 2. The cluster: the topic created with the cluster's defaults (RF 3, min.insync.replicas 2),
# outboxd delivers the message, then doctor finds nothing at risk.
"$BUILD/tests/create_topic" "$CLUSTER" "$topic" 1 || fail "could not create $topic on the cluster"
"$BUILD/outboxd" run -c "$tmp/cluster.toml" >"$tmp/outboxd.log" 2>&1 &
OPID=$!
for _ in $(seq 1 600); do
  [[ $(psql_admin -d "$db" -tAc "SELECT count(*) FROM outbox.messages") == 0 ]] && break
  sleep 0.1
done
kill "$OPID"; wait "$OPID" || true; OPID=
[[ $(psql_admin -d "$db" -tAc "SELECT count(*) FROM outbox.messages") == 0 ]] ||
  { cat "$tmp/outboxd.log"; fail "outboxd did not deliver to the cluster within 60 s"; }
set +e
"$BUILD/outboxd" doctor -c "$tmp/cluster.toml" --topic "$topic" >"$tmp/cluster.out"
rc=$?
set -e
cat "$tmp/cluster.out"
((rc == 0)) || fail "doctor on the 3-broker cluster: exit $rc, expected 0"
grep -q "ok    $topic: replication factor = 3" "$tmp/cluster.out" || fail "no RF 3 finding for $topic"
grep -q "ok    $topic: min.insync.replicas = 2" "$tmp/cluster.out" || fail "no min.insync.replicas 2 finding"
echo "ok: doctor flags the single broker (exit 1) and passes the 3-broker cluster (exit 0)"
