#!/usr/bin/env bash
# Builds the container image outboxd:VERSION (VERSION from CMakeLists.txt) from the Dockerfile
# with Podman, without a registry:
#   scripts/image.sh [build]   the base images when missing, then the product image
#   scripts/image.sh base      only the base images
#   scripts/image.sh name      print the product image's name
#   scripts/image.sh podman ARGS...   podman with this machine's flags, e.g.
#       scripts/image.sh podman run --rm outboxd:0.1.0 version
# The base images debian:12 (build stage) and debian:12-slim (runtime stage) are made from Debian's
# own packages with mmdebstrap and imported into Podman; an existing image of that name (made here
# earlier, or pulled from a registry) is kept as it is. The Podman flags are those this machine
# needs: the runc runtime (crun refuses hybrid cgroup hierarchies), the host network (the build's
# apt-get reaches the Debian mirror, and containers the local services, without a container
# network) and resource limits runc may set here (Podman's defaults, from its own limits, are refused
# with "error setting rlimit ... operation not permitted").
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
LOG_TAG=image

VERSION=$(sed -n 's/^project(outboxd VERSION \([0-9.]*\).*/\1/p' "$ROOT/CMakeLists.txt")
[[ -n "$VERSION" ]] || die "no 'project(outboxd VERSION ...)' in CMakeLists.txt"
IMAGE="outboxd:$VERSION"
MIRROR="${OUTBOXD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${OUTBOXD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
PODMAN=(podman --runtime runc)
CONTAINER_FLAGS=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# The files debian:12-slim leaves out (Debian's own slim images, debuerreotype): documentation,
# manual pages and translations. dpkg keeps the rule in the image, so packages installed on top of
# it leave them out too.
SLIM_EXCLUDES=(
  'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/info/*' 'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/groff/*'
  'path-exclude=/usr/share/lintian/*' 'path-exclude=/usr/share/linda/*'
)

need_tools() {
  # Rootful Podman: rootless would need subordinate uid ranges and uidmap, which nothing here sets up.
  ((EUID == 0)) || die "run as root: the image is built and run with rootful Podman"
  need_cmd podman "the container engine (package podman)"
  need_cmd runc "Podman's runtime here (package runc)"
}

# base_image TAG [DPKG-OPTION...]: a Debian 12 minbase root file system imported as TAG.
base_image() {
  local tag=$1
  shift
  if "${PODMAN[@]}" image exists "$tag"; then
    log "base image $tag exists: kept"
    return 0
  fi
  need_cmd mmdebstrap "builds the Debian base image (package mmdebstrap)"
  local dir="$CACHE/image" opts=() o
  for o in "$@"; do opts+=("--dpkgopt=$o"); done
  mkdir -p "$dir"
  log "mmdebstrap: $tag (Debian 12 minbase from $MIRROR)"
  local t0=$SECONDS
  # The merged-usr hook makes /bin, /lib and /sbin links into /usr as debootstrap does, instead of
  # the usrmerge package, which would bring Perl (about 50 MB) into the image.
  mmdebstrap --quiet --variant=minbase --mode=root --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    "${opts[@]}" bookworm "$dir/rootfs.tar" \
    "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    "deb $SECURITY_MIRROR bookworm-security main" || die "mmdebstrap failed for $tag"
  "${PODMAN[@]}" import --quiet --change 'CMD ["bash"]' "$dir/rootfs.tar" "$tag" >/dev/null ||
    die "podman import failed for $tag"
  rm -f "$dir/rootfs.tar"
  log "base image $tag imported in $((SECONDS - t0)) s"
}

cmd_base() {
  need_tools
  base_image debian:12
  base_image debian:12-slim "${SLIM_EXCLUDES[@]}"
}

cmd_build() {
  cmd_base
  log "podman build: $IMAGE"
  local t0=$SECONDS
  "${PODMAN[@]}" build "${CONTAINER_FLAGS[@]}" --pull=never --layers -t "$IMAGE" "$ROOT" ||
    die "podman build failed"
  local size
  size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
  log "built $IMAGE in $((SECONDS - t0)) s: $((size / 1000000)) MB ($size bytes)"
}

# cmd_podman SUBCOMMAND ARGS...: the container flags go to the subcommands that start containers.
cmd_podman() {
  need_tools
  local sub=${1:?usage: $0 podman SUBCOMMAND ARGS...}
  shift
  case "$sub" in
    run | create | build) exec "${PODMAN[@]}" "$sub" "${CONTAINER_FLAGS[@]}" "$@" ;;
    *) exec "${PODMAN[@]}" "$sub" "$@" ;;
  esac
}

case "${1:-build}" in
  build) cmd_build ;;
  base) cmd_base ;;
  name) echo "$IMAGE" ;;
  podman)
    shift
    cmd_podman "$@"
    ;;
  *)
    echo "usage: $0 [build|base|name|podman ARGS...]" >&2
    exit 2
    ;;
esac
