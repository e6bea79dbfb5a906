#!/usr/bin/env python3
"""Lint, render and validate the Helm chart, the way CI does.

  python3 scripts/chart/check.py              lint + render every values file, validate every object,
                                              check and unit-test the alert rules with promtool
  python3 scripts/chart/check.py --render F   print the manifests rendered with values file F
                                              ("-" for the defaults), for tests/chart.rs

Helm itself runs through PyPI's helm-python-sdk (Helm's Go SDK), objects are validated with
kubernetes-validate against the oldest and newest Kubernetes versions the chart supports, and the
PrometheusRule's rules go through Prometheus's own promtool.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import helm_python
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "graygate")
RELEASE = "graygate"
NAMESPACE = "graygate-system"
# The chart's kubeVersion floor and the newest schema kubernetes-validate ships.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
VALUES_FILES = ["-"] + sorted(
    os.path.join("ci", f) for f in os.listdir(os.path.join(CHART, "ci")) if f.endswith(".yaml")
)
ALERT_TESTS = os.path.join(ROOT, "scripts", "chart", "alerts_test.yaml")
# Kinds outside Kubernetes's own schemas, checked by other means below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def load_values(name):
    if name == "-":
        return {}
    with open(os.path.join(CHART, name)) as f:
        return yaml.safe_load(f) or {}


def render(name):
    """The objects the chart renders with values file `name`, CRDs first."""
    chart = helm_python.Chart.load(CHART)
    out = chart.render(load_values(name), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    crd_dir = os.path.join(CHART, "crds")
    for f in sorted(os.listdir(crd_dir)):
        with open(os.path.join(crd_dir, f)) as fh:
            docs.extend(d for d in yaml.safe_load_all(fh) if d)
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(out[path]) if d)
    return docs


def fail(msg):
    print(f"chart check FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def lint(name):
    report = helm_python.lint(CHART, values=load_values(name), strict=False, namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    if report["errors"] or bad:
        fail(f"helm lint ({name}): {json.dumps(report['errors'] or bad, indent=2)}")


def validate(name, docs):
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        where = f"{name}: {d.get('kind')} {d.get('metadata', {}).get('name')}"
        if key in CUSTOM_KINDS:
            for field in ("apiVersion", "kind", "metadata", "spec"):
                if field not in d:
                    fail(f"{where}: missing {field}")
            continue
        for v in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{where} is not a valid Kubernetes {v} object: {e.message} at {list(e.path)}")


def check_operator_pod(name, docs):
    """The security posture and probes the chart promises, whatever the values."""
    deps = [d for d in docs if d["kind"] == "Deployment"]
    if len(deps) != 1:
        fail(f"{name}: expected one Deployment, got {len(deps)}")
    pod = deps[0]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    checks = {
        "runAsNonRoot": pod["securityContext"].get("runAsNonRoot") is True,
        "seccomp RuntimeDefault": pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault",
        "readOnlyRootFilesystem": sc.get("readOnlyRootFilesystem") is True,
        "capabilities dropped": sc.get("capabilities", {}).get("drop") == ["ALL"],
        "no privilege escalation": sc.get("allowPrivilegeEscalation") is False,
        "liveness on /healthz": c["livenessProbe"]["httpGet"]["path"] == "/healthz",
        "readiness on /readyz": c["readinessProbe"]["httpGet"]["path"] == "/readyz",
        "resources": bool(c.get("resources", {}).get("requests")),
    }
    missing = [k for k, ok in checks.items() if not ok]
    if missing:
        fail(f"{name}: operator pod lacks {', '.join(missing)}")
    replicas = deps[0]["spec"]["replicas"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if (replicas > 1) != bool(pdbs):
        fail(f"{name}: {replicas} replicas but {len(pdbs)} PodDisruptionBudgets")


def check_rules(name, docs):
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if not rules:
        return False
    promtool = shutil.which("promtool")
    if not promtool:
        fail("promtool not found (Debian package prometheus); run `make deps`")
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = os.path.join(tmp, "graygate-rules.yaml")
        with open(rules_file, "w") as f:
            yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, f)
        # The alert tests name their rules file; point them at the rules just rendered.
        with open(ALERT_TESTS) as f:
            test = yaml.safe_load(f)
        test["rule_files"] = [rules_file]
        test_file = os.path.join(tmp, "alerts_test.yaml")
        with open(test_file, "w") as f:
            yaml.safe_dump(test, f)
        for args in (["check", "rules", rules_file], ["test", "rules", test_file]):
            r = subprocess.run([promtool, *args], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{name}: promtool {' '.join(args[:2])}:\n{r.stdout}\n{r.stderr}")
    return True


def check_dashboard():
    """Every dashboard query parses with Prometheus's own parser (as a recording rule for promtool)."""
    with open(os.path.join(CHART, "dashboards", "graygate.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    if not exprs:
        fail("the dashboard has no queries")
    grafana_vars = {"$__rate_interval": "5m", "$job": "graygate-metrics"}
    rules = []
    for i, e in enumerate(exprs):
        for k, v in grafana_vars.items():
            e = e.replace(k, v)
        if "$" in e:
            fail(f"dashboard query uses an unknown variable: {e}")
        rules.append({"record": f"graygate:dashboard_query_{i}", "expr": e})
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dashboard-rules.yaml")
        with open(path, "w") as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        r = subprocess.run([shutil.which("promtool") or "promtool", "check", "rules", path], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"dashboard queries do not parse:\n{r.stdout}\n{r.stderr}")
    return len(exprs)


def check_schema_rejects_bad_values():
    chart = helm_python.Chart.load(CHART)
    for bad, field in [({"replicas": 0}, "/replicas"), ({"logFormat": "xml"}, "/logFormat"),
                       ({"watchNamespaces": ["Not_A_Namespace"]}, "/watchNamespaces/0"),
                       ({"unknownValue": 1}, "unknownValue")]:
        try:
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)
        except helm_python.HelmValuesError as e:
            if field not in str(e):
                fail(f"values {bad} rejected without naming {field}: {e}")
            continue
        fail(f"values {bad} were accepted; values.schema.json should reject them")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        yaml.safe_dump_all(render(sys.argv[2]), sys.stdout, sort_keys=False)
        return
    if len(sys.argv) != 1:
        fail(__doc__)
    tested_rules = False
    for name in VALUES_FILES:
        lint(name)
        docs = render(name)
        validate(name, docs)
        check_operator_pod(name, docs)
        tested_rules |= check_rules(name, docs)
        kinds = sorted({d["kind"] for d in docs})
        print(f"chart ok with {'default values' if name == '-' else name}: {len(docs)} objects ({', '.join(kinds)})")
    if not tested_rules:
        fail("no values file enables prometheusRule, so the alerts were never tested")
    check_schema_rejects_bad_values()
    print("values.schema.json rejects bad values, naming the field")
    print(f"dashboard ok: {check_dashboard()} queries parse")


if __name__ == "__main__":
    main()
