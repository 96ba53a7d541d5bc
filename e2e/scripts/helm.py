#!/usr/bin/env python3
"""Lint, render, install and uninstall the weft Helm chart with the Helm v4 SDK for Python
(PyPI `helm-python-sdk`): no helm binary and no network needed.

    e2e/scripts/helm.py setup                         # create the venv (~/.cache/weft/helm-venv)
    e2e/scripts/helm.py lint     [--set k=v ...] [-f values.yaml]
    e2e/scripts/helm.py template [--namespace weft-system] [--name weft] [--set k=v ...]
                                 [--kube-version v1.20.2] [--api-versions policy/v1/PodDisruptionBudget ...]
    e2e/scripts/helm.py install  --kubeconfig PATH [--namespace weft-system] [--name weft] [--set k=v ...]
    e2e/scripts/helm.py uninstall --kubeconfig PATH [--namespace weft-system] [--name weft]

The script re-executes itself inside the venv when `helm_python` is not importable. `template`
prints the manifests in a stable order (template path), separated by `---`. Exit status 1 on lint
errors (messages on stderr), 2 on usage or SDK errors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "weft"
VENV = Path(os.environ.get("WEFT_HELM_VENV", Path.home() / ".cache" / "weft" / "helm-venv"))
PACKAGE = "helm-python-sdk==0.2.2"


def venv_python() -> Path:
    return VENV / "bin" / "python3"


def setup() -> None:
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(venv_python()), "-m", "pip", "install", "-q", PACKAGE], check=True)


def ensure_sdk() -> None:
    try:
        import helm_python  # noqa: F401
    except ImportError:
        if os.environ.get("WEFT_HELM_REEXEC"):
            sys.exit("helm.py: helm_python not importable in the venv; run `e2e/scripts/helm.py setup`")
        if not venv_python().exists():
            setup()
        env = dict(os.environ, WEFT_HELM_REEXEC="1")
        os.execve(str(venv_python()), [str(venv_python()), __file__, *sys.argv[1:]], env)


def parse_values(args: argparse.Namespace) -> dict:
    import helm_python as helm

    values: dict = {}
    for f in args.values or []:
        merge(values, helm.values_from_yaml(Path(f).read_text()))
    for s in args.set or []:
        merge(values, helm.parse_set_string(s))
    return values


def merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def render(values: dict, name: str, namespace: str, kube_version: str | None = None,
           api_versions: list[str] | None = None) -> str:
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    if kube_version or api_versions:
        # The SDK's render options take the capabilities `helm template --kube-version
        # --api-versions` sets; its Python wrapper does not expose them yet.
        from helm_python import _native

        opts = {"name": name, "namespace": namespace, "is_install": True}
        if kube_version:
            opts["kube_version"] = kube_version
        if api_versions:
            opts["api_versions"] = api_versions
        manifests = json.loads(_native.call_string(
            "helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))
    else:
        manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")) or "NOTES" in path:
            continue
        text = manifests[path].strip()
        if text:
            docs.append(f"# Source: {path}\n{text}")
    return "\n---\n".join(docs) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="helm.py")
    p.add_argument("command", choices=["setup", "lint", "template", "install", "uninstall"])
    p.add_argument("--name", default="weft")
    p.add_argument("--namespace", "-n", default="weft-system")
    p.add_argument("--kubeconfig")
    p.add_argument("--set", action="append")
    p.add_argument("--values", "-f", action="append")
    p.add_argument("--timeout", type=int, default=120)
    p.add_argument("--wait", action="store_true", help="wait for the operator to be ready")
    p.add_argument("--kube-version", default=None,
                   help="lint or template against this Kubernetes version, e.g. v1.20.2")
    p.add_argument("--api-versions", action="append",
                   help="template: an API the cluster serves, e.g. policy/v1/PodDisruptionBudget")
    args = p.parse_args()
    if args.command == "setup":
        setup()
        return 0
    ensure_sdk()
    import helm_python as helm

    try:
        values = parse_values(args)
        if args.command == "lint":
            report = helm.lint(str(CHART), values, strict=True, namespace=args.namespace,
                               kube_version=args.kube_version)
            for m in report.get("messages", []):
                sev = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}.get(m.get("severity"), "?")
                print(f"[{sev}] {m.get('path')}: {m.get('error')}", file=sys.stderr)
            errors = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
            errors += [{"error": e} for e in report.get("errors") or []]
            if errors:
                return 1
            print(f"lint: {report.get('total_charts_linted', 0)} chart(s) linted, no findings")
            return 0
        if args.command == "template":
            sys.stdout.write(render(values, args.name, args.namespace, args.kube_version,
                                    args.api_versions))
            return 0
        if not args.kubeconfig:
            print("helm.py: --kubeconfig is required", file=sys.stderr)
            return 2
        cfg = helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
        if args.command == "install":
            rel = cfg.install(str(CHART), args.name, values, namespace=args.namespace,
                              create_namespace=True, timeout=args.timeout,
                              wait="watcher" if args.wait else None)
            print(json.dumps({"name": rel.get("name"), "version": rel.get("version"),
                              "status": (rel.get("info") or {}).get("status")}))
            return 0
        cfg.uninstall(args.name, ignore_not_found=True, timeout=args.timeout)
        print(json.dumps({"uninstalled": args.name}))
        return 0
    except helm.HelmError as e:
        print(f"helm.py {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
