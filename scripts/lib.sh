# shellcheck shell=bash
# Shared helpers for the outboxd dev/test scripts. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Defines ROOT, CACHE, log/warn/die, need_cmd, wait_until, port_in_use,
# port_owner, pid_alive.

# Guard against double sourcing (services.sh -> pg.sh -> lib.sh is fine, but cheap to skip).
if [[ -n "${OUTBOXD_LIB_LOADED:-}" ]]; then
  return 0
fi
OUTBOXD_LIB_LOADED=1

# Repo root = parent of the folder holding this file (symlinks resolved).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# Everything the scripts download or create lives here (git-ignored).
CACHE="$ROOT/.cache"
export ROOT CACHE

# Name shown in log lines; scripts may override before logging.
LOG_TAG="${LOG_TAG:-$(basename "${BASH_SOURCE[-1]}" .sh)}"

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
warn() { printf '[%s] WARNING: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  printf '[%s] ERROR: %s\n' "$LOG_TAG" "$*" >&2
  exit 1
}

# need_cmd <command> <hint>: die with a clear message when a command is missing.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found: $2 (run scripts/deps.sh)"
}

# Microseconds since the epoch (bash >= 5 builtin, no fork).
_now_us() { local t=${EPOCHREALTIME/./}; printf '%s' "$((10#$t))"; }

# wait_until <timeout_s> <cmd...>: poll cmd (output discarded) every 0.2 s
# until it succeeds (return 0) or the timeout passes (return 1).
wait_until() {
  local timeout=$1
  shift
  local deadline=$(($(_now_us) + timeout * 1000000))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if (($(_now_us) >= deadline)); then
      return 1
    fi
    sleep 0.2
  done
}

# port_in_use <port>: true when something listens on TCP <port> (any address).
port_in_use() {
  local port=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "sport = :$port" 2>/dev/null)" ]]
  else
    # Fallback without iproute2: can we connect on loopback?
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# port_owner <port>: best-effort "pid/name" of the listener, for error messages.
port_owner() {
  local port=$1 out
  if command -v ss >/dev/null 2>&1; then
    out=$(ss -Hltnp "sport = :$port" 2>/dev/null | grep -o 'users:(([^)]*))' | head -n1)
    [[ -n "$out" ]] && printf '%s' "$out" && return 0
  fi
  printf 'unknown process'
}

# die_port_busy <port> <what>: the standard "port taken by someone else" error.
die_port_busy() {
  die "port $1 ($2) is already in use by another process: $(port_owner "$1"). Stop it or pick another port."
}

# pid_alive <pid> [cmdline-substring...]: true when <pid> runs and its command
# line contains every given substring (guards against pid reuse after a crash).
pid_alive() {
  local pid=$1 cmdline
  shift
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ -n "$cmdline" ]] || return 1 # zombie / kernel thread
  local s
  for s in "$@"; do
    [[ "$cmdline" == *"$s"* ]] || return 1
  done
  return 0
}

# as_root <cmd...>: run directly when root, via sudo otherwise.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root for '$*' but not root and sudo is not installed"
  fi
}
