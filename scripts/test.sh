#!/usr/bin/env bash
# The whole test suite: installs, builds, starts PostgreSQL and Kafka, runs ctest
# (unit, kafka_mock, integration). Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`
# (which starts no services).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG="test"

# `-L unit` alone needs no services: don't start them.
only_unit=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -L | --label-regex) [[ "${args[i + 1]:-}" == unit ]] && only_unit=1 ;;
    -Lunit) only_unit=1 ;;
  esac
done

"$ROOT/scripts/build.sh"
if ((only_unit)); then
  log "unit tests only: not starting PostgreSQL or Kafka"
else
  "$ROOT/scripts/services.sh" start
  eval "$("$ROOT/scripts/services.sh" env)"
fi
# Tests run in parallel, each with its own database and topics; the few that restart PostgreSQL
# or share one broker's settings are marked RUN_SERIAL or RESOURCE_LOCK (tests/CMakeLists.txt).
# CTEST_PARALLEL_LEVEL (ctest's own variable) sets how many run at once; default: one per core.
ctest --test-dir "$ROOT/build" --output-on-failure -j "${CTEST_PARALLEL_LEVEL:-$(nproc)}" "$@"
