#!/usr/bin/env bash
# The test suite beside the demo. `make demo` leaves its outboxd running with the default admin
# listener, 127.0.0.1:9464. With an outboxd holding that address (the demo's own if it runs, else
# one started here with the demo's configuration, config/outboxd.toml), the quickest tests that
# start an outboxd still pass (none may depend on a fixed port being free), an outboxd that is
# given the taken address exits at once with an error that names the address and the setting
# that moves it, and the holder still runs and answers afterwards.
# Usage: suite_beside_demo.sh BUILD_DIR. Needs the services (scripts/services.sh start); without
# them it is skipped (exit 77), except under CI=true: it fails.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BUILD=${1:?usage: suite_beside_demo.sh BUILD_DIR}
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
DEMO_ADMIN=127.0.0.1:9464 # config/outboxd.toml's [admin] listen, the default
work=$(mktemp -d)
holder=""
cleanup() {
  if [[ -n "$holder" ]]; then
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*" >&2
  [[ -f "$work/holder.log" ]] && tail -n 20 "$work/holder.log" >&2
  exit 1
}
missing() {
  if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then fail "$* (under CI a missing piece fails)"; fi
  echo "SKIP: $*" >&2
  exit 77
}
answers() { curl -s -o /dev/null --max-time 2 "http://$DEMO_ADMIN/healthz"; }

psql -X -q -h 127.0.0.1 -p "$OUTBOXD_PG_PORT" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 ||
  missing "PostgreSQL on $OUTBOXD_PG_PORT (scripts/services.sh start)"

if answers; then
  echo "an outboxd (the demo's?) already answers on $DEMO_ADMIN: the tests run beside it"
else
  # As the demo leaves it: the demo's configuration, its database migrated, outboxd running.
  "$BUILD/outboxd" migrate --config "$ROOT/config/outboxd.toml" >/dev/null ||
    fail "outboxd migrate with config/outboxd.toml"
  "$BUILD/outboxd" run --config "$ROOT/config/outboxd.toml" >"$work/holder.log" 2>&1 &
  holder=$!
  for _ in $(seq 1 300); do
    answers && break
    kill -0 "$holder" 2>/dev/null || fail "the outboxd with the demo's configuration exited"
    sleep 0.1
  done
  answers || fail "the outboxd with the demo's configuration does not answer on $DEMO_ADMIN"
  echo "started an outboxd with config/outboxd.toml (pid $holder) holding $DEMO_ADMIN"
fi

# An outboxd left with the default listener: a clear error and exit 1, within seconds.
printf '[postgres]\nconninfo = "host=127.0.0.1 port=1 dbname=x"\n[kafka]\nbootstrap_servers = "127.0.0.1:1"\n' \
  >"$work/default-admin.toml"
rc=0
out=$(timeout 20 "$BUILD/outboxd" run --config "$work/default-admin.toml" 2>&1) || rc=$?
echo "$out"
((rc == 1)) || fail "outboxd with the taken admin address: exit $rc, expected 1"
grep -qF "cannot listen on $DEMO_ADMIN" <<<"$out" || fail "the error does not name $DEMO_ADMIN"
grep -qF "set [admin] listen in $work/default-admin.toml" <<<"$out" ||
  fail "the error does not name [admin] listen and the configuration file"

# The quickest tests that start an outboxd: one with both services down, one that delivers.
"$BUILD/tests/integration_tests" --gtest_brief=1 \
  --gtest_filter='NewcomerBinary.StartWithBothServicesDownIsQuiet:RelayIntegration.EveryCommittedRowArrivesOnceWithExactKeyValueAndHeaders' \
  >"$work/tests.out" 2>&1 || { cat "$work/tests.out"; fail "a test failed beside the outboxd on $DEMO_ADMIN"; }
cat "$work/tests.out"
grep -q "PASSED.* 2 tests" "$work/tests.out" || fail "the two tests did not both run and pass"

answers || fail "the outboxd on $DEMO_ADMIN no longer answers"
if [[ -n "$holder" ]]; then kill -0 "$holder" 2>/dev/null || fail "the holder exited during the tests"; fi
echo "ok: tests that start an outboxd pass beside an outboxd on $DEMO_ADMIN"
