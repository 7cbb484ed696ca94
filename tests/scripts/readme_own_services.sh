#!/usr/bin/env bash
# Runs the README's "your own PostgreSQL and Kafka" commands as written, with a temporary
# directory in place of /usr/local and /etc, against the project's services (the example
# configuration reads OUTBOXD_PG_PORT / OUTBOXD_KAFKA_PORT). Usage: readme_own_services.sh BUILD_DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
BUILD=${1:?build directory}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OUTBOXD_PG_PORT="${OUTBOXD_PG_PORT:-55432}" OUTBOXD_KAFKA_PORT="${OUTBOXD_KAFKA_PORT:-59092}"
fail() { echo "FAIL: $*" >&2; exit 1; }

block=$(awk '/<!-- readme-test: own-services -->/ {f = 1; next}
             f && /^```bash/ {g = 1; next}
             g && /^```/ {exit}
             g {print}' "$ROOT/README.md")
[[ -n "$block" ]] || fail "no block after <!-- readme-test: own-services --> in README.md"
# The same commands, relocated: /usr/local and /etc under $tmp, `outboxd` the installed binary,
# `build` this build directory; the editor step leaves the example as it is.
script=$(sed -e "s|/usr/local|$tmp/usr/local|g" -e "s|/etc/outboxd|$tmp/etc/outboxd|g" \
  -e "s|^outboxd |$tmp/usr/local/bin/outboxd |" -e "s|^cmake --install build |cmake --install $BUILD |" \
  <<<"$block")
echo "$script"
EDITOR=true bash -euo pipefail -c "$script" >"$tmp/out" 2>&1 || { cat "$tmp/out"; fail "a README command failed"; }
cat "$tmp/out"
for f in usr/local/bin/outboxd usr/local/share/doc/outboxd/outboxd.toml \
  usr/local/lib/systemd/system/outboxd.service etc/outboxd/outboxd.toml; do
  [[ -f "$tmp/$f" ]] || fail "not installed: $f"
done
grep -q "^ExecStart=$tmp/usr/local/bin/outboxd run --config /etc/outboxd/outboxd.toml$" \
  "$tmp/usr/local/lib/systemd/system/outboxd.service" || fail "the unit does not run the installed binary"
grep -q "^RestartSec=" "$tmp/usr/local/lib/systemd/system/outboxd.service" || fail "no RestartSec"
grep -q "ok$" "$tmp/out" || fail "check-config did not say ok"
grep -q "^schema current: " "$tmp/out" || fail "migrate did not finish"
grep -q "^leader: " "$tmp/out" || fail "status printed no leader line"
echo "ok: the README's commands ran as written"
