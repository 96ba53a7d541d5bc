#!/usr/bin/env python3
"""Writes the Grafana dashboards shipped with the chart (charts/weft/dashboards/*.json).

The JSON files are committed; edit this script and re-run it (`python3 scripts/gen-dashboards.py`).
e2e/tests/prometheus_dashboards.rs fails when the files drift from this script, and runs every
query in them against a real Prometheus (a table there asserts each panel's value: a new panel
needs a new row in it). See docs/dashboards.md.

Queries read the Linkerd-compatible families (`request_total`, `response_total`,
`response_latency_ms`), whose labels the proxy sets itself (`namespace`, `pod`, `deployment`, ...),
and weft's own (`weft_proxy_*`) where they carry more (TCP, authorization decisions, routes); those
carry no pod labels, so they rely on the scrape job's `namespace` and `pod` target labels
(docs/dashboards.md gives the scrape config).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "charts" / "weft" / "dashboards"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
RI = "$__rate_interval"
# The workload labels the proxy sets (one of them, named after the pod owner's kind).
WORKLOAD_KINDS = ["deployment", "statefulset", "daemonset", "replicaset", "k8s_job", "cronjob"]
WORKLOAD_BY = ", ".join(["namespace"] + WORKLOAD_KINDS)
WORKLOAD_LEGEND = "{{namespace}}/" + "".join("{{%s}}" % k for k in WORKLOAD_KINDS)
# weft's own families have no workload label: a Deployment's pods are named
# <deployment>-<pod-template-hash>-<5 characters>.
DEPLOYMENT_PODS = 'pod=~"$deployment-[a-z0-9]{1,10}-[a-z0-9]{5}"'


def rate(metric: str, sel: str) -> str:
    return f"rate({metric}{{{sel}}}[{RI}])"


def success_rate(sel: str, by: str) -> str:
    """Share of responses not classified as failures; 0 (not empty) where every one failed."""
    total = f"sum by ({by}) ({rate('response_total', sel)})"
    ok = f'sum by ({by}) ({rate("response_total", sel + ", classification!=" + chr(34) + "failure" + chr(34))})'
    return f"({ok} or 0 * {total})\n/\n{total}"


def quantile(q: str, sel: str, by: str, metric: str = "response_latency_ms_bucket", scale: str = "") -> str:
    by_le = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({by_le}) ({rate(metric, sel)})){scale}"


def target(expr: str, legend: str, ref: str) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


class Board:
    def __init__(self, uid: str, title: str, description: str, variables: list[dict]):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y = 0, self.y + 8
        self.panels.append({
            "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": len(self.panels) + 1,
        })
        self.y += 1

    def panel(self, title: str, description: str, unit: str, targets: list[dict],
              kind: str = "timeseries", width: int = 12) -> None:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + 8
        p = {
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": {"h": 8, "w": width, "x": self.x, "y": self.y},
            "id": len(self.panels) + 1,
            "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
        }
        if unit == "percentunit":
            p["fieldConfig"]["defaults"].update({"min": 0, "max": 1})
        if kind == "stat":
            p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                            "colorMode": "value", "graphMode": "area", "textMode": "auto"}
        self.panels.append(p)
        self.x += width

    def json(self) -> dict:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["weft", "service-mesh"],
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"},
            "timepicker": {},
            "timezone": "browser",
            "links": [{"type": "dashboards", "tags": ["weft"], "asDropdown": True, "title": "weft dashboards"}],
            "annotations": {"list": []},
            "templating": {"list": self.variables},
            "panels": self.panels,
        }


def datasource_var() -> dict:
    return {"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}


def query_var(name: str, label: str, query: str, include_all: bool = False) -> dict:
    v = {"name": name, "label": label, "type": "query", "datasource": DS,
         "query": {"query": query, "refId": f"{name}-var"}, "definition": query,
         "refresh": 2, "sort": 1, "hide": 0, "current": {}, "options": [], "regex": "",
         "multi": False, "includeAll": include_all}
    if include_all:
        v["allValue"] = ".*"
    return v


def mesh() -> Board:
    b = Board("weft-mesh", "weft / Mesh",
              "Golden metrics of every meshed workload, per namespace and per workload, as their "
              "proxies see inbound requests; TCP connections and authorization denials.",
              [datasource_var(),
               query_var("namespace", "Namespace", "label_values(request_total, namespace)", include_all=True)])
    inbound = 'direction="inbound", namespace=~"$namespace"'
    b.row("Namespaces")
    b.panel("Request rate by namespace", "Inbound HTTP requests per second, summed over the namespace's meshed pods.",
            "reqps", [target(f"sum by (namespace) ({rate('request_total', inbound)})", "{{namespace}}", "A")])
    b.panel("Success rate by namespace",
            "Share of inbound responses not classified as failure (5xx, gRPC errors, broken streams; 4xx count as success).",
            "percentunit", [target(success_rate(inbound, "namespace"), "{{namespace}}", "A")])
    b.row("Workloads")
    workload_sel = inbound
    b.panel("Request rate by workload", "Inbound HTTP requests per second per workload (the label named after the pod owner's kind).",
            "reqps", [target(f"sum by ({WORKLOAD_BY}) ({rate('request_total', workload_sel)})", WORKLOAD_LEGEND, "A")])
    b.panel("Success rate by workload", "Share of inbound responses not classified as failure, per workload.",
            "percentunit", [target(success_rate(workload_sel, WORKLOAD_BY), WORKLOAD_LEGEND, "A")])
    b.panel("Latency by workload", "Inbound latency (request head to response head) percentiles per workload, from response_latency_ms.",
            "ms", [target(quantile(q, workload_sel, WORKLOAD_BY), f"{name} " + WORKLOAD_LEGEND, ref)
                   for q, name, ref in [("0.5", "p50", "A"), ("0.95", "p95", "B"), ("0.99", "p99", "C")]],
            width=24)
    b.row("TCP and authorization")
    ns = 'namespace=~"$namespace"'
    b.panel("Open TCP connections by namespace", "TCP connections (opaque and upgraded) the proxies relay now, both directions.",
            "short", [target(f"sum by (namespace) (weft_proxy_tcp_open_connections{{{ns}}})", "{{namespace}}", "A")])
    b.panel("Open TCP connections by pod", "TCP connections the proxy of each pod relays now, by direction.",
            "short", [target(f"sum by (namespace, pod, direction) (weft_proxy_tcp_open_connections{{{ns}}})",
                             "{{namespace}}/{{pod}} {{direction}}", "A")])
    deny = 'decision="deny", ' + ns
    b.panel("Authorization denials by namespace", "Inbound requests and connections denied by policy, per second.",
            "reqps", [target(f"sum by (namespace, protocol) ({rate('weft_proxy_authorizations_total', deny)})",
                             "{{namespace}} {{protocol}}", "A")])
    b.panel("Authorization denials by pod", "Inbound requests and connections denied by policy, per second, per pod.",
            "reqps", [target(f"sum by (namespace, pod, protocol) ({rate('weft_proxy_authorizations_total', deny)})",
                             "{{namespace}}/{{pod}} {{protocol}}", "A")])
    return b


def workload() -> Board:
    b = Board("weft-workload", "weft / Workload",
              "One Deployment: its inbound and outbound traffic, latency by route and by backend, who calls it "
              "(client_id) and what it calls (dst_service).",
              [datasource_var(),
               query_var("namespace", "Namespace", "label_values(request_total, namespace)"),
               query_var("deployment", "Deployment", 'label_values(request_total{namespace="$namespace"}, deployment)')])
    me = 'namespace="$namespace", deployment="$deployment"'
    inbound = 'direction="inbound", ' + me
    outbound = 'direction="outbound", ' + me
    b.row("Inbound")
    b.panel("Inbound request rate", "HTTP requests per second to the workload's pods.", "reqps",
            [target(f"sum({rate('request_total', inbound)})", "requests", "A")])
    b.panel("Inbound success rate", "Share of inbound responses not classified as failure.", "percentunit",
            [target(success_rate(inbound, "namespace, deployment"), "success", "A")])
    b.panel("Inbound latency", "Inbound latency percentiles (request head to response head).", "ms",
            [target(quantile(q, inbound, ""), name, ref)
             for q, name, ref in [("0.5", "p50", "A"), ("0.95", "p95", "B"), ("0.99", "p99", "C")]])
    b.panel("Inbound p99 latency by route",
            "p99 per inbound route (the authorization that allowed the request, or default), from weft's own histogram.",
            "ms", [target(quantile("0.99", f'direction="inbound", namespace="$namespace", {DEPLOYMENT_PODS}', "route",
                                   "weft_proxy_request_duration_seconds_bucket", " * 1000"), "{{route}}", "A")])
    b.panel("Top callers", "Inbound requests per second by the caller's mesh identity (client_id; absent for callers without one).",
            "reqps", [target(f"topk(10, sum by (client_id) ({rate('request_total', inbound)}))", "{{client_id}}", "A")])
    b.row("Outbound")
    b.panel("Outbound request rate", "HTTP requests per second the workload sends through its proxies.", "reqps",
            [target(f"sum({rate('request_total', outbound)})", "requests", "A")])
    b.panel("Outbound success rate", "Share of outbound responses not classified as failure.", "percentunit",
            [target(success_rate(outbound, "namespace, deployment"), "success", "A")])
    b.panel("Top destinations", "Outbound requests per second by destination service (a TrafficSplit's backend when split).",
            "reqps", [target(f"topk(10, sum by (dst_namespace, dst_service) ({rate('request_total', outbound)}))",
                             "{{dst_service}}.{{dst_namespace}}", "A")])
    b.panel("Outbound p99 latency by backend", "p99 per destination service (backend), as the caller's proxy measures it.",
            "ms", [target(quantile("0.99", outbound, "dst_namespace, dst_service"), "{{dst_service}}.{{dst_namespace}}", "A")])
    return b


def canary() -> Board:
    b = Board("weft-trafficsplit", "weft / TrafficSplit canary",
              "A TrafficSplit's apex service: how its requests are shared between backends and how each backend "
              "answers, as the callers' proxies see it (outbound authority = apex, dst_service = backend).",
              [datasource_var(),
               query_var("namespace", "Namespace", 'label_values(response_total{direction="outbound"}, dst_namespace)'),
               query_var("apex", "Apex service",
                         'label_values(response_total{direction="outbound", dst_namespace="$namespace"}, authority)')])
    apex = 'direction="outbound", authority="$apex"'
    b.panel("Share of requests by backend", "Share of the apex's requests each backend answered.", "percentunit",
            [target(f"sum by (dst_service) ({rate('response_total', apex)})\n/ ignoring (dst_service) group_left\n"
                    f"sum({rate('response_total', apex)})", "{{dst_service}}", "A")])
    b.panel("Request rate by backend", "Requests per second each backend answered.", "reqps",
            [target(f"sum by (dst_service) ({rate('response_total', apex)})", "{{dst_service}}", "A")])
    b.panel("Success rate by backend", "Share of each backend's responses not classified as failure.", "percentunit",
            [target(success_rate(apex, "dst_service"), "{{dst_service}}", "A")])
    b.panel("p99 latency by backend", "p99 latency per backend, as the callers' proxies measure it.", "ms",
            [target(quantile("0.99", apex, "dst_service"), "{{dst_service}}", "A")])
    return b


def main() -> None:
    """Writes into charts/weft/dashboards, or into the folder given as the only argument."""
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    out.mkdir(parents=True, exist_ok=True)
    for name, board in [("weft-mesh", mesh()), ("weft-workload", workload()), ("weft-trafficsplit", canary())]:
        (out / f"{name}.json").write_text(json.dumps(board.json(), indent=2) + "\n")


if __name__ == "__main__":
    main()
