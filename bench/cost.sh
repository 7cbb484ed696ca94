# Cost of a run, sourced by bench/run.sh: CPU seconds (user + sys, from /proc/<pid>/stat) of each
# party and the WAL PostgreSQL wrote, between two marks. Robust to a loaded machine, unlike rates.
#   cost_mark FILE [checkpoint]  writes the current counters to FILE
#   cost_json A B N       JSON of what happened between marks A and B, per million of N messages
# Parties: "outboxd" (the process $OPID), "relay_pg" (backends whose application_name is
# outboxd's "outboxd host=H pid=P"), "peer" (the Debezium JVM $PPID_), "peer_pg" (the walsender of
# its slot and its JDBC sessions), "pg_all" (the whole PostgreSQL server: every live process plus
# what the postmaster reaped, so exited backends and autovacuum workers count too), "machine"
# (every core, from /proc/stat), "kafka" (the single broker's JVM). A process present at B and not at A counts from its start.

CLK_TCK=$(getconf CLK_TCK)
PG_POSTMASTER_PID=""

# ticks PID: user + sys clock ticks (0 if gone); with "children", the reaped children's instead.
proc_ticks() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) } # fields from the 3rd (state) on: utime = 12th, stime = 13th, cutime 14th, cstime 15th
  if [[ ${2:-} == children ]]; then awk '{print $14 + $15}' <<<"$s"; else awk '{print $12 + $13}' <<<"$s"; fi
}

postmaster_pid() { # the parent of the checkpointer, which lives as long as the server
  if [[ -z $PG_POSTMASTER_PID ]]; then
    PG_POSTMASTER_PID=$(ps -o ppid= -p "$(psql_db -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")" | tr -d ' ')
  fi
  echo "$PG_POSTMASTER_PID"
}

cost_mark() { # cost_mark FILE [checkpoint]: with "checkpoint", a CHECKPOINT first, so that every
  # run starts alike (the first change of each page after a checkpoint writes a full-page image)
  local f=$1 pm pid
  pm=$(postmaster_pid)
  [[ ${2:-} == checkpoint ]] && psql_db -c "CHECKPOINT"
  {
    echo "time $(date +%s.%N)"
    echo "wal $(psql_db -c "SELECT pg_current_wal_lsn() - '0/0'")"
    echo "load $(cut -d' ' -f1 /proc/loadavg)"
    echo "machine $(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat)"
    # (only while alive: a finished run's pid may be reused by another process)
    [[ -n ${OPID:-} && $(cat "/proc/$OPID/comm" 2>/dev/null) == outboxd* ]] && echo "outboxd $OPID $(proc_ticks "$OPID")"
    [[ -n ${PPID_:-} && $(cat "/proc/$PPID_/comm" 2>/dev/null) == java ]] && echo "peer $PPID_ $(proc_ticks "$PPID_")"
    # the Kafka broker (single mode): both relays' requests cost it CPU too
    local kpid
    kpid=$(cat "$CACHE"/kafka/single/node*/kafka.pid 2>/dev/null | head -1)
    [[ -n $kpid ]] && echo "kafka $kpid $(proc_ticks "$kpid")"
    psql_db -F ' ' -c "SELECT CASE WHEN application_name LIKE 'outboxd host=%' THEN 'relay_pg'
        ELSE 'peer_pg' END, pid
      FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND (application_name LIKE 'outboxd host=%'
        OR backend_type = 'walsender' OR application_name ILIKE '%debezium%'
        OR application_name = 'PostgreSQL JDBC Driver')" |
      while read -r role pid; do echo "$role $pid $(proc_ticks "$pid")"; done
    local all=0
    for pid in $(ps -o pid= --ppid "$pm"); do all=$((all + $(proc_ticks "$pid"))); done
    echo "pg_all $pm $((all + $(proc_ticks "$pm") + $(proc_ticks "$pm" children)))"
  } >"$f"
}

cost_json() { # cost_json MARK_A MARK_B MESSAGES
  python3 - "$1" "$2" "$3" "$CLK_TCK" <<'PY'
import json, sys
def read(path):
    d = {"procs": {}}
    for line in open(path):
        f = line.split()
        if f[0] in ("time", "wal", "load", "machine"):
            d[f[0]] = float(f[1])
        else:
            d["procs"][(f[0], f[1])] = int(f[2])
    return d
a, b, n, hz = read(sys.argv[1]), read(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
secs = {}
for (role, pid), t in b["procs"].items():
    secs[role] = secs.get(role, 0.0) + (t - a["procs"].get((role, pid), 0)) / hz
wall = b["time"] - a["time"]
out = {"messages": n, "wall_s": round(wall, 2), "load_start": a["load"], "load_end": b["load"],
       "machine_busy_cores": round((b["machine"] - a["machine"]) / hz / wall, 2),
       "wal_bytes_per_msg": round((b["wal"] - a["wal"]) / max(n, 1), 1)}
for role, s in sorted(secs.items()):
    out[role + "_cpu_s"] = round(s, 2)
    out[role + "_cpu_s_per_M"] = round(s / max(n, 1) * 1e6, 2)
print(json.dumps(out))
PY
}
