#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into a Markdown table and bench/results/latest.json."""
import datetime
import json
import os
import platform
import subprocess
import sys

src, outdir = sys.argv[1], sys.argv[2]
subset = sys.argv[3] if len(sys.argv) > 3 else ""  # a partial run: not written as latest.json
results = {}
with open(src) as f:
    for line in f:
        row = json.loads(line)
        results[row["name"]] = row["result"]

cpu = "unknown"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
machine = f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()

rows = []
def add(what, value, baseline="", verdict=""):
    rows.append((what, value, baseline, verdict))

d, dbc, kc = results.get("drain"), results.get("db_ceiling"), results.get("kafka_ceiling")
if d and dbc and kc:
    ceiling = min(dbc["msgs_per_s"], kc["msgs_per_s"])
    # Both ceilings use the same two cores, so doing both jobs takes the sum of their times.
    serial = 1 / (1 / dbc["msgs_per_s"] + 1 / kc["msgs_per_s"])
    add(f"backlog drain, {d['messages']:,} msgs of 200 B, 1,000 keys", f"{d['msgs_per_s']:,.0f} msgs/s",
        f"DB-only {dbc['msgs_per_s']:,.0f} / Kafka-only {kc['msgs_per_s']:,.0f} msgs/s; serial ceiling {serial:,.0f}",
        f"{d['msgs_per_s'] / ceiling:.2f} of the smaller ceiling, {d['msgs_per_s'] / serial:.2f} of the serial one")
    startup = f"start-up {d['startup_s']:.2f} s apart" if "startup_s" in d else ""
    add(f"drain rate, first / last tenth ({d['messages'] // 10:,} msgs each) of the backlog",
        f"{d['first_tenth_msgs_per_s']:,.0f} / {d['last_tenth_msgs_per_s']:,.0f} msgs/s", startup, "does not fall as the backlog drains" if d['last_tenth_msgs_per_s'] >= 0.8 * d['first_tenth_msgs_per_s'] else "falls")
    add("outboxd peak RSS during the drain", f"{d['peak_rss_kib'] / 1024:.1f} MiB", "", "target <= 64 MiB")
dd = results.get("debezium_drain")
if dd and d:
    add("Debezium peer, same drain", f"{dd['msgs_per_s']:,.0f} msgs/s", f"outboxd {d['msgs_per_s']:,.0f} msgs/s",
        f"outboxd x{d['msgs_per_s'] / dd['msgs_per_s']:.1f}; peer RSS {dd['peak_rss_kib'] / 1024:.0f} MiB")
d5 = results.get("inflight5_drain")
if d5 and d:
    add("drain with 5 requests in flight per broker (the former default)", f"{d5['msgs_per_s']:,.0f} msgs/s",
        f"1 in flight (default): {d['msgs_per_s']:,.0f} msgs/s", f"default / former = {d['msgs_per_s'] / d5['msgs_per_s']:.2f}")
for name, r in sorted(results.items()):
    if name.startswith("inflight5_latency_") and not name.endswith("_cost"):
        base = results.get(name[len("inflight5_"):])
        add(f"live latency at {r['offered_per_s']:,}/s with 5 requests in flight (former default)",
            f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} / max {r['max_ms']:.0f} ms",
            f"1 in flight (default): p50 {base['p50_ms']:.1f} / p99 {base['p99_ms']:.1f} / max {base['max_ms']:.0f} ms" if base else "",
            f"{r['achieved_per_s']:,}/s achieved")
for name, r in sorted(results.items()):
    if name.startswith("latency_") and not name.endswith("_cost"):
        peer = results.get("debezium_" + name)
        base = (f"Debezium p50 {peer['p50_ms']:.1f} / p99 {peer['p99_ms']:.1f} / max {peer['max_ms']:.0f} ms"
                if peer else "")
        returned = ""
        if "from_commit_returned_p50_ms" in r:
            returned = (f"; from COMMIT returned: p50 {r['from_commit_returned_p50_ms']:.1f} / "
                        f"p99 {r['from_commit_returned_p99_ms']:.1f} ms")
        add(f"live latency at {r['offered_per_s']:,}/s offered ({r['achieved_per_s']:,}/s achieved), COMMIT sent -> broker append",
            f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} / max {r['max_ms']:.0f} ms", base,
            f"{r['matched']:,} of {r['expected']:,} matched{returned}; RSS {r['peak_rss_kib'] / 1024:.1f} MiB")
a = results.get("app_cost")
if a:
    off = a["tps_without_outboxd"]
    add("application commits/s (pgbench, 8 clients, 1 publish per tx)",
        f"{a['tps_with_outboxd_notify']:,} (notify on) / {a['tps_with_outboxd_no_notify']:,} (notify off)",
        f"{off:,} without outboxd",
        f"{a['tps_with_outboxd_notify'] / off:.2f} / {a['tps_with_outboxd_no_notify'] / off:.2f} of without")
