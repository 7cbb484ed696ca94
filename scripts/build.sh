#!/usr/bin/env bash
# Installs missing packages, then configures and builds outboxd and its tests in build/.
#   OUTBOXD_BUILD_TYPE (default RelWithDebInfo), OUTBOXD_SANITIZE=ON for ASan/UBSan,
#   OUTBOXD_TSAN=ON for ThreadSanitizer (each in a fresh build/).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=build

"$ROOT/scripts/deps.sh"
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [[ ! -f "$ROOT/build/CMakeCache.txt" ]]; then
  cmake -S "$ROOT" -B "$ROOT/build" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE="${OUTBOXD_BUILD_TYPE:-RelWithDebInfo}" \
    -DOUTBOXD_SANITIZE="${OUTBOXD_SANITIZE:-OFF}" -DOUTBOXD_TSAN="${OUTBOXD_TSAN:-OFF}" >/dev/null
fi
cmake --build "$ROOT/build" -j "$(nproc)"
log "built $ROOT/build/outboxd"
