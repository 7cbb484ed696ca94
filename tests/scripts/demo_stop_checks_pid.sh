#!/usr/bin/env bash
# `make stop` (scripts/demo.sh stop) signals only an outboxd: a pidfile naming another process
# (a pid reused after a reboot) leaves that process alone. Needs no services.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
work=$(mktemp -d)
sleep 60 &
other=$!
trap 'kill "$other" 2>/dev/null || true; rm -rf "$work"' EXIT
echo "$other" >"$work/outboxd.pid"
OUTBOXD_DEMO_DIR="$work" "$ROOT/scripts/demo.sh" stop
kill -0 "$other" || { echo "FAIL: demo.sh stop signalled pid $other, a sleep, not outboxd" >&2; exit 1; }
[[ ! -f "$work/outboxd.pid" ]] || { echo "FAIL: the stale pidfile is still there" >&2; exit 1; }
echo "ok: pid $other (not outboxd) left running, stale pidfile removed"
