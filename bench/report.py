"""Summarise bench/results/*.json as Markdown tables (bench/results/summary.md).

    /usr/bin/python3 bench/report.py

Reads what `make bench` saved: core_c.json (bench_core), core_binding.json
and core_lua2018.json (core_lua.lua), server.json (bench_server.py); a file
that is missing leaves its table out.  The tables are the ones in the
README's "Performance" section.
"""

import datetime
import json
import os
import platform
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def load(name):
    try:
        with open(os.path.join(RESULTS, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


def machine():
    cpu, mem = "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem = "%.0f GB" % (int(f.readline().split()[1]) / 1048576)
    except OSError:
        pass
    return ("%s, %d cores, %s RAM, Linux %s; Prosody %s on Lua %s; %s"
            % (cpu, os.cpu_count() or 0, mem, platform.release(),
               sh("dpkg-query -W -f='${Version}' prosody") or "?",
               sh("lua5.4 -v 2>&1").split()[1] if sh("lua5.4 -v 2>&1") else "?",
               sh("cc --version | head -1") or "cc ?"))


def val(d, key):
    if d is None:
        return None
    r = d["results"].get(key)
    return None if r is None else r["value"]


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "ns":
        return "%.0f ns" % v if v < 10000 else "%.1f µs" % (v / 1000)
    if unit == "B":
        if abs(v) >= 1048576:
            return "%.1f MB" % (v / 1048576)
        if abs(v) >= 10240:
            return "%.1f KB" % (v / 1024)
        return "%.0f B" % v
    return "%g" % v


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "%.2f" % (a / b)


def core_tables(c, b, l):
    p = (c or b or l)["params"]
    out = []
    out.append("Core: %d accounts × %d rooms × %d sessions = %d memberships, %d local "
               "accounts per room (times per call)."
               % (p["accounts"], p["rooms_per_account"], p["sessions"],
                  p["accounts"] * p["rooms_per_account"], p["room_size"]))
    out.append("")
    out.append("| | C core | C core via the Lua binding | 2018 Lua tables | C / Lua | binding / Lua |")
    out.append("|---|---:|---:|---:|---:|---:|")
    rows = [
        ("join, per session (average)", "join_ns", "ns"),
        ("— first session: the account joins", "join_first_ns", "ns"),
        ("— the room's self-presence completes it", "self_presence_ns", "ns"),
        ("— a later session, replayed from the cache", "join_later_ns", "ns"),
        ("fan-out decision, per account per message", "fanout_bare_ns", "ns"),
        ("fan-out decision, keeping the message for catch-up", "fanout_ns", "ns"),
        ("— the same in one room, data in cache: routing", "fanout_hot_bare_ns", "ns"),
        ("— the same in one room, data in cache: keeping the message", "fanout_hot_ns", "ns"),
        ("occupant presence per account: new (cached)", "presence_new_ns", "ns"),
        ("occupant presence per account: changed", "presence_update_ns", "ns"),
        ("occupant presence per account: unavailable", "presence_gone_ns", "ns"),
        ("memory per membership, %d sessions" % p["sessions"], "bytes_per_membership", "B"),
        ("memory per membership, with catch-up history", "bytes_per_membership_hist", "B"),
    ]
    for label, key, unit in rows:
        cv, bv, lv = val(c, key), val(b, key), val(l, key)
        out.append("| %s | %s | %s | %s | %s | %s |" % (label, fmt(cv, unit), fmt(bv, unit),
                                                       fmt(lv, unit), ratio(cv, lv), ratio(bv, lv)))
    out.append("")
    out.append("%d local accounts in one room with %d occupants (every occupant's presence "
               "reaches every account):" % (p["shared_accounts"], p["shared_occupants"]))
    out.append("")
    out.append("| | C core | 2018 Lua tables |")
    out.append("|---|---:|---:|")
    out.append("| occupant cache, all accounts | %s | %s |"
               % (fmt(val(c, "shared_cache_bytes"), "B"), fmt(val(l, "shared_cache_bytes"), "B")))
    out.append("| per cached entry (account × occupant) | %s | %s |"
               % (fmt(val(c, "shared_entry_bytes"), "B"), fmt(val(l, "shared_entry_bytes"), "B")))
    out.append("| presence text held (once, interned) | %s | — |"
               % fmt(val(c, "shared_payload_bytes"), "B"))
    out.append("| time per presence per account | %s | %s |"
               % (fmt(val(c, "shared_presence_ns"), "ns"), fmt(val(l, "shared_presence_ns"), "ns")))
    out.append("")
    out.append("%d join/leave cycles of %d accounts × %d sessions: heap growth from the "
               "first cycle to the last %s (C core), %s (2018 Lua tables); over the second "
               "half %s and %s."
               % (p["cycles"], p["cycle_accounts"], p["sessions"],
                  fmt(val(c, "cycle_growth_bytes"), "B"), fmt(val(l, "cycle_growth_bytes"), "B"),
                  fmt(val(c, "cycle_growth_half_bytes"), "B"),
                  fmt(val(l, "cycle_growth_half_bytes"), "B")))
    return out


def server_tables(s):
    p = s["params"]
    out = []
    out.append("Server: %d accounts × D sessions in one room, a sender posts %d messages, "
               "every copy (A×D×M) counted at the clients. Prosody's CPU time (utime+stime) "
               "per 1000 delivered messages, best and median of %d runs; then instructions "
               "per delivered message under callgrind (%s messages), which the machine's "
               "load cannot change."
               % (p["accounts"], p["messages"], p["repeat"], p.get("callgrind_messages", "?")))
    out.append("")
    extra = []   # the room log's variants and push, when measured
    for row in s.get("fanout_summary", []):
        extra = [m for m in ("nolog", "sqlite", "push", "push_away") if m in row.get("modes", {})]
    names = {"nolog": "module, without the log", "sqlite": "module, log on SQLite",
             "push": "module, push (device connected)", "push_away": "module, push (device away)"}
    out.append("| D | | plain MUC | mod_minimix | module / plain |%s" % "".join(
        " %s |" % names[m] for m in extra))
    out.append("|---:|---|---:|---:|---:|%s" % ("---:|" * len(extra)))

    def cols(row, key, fmt_):
        modes = row.get("modes", {})
        return "".join(" %s |" % (fmt_ % modes[m][key] if modes.get(m, {}).get(key) is not None
                                  else "") for m in extra)
    for row in s.get("fanout_summary", []):
        D = row["sessions"]
        runs = [r for r in s["fanout"] if r["sessions"] == D and r.get("run") not in
                ("callgrind", "profiled")]
        ok = all(r["delivered"] == r["expected"] for r in s["fanout"] if r["sessions"] == D)
        out.append("| %d | CPU per 1000 delivered, best | %.1f ms | %.1f ms | %.2f |%s" % (
            D, row["plain_ms_per_1000"], row["module_ms_per_1000"], row["ratio"],
            cols(row, "best", "%.1f ms")))
        out.append("| | CPU per 1000 delivered, median | %.1f ms | %.1f ms | %.2f |%s" % (
            row["plain_median"], row["module_median"], row["ratio_median"],
            cols(row, "median", "%.1f ms")))
        module_log = row.get("modes", {}).get("module", {}).get("log_bytes_per_message")
        if module_log is not None:
            out.append("| | room log written per message | | %.0f B | |%s" % (
                module_log, cols(row, "log_bytes_per_message", "%.0f B")))
        if row.get("plain_ir"):
            out.append("| | instructions per delivered message | %.0f k | %.0f k | %.2f |%s" % (
                row["plain_ir"] / 1000, row["module_ir"] / 1000, row["ir_ratio"],
                "".join(" %s |" % ("%.0f k" % (row["modes"][m]["ir"] / 1000)
                                   if row.get("modes", {}).get(m, {}).get("ir") else "")
                        for m in extra)))
        if row.get("plain_lua_instr"):
            out.append("| | Lua VM instructions per delivered message | %.0f | %.0f | %.2f |" % (
                row["plain_lua_instr"], row["module_lua_instr"], row["lua_instr_ratio"]))
        out.append("| | peak RSS | %.1f MB | %.1f MB | %.2f |" % (
            row["plain_peak_rss"] / 1048576, row["module_peak_rss"] / 1048576,
            row["module_peak_rss"] / row["plain_peak_rss"]))
        out.append("| | copies counted per run | %d%s | | |" % (
            runs[0]["expected"] if runs else 0, "" if ok else " (some runs incomplete!)"))
    if s.get("many_rooms"):
        out.append("")
        out.append("Many rooms: %d accounts × %d sessions over %d rooms; memory the joins added "
                   "(after full collections), per membership (account in a room):"
                   % (p["rooms_accounts"], p["rooms_sessions"], p["rooms"]))
        out.append("")
        out.append("| | Lua heap | RSS | peak RSS |")
        out.append("|---|---:|---:|---:|")
        for r in s["many_rooms"]:
            out.append("| %s | %s | %s | %.1f MB |" % (
                "plain MUC" if r["mode"] == "plain" else "mod_minimix",
                fmt(r["lua_per_membership"], "B"), fmt(r["rss_per_membership"], "B"),
                r["peak_rss"] / 1048576))
    if s.get("cycles"):
        out.append("")
        c0 = s["cycles"][0]
        out.append("Join/leave cycles: %d accounts × %d sessions join and leave a room %d times; "
                   "growth from cycle %d to the last (and over the second half, from cycle %s): %s." % (
                       c0["accounts"], c0["sessions"], c0["cycles"], c0["from_cycle"],
                       c0.get("half_cycle", "?"),
                       "; ".join("%s Lua heap %s (%s), RSS %s (%s)" % (
                           "plain MUC" if r["mode"] == "plain" else "mod_minimix",
                           fmt(r["lua_growth"], "B"), fmt(r.get("lua_growth_second_half", 0), "B"),
                           fmt(r["rss_growth"], "B"), fmt(r.get("rss_growth_second_half", 0), "B"))
                           for r in s["cycles"])))
    if s.get("catchup"):
        out.append("")
        c0 = s["catchup"][0]
        names = {"module": "log on files", "sqlite": "log on SQLite", "nolog": "log off (ring)"}
        out.append("Catch-up: a later device joins %d times asking for `maxstanzas` messages, "
                   "%d said since its account joined. Server CPU per join (self-presence, "
                   "catch-up, subject) and per message served:" % (c0["joins"], c0["log"]))
        out.append("")
        out.append("| maxstanzas | " + " | ".join(names.get(r["mode"], r["mode"])
                                                 for r in s["catchup"]) + " |")
        out.append("|--:|" + "--:|" * len(s["catchup"]))
        for i, a in enumerate(c0["asks"]):
            out.append("| %d | " % a["maxstanzas"] + " | ".join(
                "%.1f ms (%d served, %.0f µs each)" % (
                    r["asks"][i]["cpu_ms_per_join"], r["asks"][i]["served_per_join"],
                    r["asks"][i]["cpu_us_per_served"]) for r in s["catchup"]) + " |")
    if s.get("small"):
        out += [""] + small_table(s["small"])
    return out


def small_table(rows):
    """The small-room scenario: CPU per delivered message, each log store
    against plain MUC in the same run."""
    r0 = rows[0]
    modes = [m for b in ("", "@base") for m in ("module" + b, "sqlite" + b, "postgres" + b,
                                                 "nolog" + b, "plain_archived" + b,
                                                 "archived" + b) if m in r0["modes"]]
    names = {"module": "log on files", "sqlite": "log on SQLite",
             "postgres": "log on PostgreSQL", "nolog": "log off",
             "plain_archived": "plain MUC, rooms with muc_mam (µs)",
             "archived": "log on files, rooms with muc_mam (/ plain with muc_mam)"}
    # MINIMIX_BENCH_SERVER_BASELINE: the same with another checkout
    names.update({k + "@base": v + ", baseline" for k, v in list(names.items())})
    out = ["Small rooms: one sender posts %d messages, each after the room's echo of the last "
           "and %.0f ms; Prosody's CPU (scheduler time) per delivered message; %d runs of "
           "each setup, interleaved; module / plain MUC is the median of the runs' ratios "
           "(lowest–highest in brackets)."
           % (r0["messages"], r0["pace"] * 1000, r0["repeat"]), ""]
    out.append("| room | plain MUC | " + " | ".join(names[m] for m in modes) + " |")
    out.append("|---|---:|" + "---:|" * len(modes))
    for r in rows:
        cells = []
        for m in modes:
            d = r["modes"][m]
            if m.startswith("plain"):
                cells.append("%.0f µs" % d["median_us"])
                continue
            cells.append("%.2f× (%.2f–%.2f)%s" % (d["ratio_median"], min(d["ratios"]),
                                                 max(d["ratios"]),
                                                 "" if d["complete"] else " incomplete!"))
        out.append("| %d accounts × %d session%s | %.0f µs | %s |" % (
            r["accounts"], r["sessions"], "" if r["sessions"] == 1 else "s",
            r["modes"]["plain"]["median_us"], " | ".join(cells)))
    return out


def federation_tables(f):
    """The room on one server, the accounts on another (bench_federation.py)."""
    p = f["params"]
    out = ["Federation: a room on b.test, %d accounts with D sessions on a.test, %d "
           "messages, medians of %d runs; per room message:"
           % (p["accounts"], p["messages"], p["repeat"]), "",
           "| D | bytes over the link: plain | module | ratio "
           "| a.test CPU ms: plain | module | ratio | b.test CPU ms: plain | module | ratio |",
           "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in f["summary"]:
        row = ["%d" % r["sessions"]]
        for key, unit in (("link_bytes_per_message", "%.0f"),
                          ("account_cpu_ms_per_message", "%.3f"),
                          ("room_cpu_ms_per_message", "%.3f")):
            ratio = r["ratio"][key]
            row += [unit % r["plain"][key], unit % r["module"][key],
                    "%.2f" % ratio if ratio is not None else "-"]
        out.append("| " + " | ".join(row) + " |")
    return out


def main():
    c, b, l = load("core_c.json"), load("core_binding.json"), load("core_lua2018.json")
    s = load("server.json")
    fed = load("federation.json")
    out = ["Measured %s on %s." % (datetime.date.today().isoformat(), machine()), ""]
    if c or b or l:
        out += core_tables(c, b, l) + [""]
    if s:
        out += server_tables(s) + [""]
    if fed:
        out += federation_tables(fed) + [""]
    text = "\n".join(out)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
