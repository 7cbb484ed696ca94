#!/usr/bin/env bash
# The whole test suite: installs, builds, starts PostgreSQL and Kafka, runs ctest
# (unit, kafka_mock, integration). Extra arguments go to ctest, e.g. `scripts/test.sh -L unit`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG="test"

"$ROOT/scripts/build.sh"
"$ROOT/scripts/services.sh" start
eval "$("$ROOT/scripts/services.sh" env)"
# Integration tests are marked RUN_SERIAL (one restarts PostgreSQL); the rest run in parallel.
ctest --test-dir "$ROOT/build" --output-on-failure -j "$(nproc)" "$@"
