#!/usr/bin/env python3
"""Summarise e2e/bench/proxy-bench.sh results as Markdown: medians over rounds, ratios to direct.

usage: summarize.py RESULTS.tsv "1000 5000"
RESULTS.tsv rows: round, path, metric, value (a number, or the file holding oha JSON / wrk text).
"""
import json
import re
import statistics
import sys
from collections import defaultdict

ORDER = ["direct", "weft-1hop", "floor-1hop", "affine-1hop", "raw-1hop", "haproxy-1hop", "nginx-1hop",
         "linkerd-1hop", "weft-2hop-mtls", "floor-2hop-mtls", "haproxy-2hop-tls"]
# The peer each weft path is judged against, and how many proxy hops a path has.
HOPS = {"direct": 0, "weft-1hop": 1, "haproxy-1hop": 1, "nginx-1hop": 1, "linkerd-1hop": 1, "floor-1hop": 1,
        "affine-1hop": 1, "raw-1hop": 1,
        "weft-2hop-mtls": 2, "floor-2hop-mtls": 2, "haproxy-2hop-tls": 2}


def oha(path):
    with open(path) as f:
        j = json.load(f)
    pct = j.get("latencyPercentiles", {})
    codes = j.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k == "200")
    # "aborted due to deadline": requests still in flight when -z ran out, not failures.
    errors = {k: v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k}
    bad = sum(v for k, v in codes.items() if k != "200") + sum(errors.values())
    return {
        "p50": pct.get("p50"),
        "p99": pct.get("p99"),
        "p99.9": pct.get("p99.9"),
        "rps": j.get("summary", {}).get("requestsPerSec"),
        "ok": ok,
        "bad": bad,
    }


def wrk(path):
    text = open(path).read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    bad = int(non2xx.group(1)) if non2xx else 0
    if sock:
        bad += sum(int(x) for x in sock.groups())
    return {"rps": float(m.group(1)) if m else None, "bad": bad}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt_ms(s):
    return "–" if s is None else f"{s * 1000:.2f}"


def main():
    results, rates = sys.argv[1], [int(r) for r in sys.argv[2].split()]
    raw = defaultdict(lambda: defaultdict(list))  # path -> metric -> [values over rounds]
    meta = {}
    for line in open(results):
        rnd, path, metric, value = line.rstrip("\n").split("\t")
        if path == "all":
            meta[metric] = value
            continue
        if metric.startswith("oha_"):
            rate = metric[4:]
            o = oha(value)
            for k, v in o.items():
                raw[path][f"{k}@{rate}"].append(v)
        elif metric == "wrk":
            # CLIENT_H2 runs measure saturation with oha (JSON), others with wrk (text).
            w = oha(value) if value.endswith(".json") else wrk(value)
            raw[path]["sat"].append(w["rps"])
            raw[path]["bad@wrk"].append(w["bad"])
        else:
            raw[path][metric].append(float(value))
    paths = [p for p in ORDER if p in raw]
    m = {p: {k: med(v) for k, v in raw[p].items()} for p in paths}
    d = m.get("direct", {})

    out = []
    out.append("### Latency at a fixed rate (oha, open loop, latency-corrected; ms, median of rounds)\n")
    hdr = "| path |"
    sep = "|---|"
    for r in rates:
        for q in ["p50", "p99", "p99.9"]:
            hdr += f" {q} @{r // 1000}k |"
            sep += "---|"
        hdr += f" added p99 @{r // 1000}k |"
        sep += "---|"
    out += [hdr, sep]
    for p in paths:
        row = f"| {p} |"
        for r in rates:
            for q in ["p50", "p99", "p99.9"]:
                v = m[p].get(f"{q}@{r}")
                base = d.get(f"{q}@{r}")
                ratio = f" ({v / base:.1f}×)" if v and base and p != "direct" else ""
                row += f" {fmt_ms(v)}{ratio} |"
            v, base = m[p].get(f"p99@{r}"), d.get(f"p99@{r}")
            row += f" {'–' if p == 'direct' or v is None or base is None else f'{(v - base) * 1000:+.2f}'} |"
        out.append(row)

    out.append("\n### Saturation, CPU and memory\n")
    out.append("| path | saturation rps (wrk -t1 -c64, rounds) | ratio to direct | CPU % of a core per 1,000 rps (@" +
               f"{rates[-1] // 1000}k) | RSS idle MiB | RSS after load MiB | RSS settled MiB | peak RSS (VmHWM) MiB | "
               "RssAnon idle / after load / settled MiB | non-200/errors |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for p in paths:
        sat = m[p].get("sat")
        rounds = " / ".join(f"{x:,.0f}" for x in raw[p]["sat"] if x is not None)
        ratio = f"{sat / d['sat']:.2f}" if sat and d.get("sat") else "–"
        r = rates[-1]
        cpu, got = m[p].get(f"cpu_s_{r}"), m[p].get(f"rps@{r}")
        wall = m[p].get(f"wall_s_{r}")
        cpu_pct = "–"
        if p != "direct" and cpu is not None and got and wall:
            # core-seconds per second, per 1,000 rps achieved
            cpu_pct = f"{100 * cpu / wall / (got / 1000):.1f}"
        mib = lambda k: "–" if m[p].get(k) is None else f"{m[p][k] / 1024:.1f}"
        bad = sum(sum(x for x in raw[p][k] if x) for k in raw[p] if k.startswith("bad@"))
        out.append(f"| {p} | {sat:,.0f} ({rounds}) | {ratio} | {cpu_pct} | {mib('rss_idle_kib')} | "
                   f"{mib('rss_after_load_kib')} | {mib('rss_settled_kib')} | {mib('hwm_kib')} | "
                   f"{mib('anon_idle_kib')} / {mib('anon_after_load_kib')} / {mib('anon_settled_kib')} | {bad} |"
                   if sat else f"| {p} | – | – | – | – | – | – | – | – | {bad} |")
    out.append("")
    out.append("Two-hop rows sum both proxies' CPU and memory. RssAnon: the processes' own memory (heap, "
               "stacks, relocated data); RSS adds RssFile, the executable's and libraries' pages mapped from "
               "the page cache and shared by every process of the same binary. After load: read as the path's last "
               "saturation round ends; settled: at the end of the run, at least "
               f"{meta.get('settle_s', '?')} s after the path's last load. Load average (1 min) before/after: "
               f"{meta.get('loadavg_start', '?')} / {meta.get('loadavg_end', '?')}; "
               f"CPU time stolen by the hypervisor during the rounds: {meta.get('steal_pct', '?')} %; "
               f"benchmark processes at niceness {meta.get('nice', '0')}; response body "
               f"{meta.get('body', '1k')}; client to proxy "
               f"{'HTTP/2 (h2c), saturation by oha -c64' if meta.get('client_h2', '0') not in ('', '0') else 'HTTP/1.1'}.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
