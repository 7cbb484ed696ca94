#!/usr/bin/env bash
# outboxd's black-box delivery harness (see tests/e2e/README.md): builds the Go program, starts
# PostgreSQL, the single broker and the 3-broker cluster, and runs the scenarios against build/outboxd.
#   tests/e2e/run.sh                      short form (ctest label e2e, part of `make test`)
#   tests/e2e/run.sh -long                long form (`make chaos`): longer, more faults, broker outage
#   tests/e2e/run.sh -scenarios new-topics -repeat 20     any flag of the harness (-h lists them)
# Ports: OUTBOXD_PG_PORT, OUTBOXD_KAFKA_PORT as for the other tests; the cluster's brokers are on
# 19092/29092/39092, or P/P+10000/P+20000 with OUTBOXD_CLUSTER_PORT=P. Exit 77 (ctest: skipped) when a service or Go is missing outside CI;
# under CI=true that fails instead.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"
# shellcheck disable=SC2034 # read by log/warn/die in lib.sh
LOG_TAG=e2e

OUTBOXD="${OUTBOXD_BINARY:-$ROOT/build/outboxd}"
HARNESS="$ROOT/build/outboxd-e2e"

missing() {
  if [[ "${CI:-}" == true ]]; then
    die "$* (CI=true: a missing service fails the run)"
  fi
  warn "$*: skipping the e2e harness"
  exit 77
}

[[ -x "$OUTBOXD" ]] || die "$OUTBOXD is not built (scripts/build.sh)"

GO=$(command -v go || true)
[[ -n "$GO" ]] || for g in /usr/local/go/bin/go /usr/lib/go/bin/go; do
  [[ -x "$g" ]] && GO=$g && break
done
[[ -n "$GO" ]] || missing "no Go toolchain (scripts/deps.sh installs one)"

log "building the harness with $("$GO" version)"
(cd "$ROOT/tests/e2e" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local "$GO" build -o "$HARNESS" .) ||
  die "go build of tests/e2e failed"

"$ROOT/scripts/pg.sh" start || missing "PostgreSQL did not start"
"$ROOT/scripts/kafka.sh" start single || missing "the single Kafka broker did not start"
cluster_was_running=true
"$ROOT/scripts/kafka.sh" status cluster >/dev/null 2>&1 || cluster_was_running=false
"$ROOT/scripts/kafka.sh" start cluster || missing "the 3-broker Kafka cluster did not start"
if [[ "$cluster_was_running" == false && -z "${OUTBOXD_E2E_KEEP_CLUSTER:-}" ]]; then
  # We started it (about 1.2 GB of heap): stop it again when done.
  trap '"$ROOT/scripts/kafka.sh" stop cluster >/dev/null 2>&1 || true' EXIT
fi

rc=0
"$HARNESS" -root "$ROOT" -outboxd "$OUTBOXD" "$@" || rc=$?
exit "$rc"
