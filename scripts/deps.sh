#!/usr/bin/env bash
# Install the Debian 12 packages outboxd needs. Only missing packages are installed; `apt-get
# update` runs only when something is missing, so the warm path is a single dpkg-query (< 1 s).
#   scripts/deps.sh run   what building and running outboxd with the local services needs (the demo)
#   scripts/deps.sh dev   run + what developing and testing needs (the default: build, test)
#   scripts/deps.sh image dev + what building and testing the container image needs (make image)
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SET=${1:-dev}
[[ "$SET" == run || "$SET" == dev || "$SET" == image ]] || {
  echo "usage: $0 [run|dev|image]" >&2
  exit 2
}

RUN_PACKAGES=(
  # C++ compiler, build tools and the libraries outboxd links
  build-essential cmake ninja-build pkg-config ccache
  libpq-dev librdkafka-dev libtoml11-dev
  libspdlog-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev libssl-dev
  # PostgreSQL 15 server + client. The contrib modules ship inside
  # postgresql-15 on Debian 12 (it "Provides: postgresql-contrib-15", which
  # is a virtual name that cannot be queried/installed on its own).
  postgresql-15 postgresql-client-15
  # Kafka: kcat reads the demo's topic; Java 17 runs the broker, Maven fetches its jars once.
  kcat openjdk-17-jre-headless maven
  # the service scripts: ss (iproute2), pgrep/ps (procps), the local certificates (openssl)
  curl procps iproute2 openssl
)

DEV_PACKAGES=(
  # the test suites (GoogleTest, GoogleMock) and the code style
  libgtest-dev libgmock-dev clang-format shellcheck
  # the netfault tests: network namespaces (iproute2) and nft rules for partitions and loss
  nftables
  # docker-compose (v1) validates compose.yaml in a test; there is no Docker engine
  docker-compose
  # Prometheus server and promtool: the admin listener's /metrics scraped in a test, deploy/ checked
  prometheus
  # tests/scripts/deploy_files_valid.sh parses deploy/*.yaml
  python3-yaml
  # scripts/rdkafka-wheel.sh fetches a newer librdkafka (the SCRAM test) with pip
  python3-pip
)

# `scripts/deps.sh image` (make image: scripts/image.sh, tests/scripts/image_test.sh) adds Podman with
# runc (Podman would otherwise take crun, which refuses hybrid cgroup hierarchies) and mmdebstrap,
# which makes the Debian base images.
IMAGE_PACKAGES=(podman runc mmdebstrap)

PACKAGES=("${RUN_PACKAGES[@]}")
if [[ "$SET" == image ]]; then
  PACKAGES+=("${IMAGE_PACKAGES[@]}")
fi
if [[ "$SET" == dev || "$SET" == image ]]; then
  PACKAGES+=("${DEV_PACKAGES[@]}")
  # Go builds the e2e harness (tests/e2e). A Go already on the machine (PATH or /usr/local/go) is
  # used; otherwise Debian 12's golang-go (1.19), which tests/e2e/go.mod's `go 1.19` directive and
  # its pinned modules (franz-go 1.15, kadm 1.10, pgx 5.5) accept. No toolchain line: Go 1.19
  # cannot switch.
  if ! command -v go >/dev/null 2>&1 && [[ ! -x /usr/local/go/bin/go ]]; then
    PACKAGES+=(golang-go)
  fi
fi

# One dpkg-query for all packages; unknown packages yield no line.
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! grep -qxF "$p ii " <<<"$installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  log "all ${#PACKAGES[@]} packages ($SET) already installed"
  exit 0
fi

log "missing ($SET): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
log "installed: ${missing[*]}"