for f in ("publish_bytea", "publish_text", "publish_jsonb", "prepare_text"):
    w, ins = results.get("writepath_" + f), results.get("writepath_insert")
    if w and ins:
        add(f"one transaction with one {f.replace('_', '() of a ', 1)} payload, 1 client, no fsync",
            f"{w['us_per_tx']:.0f} us", f"plain INSERT of the row {ins['us_per_tx']:.0f} us",
            f"the function adds {w['us_per_tx'] - ins['us_per_tx']:.0f} us")

# The performance targets, each beside its same-run baseline, met or not.
targets = []
def target(what, measured, baseline, ratio, met):
    targets.append((what, measured, baseline, ratio, "yes" if met else "**no**"))
def lat(r):
    return f"p50 {r['p50_ms']:.1f} / p99 {r['p99_ms']:.1f} ms ({r['achieved_per_s']:,}/s achieved)"
def peer_lat(name):
    p = results.get("debezium_" + name)
    return f"Debezium p50 {p['p50_ms']:.1f} / p99 {p['p99_ms']:.1f} ms" if p else "(peer not run)"
for rate, p50_max, p99_max in ((5000, 3, 10), (7000, None, 15)):
    r = results.get(f"latency_{rate}")
    if r:
        ret = (f"; from COMMIT returned p50 {r['from_commit_returned_p50_ms']:.1f} ms"
               if "from_commit_returned_p50_ms" in r else "")
        goal = (f"p50 <= {p50_max}, " if p50_max else "") + f"p99 <= {p99_max} ms"
        target(f"live latency at {rate:,}/s offered, COMMIT sent -> broker append: {goal}", lat(r) + ret,
               peer_lat(f"latency_{rate}"), "",
               (p50_max is None or r["p50_ms"] <= p50_max) and r["p99_ms"] <= p99_max)
if a:
    off = a["tps_without_outboxd"]
    target("application commits with outboxd >= 0.95 of without (notify on)",
           f"{a['tps_with_outboxd_notify']:,} tps", f"{off:,} tps without outboxd",
           f"{a['tps_with_outboxd_notify'] / off:.2f}", a["tps_with_outboxd_notify"] >= 0.95 * off)
if d and dbc and kc:
    target("drain >= 0.8 of the serial ceiling 1/(1/DB-only + 1/Kafka-only)", f"{d['msgs_per_s']:,.0f} msgs/s",
           f"DB-only {dbc['msgs_per_s']:,.0f}, Kafka-only {kc['msgs_per_s']:,.0f}, serial {serial:,.0f} msgs/s",
           f"{d['msgs_per_s'] / serial:.2f} of the serial, {d['msgs_per_s'] / ceiling:.2f} of the smaller",
           d["msgs_per_s"] >= 0.8 * serial)
if d and dd:
    target(">= 10x the Debezium peer's drain", f"{d['msgs_per_s']:,.0f} msgs/s", f"Debezium {dd['msgs_per_s']:,.0f} msgs/s",
           f"{d['msgs_per_s'] / dd['msgs_per_s']:.1f}x", d["msgs_per_s"] >= 10 * dd["msgs_per_s"])
for name, r in sorted(results.items()):
    p = results.get("debezium_" + name)
    if name.startswith("latency_") and not name.endswith("_cost") and p:
        target(f"live p99 ahead of the Debezium peer's, {r['offered_per_s']:,}/s offered", f"p99 {r['p99_ms']:.1f} ms",
               f"Debezium p99 {p['p99_ms']:.1f} ms", f"{p['p99_ms'] / r['p99_ms']:.0f}x", r["p99_ms"] < p["p99_ms"])
if d:
    flat = d["last_tenth_msgs_per_s"] >= 0.9 * d["first_tenth_msgs_per_s"]
    target(f"flat throughput from the first to the last tenth ({d['messages']:,} drained; the target names 10M)",
           f"last tenth {d['last_tenth_msgs_per_s']:,.0f} msgs/s", f"first tenth {d['first_tenth_msgs_per_s']:,.0f} msgs/s",
           f"{d['last_tenth_msgs_per_s'] / d['first_tenth_msgs_per_s']:.2f}", flat and d["messages"] >= 10_000_000)
    rss = max([d["peak_rss_kib"]] + [r["peak_rss_kib"] for n, r in results.items()
                                      if n.startswith("latency_") and "peak_rss_kib" in r])
    target("peak RSS <= 64 MiB (drain and live runs)", f"{rss / 1024:.1f} MiB", "", "", rss <= 64 * 1024)

