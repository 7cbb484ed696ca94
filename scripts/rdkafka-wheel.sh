#!/usr/bin/env bash
# A newer librdkafka for tests only. outboxd is built and shipped against Debian's librdkafka
# 2.0.2, whose SCRAM client Kafka 4.x brokers refuse (fixed in librdkafka 2.6.1,
# confluentinc/librdkafka#4895). The confluent-kafka wheel on PyPI bundles a self-contained
# librdkafka shared library (OpenSSL, SASL and compression linked in); this script fetches that
# wheel with pip into .cache/librdkafka-wheel/<version> and names the library librdkafka.so.1,
# so `LD_LIBRARY_PATH=<folder> outboxd ...` runs the same binary with it (librdkafka keeps its C
# ABI across 2.x). Nothing of the product's build changes.
#   scripts/rdkafka-wheel.sh [ensure]   fetch once, then print the folder
#   scripts/rdkafka-wheel.sh dir        print the folder (fails if not fetched)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WHEEL_VERSION=2.16.1 # confluent-kafka; bundles librdkafka of the same version
DIR="$CACHE/librdkafka-wheel/$WHEEL_VERSION"

ensure() {
  if [[ -e "$DIR/librdkafka.so.1" ]]; then
    echo "$DIR"
    return 0
  fi
  [[ "$(uname -m)" == x86_64 ]] || die "the fetched wheel is for x86_64 only, this machine is $(uname -m)"
  need_cmd python3 "python3 with pip fetches the confluent-kafka wheel from PyPI"
  python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip (package python3-pip)"
  mkdir -p "$CACHE/librdkafka-wheel"
  local t
  t=$(mktemp -d "$CACHE/librdkafka-wheel/tmp.XXXXXX")
  # The wheel for CPython 3.11 on manylinux 2.28, whatever python3 this is: only its library is used.
  if ! python3 -m pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 --implementation cp --abi cp311 -d "$t" \
    "confluent-kafka==$WHEEL_VERSION" >"$t/pip.log" 2>&1; then
    tail -n 5 "$t/pip.log" >&2
    rm -rf "$t"
    die "pip could not fetch confluent-kafka $WHEEL_VERSION"
  fi
  python3 - "$t" <<'PY' || { rm -rf "$t"; die "no librdkafka in the confluent-kafka wheel"; }
import glob, sys, zipfile
folder = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(folder + "/confluent_kafka-*.whl")[0])
names = [n for n in wheel.namelist() if n.startswith("confluent_kafka.libs/librdkafka")]
if len(names) != 1:
    sys.exit(1)
with open(folder + "/librdkafka.so.1", "wb") as out:
    out.write(wheel.read(names[0]))
PY
  rm -f "$t"/*.whl
  rm -rf "$DIR"
  chmod 755 "$t"
  mv "$t" "$DIR"
  log "librdkafka from confluent-kafka $WHEEL_VERSION in $DIR"
  echo "$DIR"
}

case "${1:-ensure}" in
  ensure) ensure ;;
  dir)
    [[ -e "$DIR/librdkafka.so.1" ]] || die "not fetched: run $0 ensure"
    echo "$DIR"
    ;;
  *)
    echo "usage: $0 [ensure|dir]" >&2
    exit 2
    ;;
esac
