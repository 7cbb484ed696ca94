#!/usr/bin/env bash
# Installs missing packages, then configures and builds in build/.
#   scripts/build.sh       outboxd, the tests, the examples and the benchmark driver (deps.sh dev)
#   scripts/build.sh run   the outboxd binary only (deps.sh run): what the demo needs. A build/ made
#                          this way has no tests; a later plain scripts/build.sh adds them.
#   OUTBOXD_BUILD_TYPE (default RelWithDebInfo), OUTBOXD_SANITIZE=ON for ASan/UBSan,
#   OUTBOXD_TSAN=ON for ThreadSanitizer (each in a fresh build/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=build

SET=${1:-dev}
[[ "$SET" == run || "$SET" == dev ]] || {
  echo "usage: $0 [run|dev]" >&2
  exit 2
}
"$ROOT/scripts/deps.sh" "$SET"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
# ccache keeps compiled objects between builds and between clones of this repository: paths under
# the checkout are hashed relative to it (base_dir), so a second clone hits the same cache.
launcher=()
if command -v ccache >/dev/null 2>&1; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$ROOT}" CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
fi
cache="$ROOT/build/CMakeCache.txt"
if [[ ! -f "$cache" ]]; then
  # The run set has no GoogleTest: configure the tests only when they will be built.
  tests=ON
  [[ "$SET" == run ]] && tests=OFF
  cmake -S "$ROOT" -B "$ROOT/build" "${generator[@]}" "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE="${OUTBOXD_BUILD_TYPE:-RelWithDebInfo}" -DOUTBOXD_BUILD_TESTS="$tests" \
    -DOUTBOXD_SANITIZE="${OUTBOXD_SANITIZE:-OFF}" -DOUTBOXD_TSAN="${OUTBOXD_TSAN:-OFF}" >/dev/null
elif [[ "$SET" == dev ]] && grep -q '^OUTBOXD_BUILD_TESTS:BOOL=OFF$' "$cache"; then
  log "build/ was configured without the tests (by the demo): adding them"
  cmake -S "$ROOT" -B "$ROOT/build" -DOUTBOXD_BUILD_TESTS=ON >/dev/null
fi
if [[ "$SET" == run ]]; then
  cmake --build "$ROOT/build" -j "$(nproc)" --target outboxd
else
  cmake --build "$ROOT/build" -j "$(nproc)"
fi
log "built $ROOT/build/outboxd"