table = ["| measurement | outboxd | same-run baseline | ratio / note |", "|---|---|---|---|"]
table += [f"| {w} | {v} | {b} | {n} |" for w, v, b, n in rows]
text = f"Machine: {machine}. Date: {now}. Commit: {commit}. Command: `make bench`.\n\n"
if targets:
    text += ("| target | measured | same-run baseline | ratio | met? |\n|---|---|---|---|---|\n"
             + "\n".join(f"| {w} | {m} | {b} | {r} | {v} |" for w, m, b, r, v in targets) + "\n\n")
text += "\n".join(table)

# Cost per message: CPU seconds per million messages of each party and WAL bytes per
# message, from every run that recorded a "<name>_cost" beside it; the load average says how busy
# the machine was (the figures hold up under load better than rates, but not perfectly).
def fmt(c, key):
    v = c.get(key + "_cpu_s_per_M")
    return "" if v is None else f"{v:.1f}"
cost_rows = []
for name, c in results.items():
    if "wal_bytes_per_msg" not in c:
        continue
    run = results.get(name[: -len("_cost")], {}) if name.endswith("_cost") else {}
    speed = (f"{run['msgs_per_s']:,.0f} msgs/s" if "msgs_per_s" in run else
             f"p50 {run['p50_ms']:.1f} / p99 {run['p99_ms']:.1f} ms" if "p50_ms" in run else
             f"{c['tps']:,} tps" if "tps" in c else "")
    cost_rows.append(f"| {name[:-5] if name.endswith('_cost') else name} | {c['messages']:,} | {speed} | {fmt(c, 'outboxd')} | {fmt(c, 'relay_pg')} | "
                     f"{fmt(c, 'peer')} | {fmt(c, 'peer_pg')} | {fmt(c, 'pg_all')} | {fmt(c, 'kafka')} | {c['wal_bytes_per_msg']:,.0f} | "
                     f"{c['load_start']:.1f}-{c['load_end']:.1f} / {c['machine_busy_cores']:.2f} |")
if cost_rows:
    text += ("\n\nCost per message: CPU seconds per million messages (user + sys) and WAL bytes per message\n\n"
             "| run | messages | rate / latency | outboxd | its backend | Debezium JVM | its walsender + sessions | "
             "all of PostgreSQL | Kafka broker | WAL B/msg | load avg / busy cores |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
             + "\n".join(cost_rows))
print(text)
os.makedirs(outdir, exist_ok=True)
doc = {"date": now, "machine": machine, "commit": commit, "command": "make bench", "results": results,
       "table_markdown": text}
stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M")  # runs of one day apart
for name in ((f"{stamp}-{subset}.json",) if subset else ("latest.json", f"{stamp}.json")):
    with open(os.path.join(outdir, name), "w") as f:
        json.dump(doc, f, indent=2)

# A/B (bench/run.sh part "ab"): each run of A and B interleaved, then the medians side by side.
import re
import statistics
ab = {}
for name, r in results.items():
    m = re.fullmatch(r"ab_([A-Z])_(\d+)_(.+?)(_cost)?", name)
    if m:
        ab.setdefault(m.group(3), {}).setdefault(m.group(1), {}).setdefault(m.group(2), {}).update(
            {("cost_" + k if m.group(4) else k): v for k, v in r.items()})
if ab:
    keys = [("msgs_per_s", "msgs/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms"), ("achieved_per_s", "achieved/s"),
            ("cost_outboxd_cpu_s_per_M", "outboxd CPU s/M"), ("cost_relay_pg_cpu_s_per_M", "backend CPU s/M"),
            ("cost_pg_all_cpu_s_per_M", "all PG CPU s/M"), ("cost_kafka_cpu_s_per_M", "Kafka broker CPU s/M"), ("cost_wal_bytes_per_msg", "WAL B/msg"),
            ("tps", "tps"), ("cost_load_start", "load avg")]
    variants = sorted({v for by_v in ab.values() for v in by_v})
    lines = ["| run | figure | " + " | ".join(f"{v} (each round)" for v in variants) + " | "
             + " | ".join(f"{v} / {variants[0]} (medians)" for v in variants[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(variants) - 1)]
    for run, by_v in sorted(ab.items()):
        for k, label in keys:
            vals = {v: [by_v.get(v, {})[i][k] for i in sorted(by_v.get(v, {})) if k in by_v[v][i]] for v in variants}
            if not any(vals.values()):
                continue
            base = vals[variants[0]]
            ratios = [f"{statistics.median(vals[v]) / statistics.median(base):.2f}" if vals[v] and base and statistics.median(base) else ""
                      for v in variants[1:]]
            lines.append(f"| {run} | {label} | " + " | ".join(" / ".join(f"{x:g}" for x in vals[v]) for v in variants)
                         + " | " + " | ".join(ratios) + " |")
    print("\nA/B, interleaved (A, B, A, B, ...)\n\n" + "\n".join(lines))
