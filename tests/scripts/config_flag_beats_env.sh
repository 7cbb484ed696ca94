#!/usr/bin/env bash
# Flags > environment > default for the configuration file: with OUTBOXD_CONFIG=a.toml,
# `--config b.toml` uses b.toml in both positions (before and after the subcommand); without a
# flag OUTBOXD_CONFIG is used. check-config reads the file without connecting. Needs no services.
set -euo pipefail
OUTBOXD="${1:?usage: config_flag_beats_env.sh OUTBOXD_BINARY}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/a.toml" <<'TOML'
[postgres]
conninfo = "host=127.0.0.1 dbname=a"
[kafka]
bootstrap_servers = "127.0.0.1:1"
TOML
sed 's/dbname=a/dbname=b/' "$work/a.toml" >"$work/b.toml"
fail=0
expect() {  # expect WANTED_FILE command...
  local want="$1"
  shift
  local out
  out=$("$@" 2>&1) || true
  if [[ "$out" == "$work/$want: ok" ]]; then
    echo "ok: $* -> $want"
  else
    echo "FAIL: $* (OUTBOXD_CONFIG=${OUTBOXD_CONFIG:-}) should use $want, said: $out" >&2
    fail=1
  fi
}
export OUTBOXD_CONFIG="$work/a.toml"
expect b.toml "$OUTBOXD" check-config --config "$work/b.toml"
expect b.toml "$OUTBOXD" --config "$work/b.toml" check-config
expect b.toml "$OUTBOXD" -c "$work/b.toml" check-config
expect b.toml "$OUTBOXD" check-config -c "$work/b.toml"
expect a.toml "$OUTBOXD" check-config
# `run` takes the same path: a missing file named by the flag must be the error, not a.toml.
out=$(timeout 10 "$OUTBOXD" run --config "$work/missing.toml" 2>&1) && rc=0 || rc=$?
if [[ $rc -eq 2 && "$out" == *"$work/missing.toml: cannot open"* ]]; then
  echo "ok: run --config missing.toml -> exit 2 naming missing.toml"
else
  echo "FAIL: run --config missing.toml with OUTBOXD_CONFIG=a.toml: exit $rc: $out" >&2
  fail=1
fi
unset OUTBOXD_CONFIG
expect b.toml "$OUTBOXD" check-config --config "$work/b.toml"
exit $fail
