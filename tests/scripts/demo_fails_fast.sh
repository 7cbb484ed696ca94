#!/usr/bin/env bash
# The demo must not wait for messages from an outboxd that is gone: with a configuration that
# `outboxd run` refuses at start (librdkafka refuses max.in.flight 6 with the idempotent
# producer; `migrate` does not build a producer and passes), it fails as soon as outboxd exits,
# not after its wait for outboxd to lead, and shows outboxd's own error.
# Needs the services (scripts/services.sh start) and a built tree, like the integration tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
sed 's/^"max.in.flight.requests.per.connection" = 1$/"max.in.flight.requests.per.connection" = 6/' \
  "$ROOT/config/outboxd.toml" >"$work/bad.toml"
grep -q '^"max.in.flight.requests.per.connection" = 6' "$work/bad.toml" ||
  { echo "FAIL: config/outboxd.toml has no max.in.flight line to change" >&2; exit 1; }
# A log line of an earlier, healthy run must not count.
mkdir -p "$work/demo"
echo "[info] leading the outbox (an earlier run)" >"$work/demo/outboxd.log"

start=$SECONDS
rc=0
OUTBOXD_CONFIG="$work/bad.toml" OUTBOXD_DEMO_DIR="$work/demo" \
  "$ROOT/scripts/demo.sh" >"$work/out" 2>&1 || rc=$?
took=$((SECONDS - start))
cat "$work/out"
fail() { echo "FAIL: $*" >&2; exit 1; }
((rc != 0)) || fail "the demo succeeded with a configuration outboxd refuses"
# It noticed the exit, rather than waiting out its 30 s for outboxd to lead.
grep -q "did not lead the outbox within" "$work/out" && fail "the demo waited out its deadline (${took} s)"
grep -q "outboxd exited with code 2" "$work/out" || fail "no exit code of outboxd in the output"
grep -q "must be set <= 5" "$work/out" || fail "outboxd's own error (max.in.flight) not shown"
echo "ok: failed in ${took} s with outboxd's error"
