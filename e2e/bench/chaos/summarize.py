#!/usr/bin/env python3
"""Summarise e2e/bench/chaos.sh results as Markdown: one table per scenario, weft and HAProxy
side by side, with ratios.

usage: summarize.py OUT_DIR
OUT_DIR holds params.json, and per run NAME (`<scenario>-<mesh>`): NAME.<window>.json (from
`chaos_load report`), NAME.events.jsonl (the backends' answers to the load generator's --at
calls, their counters just before the fault switched) and NAME.backends.jsonl (counters after).
"""
import json
import os
import sys

MESH_NAMES = {"weft": "weft", "haproxy": "HAProxy"}


def load(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def lines(out, name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fmt(v, unit="", digits=2):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v:,.{digits}f}{unit}"


def pct(v):
    return "–" if v is None else f"{100 * v:.2f} %"


def ratio(a, b):
    if a is None or b is None or isinstance(a, str) or isinstance(b, str) or b == 0:
        return "–"
    return f"{a / b:.2f}"


def table(title, rows, meshes, note=""):
    """rows: [(label, {mesh: value}, formatter, with_ratio)]."""
    out = [f"### {title}", ""]
    if note:
        out += [note, ""]
    head = "| | " + " | ".join(MESH_NAMES.get(m, m) for m in meshes)
    sep = "|---|" + "---|" * len(meshes)
    show_ratio = "weft" in meshes and "haproxy" in meshes
    if show_ratio:
        head += " | weft / HAProxy"
        sep += "---|"
    out += [head + " |", sep]
    for label, values, formatter, with_ratio in rows:
        cells = [formatter(values.get(m)) for m in meshes]
        line = f"| {label} | " + " | ".join(cells)
        if show_ratio:
            line += " | " + (ratio(values.get("weft"), values.get("haproxy")) if with_ratio else "")
        out.append(line + " |")
    return "\n".join(out) + "\n"


def counters(objs):
    """Backend name -> counters, from /stats or /set answers (JSON bodies)."""
    res = {}
    for o in objs:
        try:
            c = json.loads(o) if isinstance(o, str) else o
        except ValueError:
            continue
        if isinstance(c, dict) and "name" in c:
            res[c["name"]] = c
    return res


def events_at(out, name, due, needle):
    """Counters answered by the --at calls due at `due` whose URL contains `needle`."""
    evs = [e for e in lines(out, f"{name}.events.jsonl") if e.get("due_s") == due and needle in e.get("url", "")]
    return counters(e.get("body", "") for e in evs if e.get("status") == 200)


def dies(out, p, meshes):
    q = p["dies"]
    rows = {k: {} for k in ["before", "ttr", "lost", "tail", "p99", "ok"]}
    for m in meshes:
        before = load(out, f"dies-{m}.before.json")
        fault = load(out, f"dies-{m}.fault.json")
        if not fault:
            continue
        rows["before"][m] = before and before.get("success_ratio")
        r = fault.get("recovery_s")
        rows["ttr"][m] = r if r is not None else "not within the run"
        rows["lost"][m] = fault.get("lost_after_fault")
        rows["ok"][m] = fault.get("success_ratio")
        rows["tail"][m] = f"{fault.get('failed_in_last_hold')} of {fault.get('requests_in_last_hold')}"
        rows["p99"][m] = fault.get("ok_p99_ms")
    hold = p["hold_s"]
    return table(
        f"1. One of three apps dies behind its live proxy ({q['rate']} rps, fault at {q['at']} s of {q['duration']} s)",
        [
            ("success before the fault", rows["before"], pct, False),
            ("time until ≥ 99.9 % succeed (s)", rows["ttr"], lambda v: fmt(v), True),
            ("requests lost after the fault", rows["lost"], fmt, True),
            ("success after the fault", rows["ok"], pct, False),
            (f"failed in the last {hold} s", rows["tail"], lambda v: v or "–", False),
            ("p99 of successes after the fault (ms)", rows["p99"], fmt, True),
        ],
        meshes,
        f"Recovery: from the fault, the first moment after which at least 99.9 % of the requests "
        f"due until the end succeed, holding at least {hold} s. Retries: 2.",
    )


def slow(out, p, meshes):
    q = p["slow"]
    rows = {k: {} for k in ["h99", "s99", "x", "share", "fail", "s999"]}
    for m in meshes:
        h = load(out, f"slow-{m}.healthy.json")
        s = load(out, f"slow-{m}.slow.json")
        if not h or not s:
            continue
        rows["h99"][m] = h.get("ok_p99_ms")
        rows["s99"][m] = s.get("ok_p99_ms")
        rows["s999"][m] = s.get("ok_p999_ms")
        if h.get("ok_p99_ms") and s.get("ok_p99_ms") is not None:
            rows["x"][m] = s["ok_p99_ms"] / h["ok_p99_ms"]
        rows["fail"][m] = s.get("failed")
        start = events_at(out, f"slow-{m}", q["at"], "/stats")
        end = counters(lines(out, f"slow-{m}.backends.jsonl"))
        delta = {b: end[b]["requests"] - start[b]["requests"] for b in end if b in start}
        total = sum(delta.values())
        if total > 0 and "b0" in delta:
            rows["share"][m] = delta["b0"] / total
    return table(
        f"2. One of three backends becomes 10× slower ({q['base_ms']} → {10 * q['base_ms']} ms; "
        f"{q['rate']} rps, at {q['at']} s of {q['duration']} s)",
        [
            ("p99 healthy (ms)", rows["h99"], fmt, True),
            ("p99 with one slow backend (ms)", rows["s99"], fmt, True),
            ("p99 slow / p99 healthy", rows["x"], fmt, True),
            ("p99.9 with one slow backend (ms)", rows["s999"], fmt, True),
            ("share of requests to the slow backend", rows["share"], pct, True),
            ("failed requests (slow phase)", rows["fail"], fmt, False),
        ],
        meshes,
    )


def overload(out, p, meshes):
    q = p["overload"]
    cap = q["capacity_rps"]
    rows = []
    for variant, label in [("overload", "no shedding"), ("overload-shed", "shedding")]:
        good, p99, shed, late = {}, {}, {}, {}
        for m in meshes:
            r = load(out, f"{variant}-{m}.all.json")
            if not r:
                continue
            good[m] = r["goodput_rps"] / cap
            p99[m] = r.get("ok_p99_ms")
            oc = r.get("outcomes", {})
            fast = sum(v for k, v in oc.items() if k not in ("200", "timeout", "err"))
            shed[m] = f"{fast:,} / {oc.get('timeout', 0) + oc.get('err', 0):,}"
            late[m] = r.get("success_ratio")
        rows += [
            (f"{label}: goodput (fraction of capacity)", good, fmt, True),
            (f"{label}: p99 of admitted requests (ms)", p99, fmt, True),
            (f"{label}: success", late, pct, False),
            (f"{label}: refused with a status / timed out or failed", shed, lambda v: v or "–", False),
        ]
    return table(
        f"3. Offered load {q['factor']}× the backends' capacity ({q['rate']} rps for "
        f"{q['duration']} s; capacity {cap} rps: 3 backends × {q['conc']} at once × {q['ms']} ms)",
        rows,
        meshes,
        f"Goodput: successful responses per second / capacity. Client time limit {p['timeout_ms']} ms. "
        f"Shedding: weft max-concurrent-requests {q['shed_concurrent']}, max-requests-per-endpoint "
        f"{q['conc']}, max-pending-requests {q['shed_pending']}; HAProxy server maxconn {q['conc']}, "
        f"503 when {q['shed_pending']} wait in its queue, timeout queue 1 s.",
    )


def storm(out, p, meshes):
    q = p["storm"]
    rows = {k: {} for k in ["client", "backend", "amp", "health", "ttr", "after"]}
    for m in meshes:
        f = load(out, f"storm-{m}.failing.json")
        a = load(out, f"storm-{m}.after.json")
        if not f:
            continue
        start = events_at(out, f"storm-{m}", q["from"], "mode=status")
        end = events_at(out, f"storm-{m}", q["to"], "mode=ok")
        if len(start) == 3 and len(end) == 3:
            backend = sum(end[b]["requests"] - start[b]["requests"] for b in end)
            health = sum(end[b]["health"] - start[b]["health"] for b in end)
            rows["backend"][m] = backend
            rows["health"][m] = health
            if f["requests"]:
                rows["amp"][m] = backend / f["requests"]
        rows["client"][m] = f["requests"]
        if a:
            r = a.get("recovery_s")
            rows["ttr"][m] = r if r is not None else "not within the run"
            rows["after"][m] = a.get("success_ratio")
    return table(
        f"4. Every backend answers 503 from {q['from']} to {q['to']} s, retries 2 ({q['rate']} rps, {q['duration']} s)",
        [
            ("client requests while failing", rows["client"], fmt, True),
            ("backend requests while failing", rows["backend"], fmt, True),
            ("amplification (backend / client; target ≤ 1.2)", rows["amp"], fmt, True),
            ("health-check requests at the backends", rows["health"], fmt, False),
            ("time until ≥ 99.9 % succeed once it recovers (s)", rows["ttr"], lambda v: fmt(v), False),
            ("success after it recovers", rows["after"], pct, False),
        ],
        meshes,
    )


def main():
    out = sys.argv[1]
    p = load(out, "params.json")
    meshes = p["meshes"].split()
    print(f"Profile `{p['profile']}`; raw data in `{out}`.\n")
    for s in p["scenarios"].split():
        if s == "dies":
            print(dies(out, p, meshes))
        elif s == "slow":
            print(slow(out, p, meshes))
        elif s == "overload":
            print(overload(out, p, meshes))
        elif s == "storm":
            print(storm(out, p, meshes))


if __name__ == "__main__":
    main()
