"""The Helm chart (helm/gem-proxy): rendered by the real helm v3 binary, checked the way a cluster
and a reviewer would check it.

- `helm lint --strict` and `helm template` for every values file in helm/gem-proxy/ci/; the files
  in helm/ci-invalid/ fail with the schema's (or the chart's) message.
- Every rendered manifest validates against the Kubernetes schemas of 1.27 up to the newest that
  kubernetes-validate ships (--strict), rendered for that version; ServiceMonitor, PrometheusRule
  and HTTPRoute against their CRD models; the PrometheusRule passes `promtool check rules`.
- What a reviewer looks for: probes on real endpoints of the binary, selectors that match the pod
  labels, no secret in a ConfigMap, a config checksum that follows the config, the security
  context, the rollout and termination settings, shared state whenever there are replicas.
- The rendered config is accepted by the real binary, and its probe endpoints answer.
- The pod runs: `podman kube play` of the rendered manifests with the gateway's image.

helm comes from scripts/setup.sh (a cache outside the clone); GEM_PROXY_HELM overrides it.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import ROOT, _binary, _stop, free_port

CHART = ROOT / "helm" / "gem-proxy"
CI = CHART / "ci"
INVALID = ROOT / "helm" / "ci-invalid"
HELM = Path(
    os.environ.get("GEM_PROXY_HELM")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gem-proxy" / "helm" / "helm"
)

# The Prometheus Operator's and Gateway API's kinds, as a cluster with their CRDs reports them.
CRD_API_VERSIONS = [
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
    "gateway.networking.k8s.io/v1/HTTPRoute",
]
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "HTTPRoute"}

# Each values file kept in the repo, with the API versions its cluster serves and the kinds it
# must render (beyond the ones every release has).
CASES: dict[str, dict[str, Any]] = {
    "defaults-values.yaml": {"api": [], "kinds": {"StatefulSet", "PodDisruptionBudget"}},
    "single-memory-values.yaml": {"api": [], "kinds": set()},
    "bundled-redis-hpa-values.yaml": {
        "api": [],
        "kinds": {"StatefulSet", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
    },
    "external-redis-ingress-values.yaml": {"api": [], "kinds": {"Ingress", "PodDisruptionBudget"}},
    "vertex-otlp-monitoring-values.yaml": {"api": CRD_API_VERSIONS, "kinds": CUSTOM_KINDS},
    "passthrough-values.yaml": {"api": [], "kinds": {"Ingress", "StatefulSet", "PodDisruptionBudget"}},
}
ALWAYS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "NetworkPolicy"}


def _helm() -> Path:
    if not (HELM.is_file() and os.access(HELM, os.X_OK)):
        pytest.fail(f"helm not found at {HELM}: run scripts/setup.sh (or set GEM_PROXY_HELM)", pytrace=False)
    return HELM


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    # No cluster: KUBECONFIG points nowhere, so nothing can reach one by accident.
    return subprocess.run(
        [str(_helm()), *args], capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": os.devnull}
    )


def _stderr(proc: subprocess.CompletedProcess[str]) -> str:
    """helm's stderr without its notes about the chart's symlinks (files/ → grafana/)."""
    return "\n".join(line for line in proc.stderr.splitlines() if "found symbolic link in path" not in line)


@cache
def _render(
    files: tuple[str, ...], api: tuple[str, ...], sets: tuple[str, ...], kube: str | None, release: str = "gem"
) -> str:
    args = ["template", release, str(CHART), "--namespace", "gemini"]
    for f in files:
        args += ["-f", f]
    for a in api:
        args += ["--api-versions", a]
    for s in sets:
        args += ["--set", s]
    if kube:
        args += ["--kube-version", kube]
    proc = helm(*args)
    assert proc.returncode == 0, f"helm template {' '.join(args[2:])} failed:\n{_stderr(proc)}"
    return proc.stdout


def render(case: str | None = None, *, sets: tuple[str, ...] = (), kube: str | None = None, api=None) -> list[dict]:
    files = (str(CI / case),) if case else ()
    api_versions = tuple(api if api is not None else (CASES[case]["api"] if case else ()))
    return [d for d in yaml.safe_load_all(_render(files, api_versions, sets, kube)) if d]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def config_of(docs: list[dict]) -> dict:
    return yaml.safe_load(one(docs, "ConfigMap", "gem-proxy")["data"]["proxy.yaml"])


def gateway_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def secret_env(docs: list[dict]) -> dict[str, str]:
    secrets = [d for d in docs if d["kind"] == "Secret"]
    return {k: base64.b64decode(v).decode() for s in secrets for k, v in (s.get("data") or {}).items()}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def kube_versions() -> list[str]:
    """1.27 up to the newest version kubernetes-validate has schemas for."""
    import kubernetes_validate

    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = set()
    for d in root.iterdir():
        m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", d.name)
        if m and (int(m[1]), int(m[2])) >= (1, 27):
            found.add((int(m[1]), int(m[2]), int(m[3])))
    assert found, f"no schemas in {root}"
    return [f"{a}.{b}.{c}" for a, b, c in sorted(found)]


# --------------------------------------------------------------------------- chart metadata


def test_chart_metadata_follows_the_crate():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == cargo["workspace"]["package"]["version"]
    assert chart["kubeVersion"] == ">=1.27.0-0"
    # The default image is the appVersion's.
    assert gateway_container(render("defaults-values.yaml"))["image"].endswith(":" + chart["appVersion"])
    # Older clusters are refused by helm itself.
    proc = helm("template", "gem", str(CHART), "-f", str(CI / "defaults-values.yaml"), "--kube-version", "1.26.9")
    assert proc.returncode != 0 and "incompatible with Kubernetes v1.26.9" in _stderr(proc), _stderr(proc)


def test_values_table_in_readme_is_up_to_date():
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "scripts" / "helm-docs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    readme = (CHART / "README.md").read_text()
    for key in ("replicaCount", "redis.url", "secrets.existingSecret", "config.server.port", "serviceMonitor.labels"):
        assert f"| {key} |" in readme


def test_values_docs_generator_refuses_undocumented_keys():
    import importlib.util

    spec = importlib.util.spec_from_file_location("helm_docs", ROOT / "scripts" / "helm-docs.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    good = "# -- Documented\n# over two lines.\na: 1\nb:\n  # -- Also.\n  c: [1]\n  # -- A list.\n  d:\n    - x: 1\n"
    assert mod.documented_keys(good) == [
        ("a", "Documented over two lines.", None),
        ("b.c", "Also.", None),
        ("b.d", "A list.", None),
    ]
    with pytest.raises(SystemExit, match=r"keys without a '# --' comment: b\.e"):
        mod.documented_keys(good + "  e: 2\n")
    with pytest.raises(SystemExit, match=r"keys without a '# --' comment: f"):
        mod.documented_keys(good + "f:\n  - 1\n")


def test_yaml_files_pass_yamllint():
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *sorted(CI.glob("*.yaml")), *sorted(INVALID.glob("*.yaml"))]
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "yamllint"),
            "--strict",
            "-c",
            str(ROOT / "helm" / ".yamllint"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And what the chart renders (the alert rules' and dashboard's long lines are theirs).
    rendered = "".join(_render((str(CI / c),), tuple(CASES[c]["api"]), (), None) for c in CASES)
    relaxed = json.dumps({"extends": str(ROOT / "helm" / ".yamllint"), "rules": {"line-length": "disable"}})
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "yamllint"), "--strict", "-d", relaxed, "-"],
        input=rendered,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- lint, render, refuse


@pytest.mark.parametrize("case", sorted(CASES))
def test_lint_strict(case: str):
    proc = helm("lint", "--strict", str(CHART), "-f", str(CI / case))
    assert proc.returncode == 0, proc.stdout + _stderr(proc)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_template_renders_what_the_values_ask_for(case: str):
    docs = render(case)
    kinds = {d["kind"] for d in docs}
    assert ALWAYS <= kinds, kinds
    assert CASES[case]["kinds"] <= kinds, kinds
    for absent in {"StatefulSet", "HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget"} - CASES[case]["kinds"]:
        assert absent not in kinds, f"{case} rendered a {absent}"
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources: {names}"


def test_prometheus_operator_resources_only_with_its_crds():
    without = {d["kind"] for d in render("vertex-otlp-monitoring-values.yaml", api=[])}
    assert not {"ServiceMonitor", "PrometheusRule"} & without
    with_crds = {d["kind"] for d in render("vertex-otlp-monitoring-values.yaml")}
    assert {"ServiceMonitor", "PrometheusRule"} <= with_crds


def _expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <message>'"
    return first[len("# expect: ") :]


@pytest.mark.parametrize("bad", sorted(p.name for p in INVALID.glob("*.yaml")))
def test_invalid_values_fail_with_a_clear_message(bad: str):
    path = INVALID / bad
    proc = helm("template", "gem", str(CHART), "-f", str(path))
    assert proc.returncode != 0, f"{bad} rendered:\n{proc.stdout[:2000]}"
    assert _expected_message(path) in _stderr(proc), _stderr(proc)


def test_schema_refuses_unshared_state_and_bad_ports():
    """The two cases the issue names fail in the schema itself, before any template runs."""
    for bad in ("two-replicas-memory.yaml", "bad-port.yaml"):
        err = _stderr(helm("template", "gem", str(CHART), "-f", str(INVALID / bad)))
        assert "values don't meet the specifications of the schema" in err, err
    # allowUnsharedState is the documented way out.
    docs = render(
        None,
        sets=("replicaCount=2", "redis.enabled=false", "allowUnsharedState=true", "secrets.env.GEMINI_API_KEY_1=x"),
    )
    assert "state" not in config_of(docs)


def test_no_values_at_all_names_the_missing_key():
    proc = helm("template", "gem", str(CHART))
    assert proc.returncode != 0
    assert "config refers to ${GEMINI_API_KEY_1}: set secrets.env.GEMINI_API_KEY_1" in _stderr(proc)


def test_notes_say_how_to_reach_the_gateway_and_mint_a_token(tmp_path: Path):
    """NOTES.txt rendered by helm itself: `helm template` skips it, so a copy of the chart carries
    it as a template (`helm install --dry-run` would need a cluster)."""
    chart = tmp_path / "gem-proxy"
    shutil.copytree(CHART, chart, symlinks=False)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "\n{{- end -}}\n")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: |\n    {{- include "test.notes" . | nindent 4 }}\n'
    )

    def notes(*sets: str) -> str:
        args = ["template", "gem", str(chart), "-n", "gemini", "-f", str(CI / "defaults-values.yaml")]
        proc = helm(*args, *(a for s in sets for a in ("--set", s)), "--show-only", "templates/zz-notes.yaml")
        assert proc.returncode == 0, _stderr(proc)
        return yaml.safe_load(proc.stdout)["data"]["notes"]

    text = notes()
    assert "https://gem-gem-proxy.gemini.svc:8443" in text
    assert "TOKEN=$(kubectl -n gemini exec deploy/gem-gem-proxy -- gem-proxy token --sub my-app" in text
    assert "port-forward svc/gem-gem-proxy-admin 9090" in text
    assert "GEM_PROXY_ADMIN_TOKEN" in text
    assert "WARNING" not in text
    assert "WARNING: client authentication is off" in notes("config.auth.enabled=false")
    text = notes("ingress.enabled=true", "ingress.hosts[0]=ai.example.org")
    assert "https://ai.example.org" in text and "port-forward svc/gem-gem-proxy 8443" not in text


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("kube", kube_versions())
def test_manifests_validate_against_kubernetes_schemas(kube: str):
    import kubernetes_validate

    custom, unique = set(), {}
    for case in CASES:
        for doc in render(case, kube=kube):
            if doc["kind"] in CUSTOM_KINDS:
                custom.add(doc["kind"])
            else:
                # The same manifest from several values files is validated once.
                unique.setdefault(json.dumps(doc, sort_keys=True), (case, doc))
    for case, doc in unique.values():
        try:
            kubernetes_validate.validate(doc, kube, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{case} {doc['kind']}/{doc['metadata']['name']} on {kube}: {e.message} at {list(e.path)}")
    assert custom == CUSTOM_KINDS
    # The validator bites: an unknown field and a wrong type are refused.
    bad = copy.deepcopy(one(render("defaults-values.yaml", kube=kube), "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kube, strict=True)


def test_prestop_pause_uses_what_each_kubernetes_version_has():
    for kube, want in (("1.27.0", "exec"), ("1.29.0", "exec"), ("1.30.0", "sleep"), (kube_versions()[-1], "sleep")):
        pre = gateway_container(render("defaults-values.yaml", kube=kube))["lifecycle"]["preStop"]
        assert list(pre) == [want], (kube, pre)
        assert (pre["sleep"]["seconds"] if want == "sleep" else int(pre["exec"]["command"][-1])) == 10


def _crd_validate(docs: list[dict]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", str(ROOT / "tests" / "e2e" / "helm_crd_validate.mjs")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_custom_resources_validate_against_their_crd_models():
    docs = [d for d in render("vertex-otlp-monitoring-values.yaml") if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in docs} == CUSTOM_KINDS
    proc = _crd_validate(docs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [json.loads(line)["ok"] for line in proc.stdout.splitlines()] == [True] * len(docs)
    # The models bite: wrong types are refused.
    broken = copy.deepcopy(docs)
    for d in broken:
        if d["kind"] == "ServiceMonitor":
            d["spec"]["endpoints"][0]["interval"] = "every minute"
        elif d["kind"] == "PrometheusRule":
            d["spec"]["groups"][0]["rules"][0]["for"] = 60
        else:
            d["spec"]["rules"][0]["backendRefs"][0]["port"] = "https"
    proc = _crd_validate(broken)
    assert proc.returncode == 1
    assert [json.loads(line)["ok"] for line in proc.stdout.splitlines()] == [False] * len(docs), proc.stdout


# --------------------------------------------------------------------------- one source of truth


def test_alert_rules_and_dashboard_come_from_grafana(tmp_path: Path):
    for link, target in (
        (CHART / "files" / "alerts.yml", ROOT / "grafana" / "prometheus" / "alerts.yml"),
        (CHART / "files" / "gem-proxy.json", ROOT / "grafana" / "dashboards" / "gem-proxy.json"),
    ):
        assert link.is_symlink(), f"{link} must be a symlink to {target} (one source of truth)"
        assert link.resolve() == target.resolve()

    docs = render("vertex-otlp-monitoring-values.yaml")
    alerts = yaml.safe_load((ROOT / "grafana" / "prometheus" / "alerts.yml").read_text())
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == alerts["groups"]

    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "Gateways"
    assert json.loads(dashboard["data"]["gem-proxy.json"]) == json.loads(
        (ROOT / "grafana" / "dashboards" / "gem-proxy.json").read_text()
    )

    # A packaged chart carries the files' content, not the links.
    proc = helm("package", str(CHART), "-d", str(tmp_path))
    assert proc.returncode == 0, _stderr(proc)
    (archive,) = tmp_path.glob("gem-proxy-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("gem-proxy/files/alerts.yml")
        assert member.isfile()
        packed = tar.extractfile(member)
        assert packed is not None
        assert packed.read() == (ROOT / "grafana" / "prometheus" / "alerts.yml").read_bytes()


def test_prometheus_rule_passes_promtool(tmp_path: Path):
    rule = one(render("vertex-otlp-monitoring-values.yaml"), "PrometheusRule")
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule['spec']['groups'])} rules found" in proc.stdout


def test_service_monitor_scrapes_the_admin_port_as_the_alerts_expect():
    docs = render("vertex-otlp-monitoring-values.yaml")
    sm = one(docs, "ServiceMonitor")
    admin = one(docs, "Service", "-admin")
    assert matches(sm["spec"]["selector"]["matchLabels"], admin["metadata"]["labels"])
    assert not matches(sm["spec"]["selector"]["matchLabels"], one(docs, "Service", "gem-proxy")["metadata"]["labels"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in admin["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    job = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"][0]["replacement"]
    # The alert rules select job=~"gem-proxy.*".
    assert re.fullmatch("gem-proxy.*", job)
    assert 'job=~"gem-proxy.*"' in (ROOT / "grafana" / "prometheus" / "alerts.yml").read_text()
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --------------------------------------------------------------------------- what a reviewer checks


def _admin_routes() -> set[str]:
    """The GET paths the admin router of the binary serves (src/admin.rs)."""
    src = (ROOT / "src" / "admin.rs").read_text()
    return set(re.findall(r'\(&Method::GET \| &Method::HEAD, "(/[a-z/]+)"\)', src))


@pytest.mark.parametrize("case", sorted(CASES))
def test_probes_point_at_endpoints_of_the_binary(case: str):
    routes = _admin_routes()
    assert {"/health/live", "/health/ready", "/metrics"} <= routes, routes
    docs = render(case)
    c = gateway_container(docs)
    cfg = config_of(docs)
    admin_port = cfg["metrics"]["prometheus_port"]
    assert cfg["metrics"]["enabled"] is True
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy": cfg["server"]["port"], "admin": admin_port}
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in routes
        assert probe["port"] == admin_port
    # The startup probe gives ACME's first order time before liveness counts.
    s = c["startupProbe"]
    assert s["failureThreshold"] * s["periodSeconds"] >= 120


@pytest.mark.parametrize("case", sorted(CASES))
def test_selectors_match_the_pod_labels(case: str):
    docs = render(case)
    deploy = one(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert matches(deploy["spec"]["selector"]["matchLabels"], pod_labels)
    container_ports = {p["name"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for svc in (one(docs, "Service", "gem-proxy"), one(docs, "Service", "gem-proxy-admin")):
        assert matches(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports
    assert one(docs, "Service", "gem-proxy-admin")["spec"]["type"] == "ClusterIP"
    for c in deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert matches(c["labelSelector"]["matchLabels"], pod_labels)
    for d in docs:
        if d["kind"] == "PodDisruptionBudget":
            assert matches(d["spec"]["selector"]["matchLabels"], pod_labels)
        if d["kind"] == "HorizontalPodAutoscaler":
            ref = d["spec"]["scaleTargetRef"]
            assert (ref["kind"], ref["name"]) == ("Deployment", deploy["metadata"]["name"])
            assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
        if d["kind"] == "NetworkPolicy" and not d["metadata"]["name"].endswith("-redis"):
            assert matches(d["spec"]["podSelector"]["matchLabels"], pod_labels)
            assert {p["port"] for rule in d["spec"]["ingress"] for p in rule["ports"]} == {"proxy", "admin"}
        if d["kind"] == "Ingress":
            for rule in d["spec"]["rules"]:
                backend = rule["http"]["paths"][0]["backend"]["service"]
                assert backend["name"] == one(docs, "Service", "gem-proxy")["metadata"]["name"]
                assert backend["port"]["name"] == "proxy"
        if d["kind"] == "HTTPRoute":
            (ref,) = d["spec"]["rules"][0]["backendRefs"]
            svc = one(docs, "Service", "gem-proxy")
            assert (ref["name"], ref["port"]) == (svc["metadata"]["name"], svc["spec"]["ports"][0]["port"])
    if any(d["kind"] == "StatefulSet" for d in docs):
        sts = one(docs, "StatefulSet")
        redis_labels = sts["spec"]["template"]["metadata"]["labels"]
        redis_svc = one(docs, "Service", "-redis")
        assert matches(redis_svc["spec"]["selector"], redis_labels)
        assert not matches(redis_svc["spec"]["selector"], pod_labels)
        assert not matches(deploy["spec"]["selector"]["matchLabels"], redis_labels)
        assert sts["spec"]["serviceName"] == redis_svc["metadata"]["name"]
        # The gateways' Redis URL is that Service.
        url = config_of(docs)["state"]["redis"]["url"]
        assert url == f"redis://{redis_svc['metadata']['name']}.gemini.svc:6379/0"
        # Only the gateways reach it.
        policy = one(docs, "NetworkPolicy", "-redis")
        assert matches(policy["spec"]["podSelector"]["matchLabels"], redis_labels)
        (peer,) = policy["spec"]["ingress"][0]["from"]
        assert matches(peer["podSelector"]["matchLabels"], pod_labels)


def test_network_policy_opens_the_admin_port_to_prometheus_and_named_peers_only():
    docs = render("external-redis-ingress-values.yaml")
    policy = one(docs, "NetworkPolicy")
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    prometheus, bastion = rules["admin"]
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert prometheus["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert bastion == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "ops-bastion"}}}
    assert rules["proxy"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    # Defaults: the namespace's Prometheus only (no namespaceSelector), the proxy port open.
    policy = one(render("defaults-values.yaml"), "NetworkPolicy", "gem-proxy")
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules["admin"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert rules["proxy"] is None


def _values_secrets(case: str) -> set[str]:
    values = yaml.safe_load((CI / case).read_text())
    return {str(v) for v in ((values.get("secrets") or {}).get("env") or {}).values()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_secret_value_in_any_configmap(case: str):
    docs = render(case)
    secret_values = set(secret_env(docs).values()) | _values_secrets(case)
    if not (yaml.safe_load((CI / case).read_text()).get("secrets") or {}).get("existingSecret"):
        assert secret_values, "a chart-made Secret has values for this test to look for"
    configmaps = "\n".join(json.dumps(d.get("data", {})) for d in docs if d["kind"] == "ConfigMap")
    for value in secret_values:
        assert value not in configmaps
    # Nor in the Deployment (only references to the Secret).
    deployment = json.dumps(one(docs, "Deployment"))
    for value in secret_values:
        assert value not in deployment
    cfg = config_of(docs)
    refs = [k["key"] for k in cfg["gemini"]["api_keys"] if "key" in k]
    refs += [cfg["auth"]["jwt_secret"], cfg["admin"]["token"]]
    assert all(re.fullmatch(r"\$\{[A-Z0-9_]+\}", r) for r in refs), refs


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_variable_the_config_names_reaches_the_container(case: str):
    docs = render(case)
    c = gateway_container(docs)
    named = set(
        re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", one(docs, "ConfigMap", "gem-proxy")["data"]["proxy.yaml"])
    )
    # The image's own GEM_PROXY__SERVER__TLS__* variables would win over the file: the container
    # repeats the config's values.
    tls = config_of(docs)["server"]["tls"]
    plain = {e["name"]: e.get("value") for e in c["env"]}
    assert plain["GEM_PROXY__SERVER__TLS__CERT_PATH"] == tls["cert_path"]
    assert plain["GEM_PROXY__SERVER__TLS__KEY_PATH"] == tls["key_path"]
    assert plain["GEM_PROXY__SERVER__TLS__ACME__CACHE_DIR"] == tls["acme"]["cache_dir"]
    assert plain["GEM_PROXY__USAGE__PATH"] == config_of(docs)["usage"]["path"]
    assert plain["GEM_PROXY_CONFIG"] == "/etc/gem-proxy/proxy.yaml"
    if "envFrom" in c:
        # The platform's own Secret: every key of it is in the environment.
        assert c["envFrom"] == [{"secretRef": {"name": "gem-proxy-secrets"}}]
        assert not [d for d in docs if d["kind"] == "Secret"], "existingSecret: the chart makes no Secret"
        return
    secret = one(docs, "Secret")
    env = {e["name"]: e for e in c["env"]}
    for var in named:
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"] and var in secret["data"]
    assert len(base64.b64decode(secret["data"]["GEM_PROXY_JWT_SECRET"])) >= 32


def test_config_checksum_follows_the_config():
    def checksum(*sets: str) -> str:
        docs = render("single-memory-values.yaml", sets=sets)
        annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        # It is the hash of exactly what the ConfigMap holds.
        text = one(docs, "ConfigMap", "gem-proxy")["data"]["proxy.yaml"]
        assert annotations["checksum/config"] == hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
        return annotations["checksum/config"]

    base = checksum()
    assert checksum() == base
    assert checksum("config.log.level=debug") != base
    assert checksum("config.gemini.api_keys[0].id=other,config.gemini.api_keys[0].key=${GEMINI_API_KEY_1}") != base
    assert checksum("otlp.enabled=true") != base
    # Values that do not reach the config leave it alone.
    assert checksum("resources.limits.memory=1Gi") == base


@pytest.mark.parametrize("case", sorted(CASES))
def test_security_context(case: str):
    docs = render(case)
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # What the gateway writes goes to its volumes, not the read-only root.
    cfg = config_of(docs)
    mounts = [m["mountPath"] for m in gateway_container(docs)["volumeMounts"] if not m.get("readOnly")]
    tls = cfg["server"]["tls"]
    for path in (tls["acme"]["cache_dir"], tls["cert_path"], tls["key_path"], cfg["usage"]["path"]):
        assert any(path.startswith(m + "/") for m in mounts) or "/var/run/secrets/gem-proxy/tls/" in path, path


def test_rollout_and_termination():
    for sets, grace in (
        ((), 30),
        (("config.server.shutdown_grace_seconds=120", "lifecycle.preStopSleepSeconds=15"), 120),
    ):
        docs = render("defaults-values.yaml", sets=sets)
        deploy = one(docs, "Deployment")
        assert deploy["spec"]["replicas"] == 2
        assert deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
        pod = deploy["spec"]["template"]["spec"]
        pre = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert config_of(docs)["server"]["shutdown_grace_seconds"] == grace
        assert pod["terminationGracePeriodSeconds"] > grace + pre


def test_state_is_shared_whenever_there_are_replicas():
    assert "state" not in config_of(render("single-memory-values.yaml"))
    for case in ("defaults-values.yaml", "bundled-redis-hpa-values.yaml", "passthrough-values.yaml"):
        state = config_of(render(case))["state"]
        assert state["backend"] == "redis"
        assert state["redis"]["url"].startswith("redis://gem-gem-proxy-redis.gemini.svc:6379")
    state = config_of(render("external-redis-ingress-values.yaml"))["state"]
    assert state == {
        "backend": "redis",
        "redis": {
            "url": "redis://:${REDIS_PASSWORD}@redis-master.shared-redis.svc:6379/3",
            "key_prefix": "gem-proxy-prod",
            "sync_interval_ms": 200,
        },
    }
    # An external Redis means no bundled one.
    assert "StatefulSet" not in {d["kind"] for d in render("external-redis-ingress-values.yaml")}


def test_ingress_tls_modes():
    terminate = one(render("external-redis-ingress-values.yaml"), "Ingress")
    a = terminate["metadata"]["annotations"]
    assert a["nginx.ingress.kubernetes.io/backend-protocol"] == "HTTPS"
    assert a["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert a["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert terminate["spec"]["tls"] == [{"hosts": ["gemini.example.com"], "secretName": "gemini-example-com-tls"}]

    docs = render("passthrough-values.yaml")
    passthrough = one(docs, "Ingress")
    assert passthrough["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert "tls" not in passthrough["spec"]
    # The pods serve the mounted certificate.
    tls = config_of(docs)["server"]["tls"]
    assert tls["cert_path"] == "/var/run/secrets/gem-proxy/tls/tls.crt"
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "gemini-example-com-tls"
    assert one(docs, "Service", "gem-proxy")["spec"]["type"] == "LoadBalancer"


def test_vertex_credentials_and_otlp():
    docs = render("vertex-otlp-monitoring-values.yaml")
    cfg = config_of(docs)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["vertex-vertex-eu"]["secret"] == {
        "secretName": "vertex-eu-sa",
        "items": [{"key": "sa.json", "path": "sa.json"}],
    }
    mount = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "vertex-vertex-eu"][0]
    member = [k for k in cfg["gemini"]["api_keys"] if k["id"] == "vertex-eu"][0]
    assert member["vertex"]["credentials_file"] == mount["mountPath"] + "/sa.json"
    assert mount["readOnly"] is True
    assert cfg["metrics"]["otlp"] == {
        "enabled": True,
        "endpoint": "http://otel-collector.observability:4317",
        "protocol": "grpc",
        "sample_ratio": 0.25,
        "service_name": "gem-proxy",
    }


# --------------------------------------------------------------------------- the real binary


def _binary_lacks(binary: Path, tmp: Path, snippet: str, key: str) -> bool:
    """Whether the binary refuses `key` in `snippet` as an unknown field (a feature it has not got)."""
    cfg = tmp / "probe.yaml"
    cfg.write_text(snippet)
    proc = subprocess.run([str(binary), "--config", str(cfg), "check-config"], capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    return proc.returncode != 0 and "unknown field" in out and key in out


def _test_service_account(tmp: Path) -> str:
    """A service-account JSON key made for this test (openssl), never a real account's."""
    key = tmp / "test-sa-private.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key)],
        check=True,
        capture_output=True,
    )
    return json.dumps(
        {
            "type": "service_account",
            "client_email": "test@test-project.iam.gserviceaccount.com",
            "private_key": key.read_text(),
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )


def _env_for(docs: list[dict], case: str) -> dict[str, str]:
    env = secret_env(docs)
    if not env:  # existingSecret: the platform's Secret would hold these
        env = {
            "GEMINI_API_KEY_1": "AIzaSyTEST-existing-1",
            "GEMINI_API_KEY_2": "AIzaSyTEST-existing-2",
            "GEM_PROXY_JWT_SECRET": "x" * 48,
            "GEM_PROXY_ADMIN_TOKEN": "y" * 48,
            "REDIS_PASSWORD": "redis-password",
        }
    return env


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_config_is_accepted_by_the_binary(case: str, tmp_path: Path):
    binary = _binary("GEM_PROXY_BIN", "gem-proxy")
    docs = render(case)
    cfg = config_of(docs)
    # Keys other work adds to the gateway (shared state): checked once the binary has them.
    if "state" in cfg and _binary_lacks(binary, tmp_path, "state: {backend: memory}\n", "state"):
        pytest.skip("this gem-proxy binary has no `state` config yet (the Redis backend)")
    text = one(docs, "ConfigMap", "gem-proxy")["data"]["proxy.yaml"]
    # A Vertex member's service-account file is what the pod gets mounted from its Secret: here,
    # a test key in the test's directory (check-config reads and parses it).
    for k in cfg["gemini"]["api_keys"]:
        mounted = (k.get("vertex") or {}).get("credentials_file")
        if mounted:
            local = tmp_path / f"{k['id']}-sa.json"
            local.write_text(_test_service_account(tmp_path))
            text = text.replace(mounted, str(local))
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GEM_PROXY")}, **_env_for(docs, case)}
    proc = subprocess.run([str(binary), "--config", str(path), "check-config"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ": OK: " in proc.stdout


def test_probe_endpoints_answer_on_the_binary_with_the_rendered_config(tmp_path: Path, mock):
    """The chart's single-replica pod, as a process: its ConfigMap's proxy.yaml, the Secret's
    variables in the environment, the container's args; only what a pod gets from the cluster is
    moved to the test's places (ports, the data volume, the upstream)."""
    binary = _binary("GEM_PROXY_BIN", "gem-proxy")
    docs = render("single-memory-values.yaml")
    c = gateway_container(docs)
    config = tmp_path / "proxy.yaml"
    config.write_text(one(docs, "ConfigMap", "gem-proxy")["data"]["proxy.yaml"])
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GEM_PROXY")}
    env |= {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env |= secret_env(docs)
    env |= {
        "GEM_PROXY_CONFIG": str(config),
        "GEM_PROXY__SERVER__HOST": "127.0.0.1",
        "GEM_PROXY__SERVER__PORT": str(port),
        "GEM_PROXY__METRICS__PROMETHEUS_PORT": str(admin),
        "GEM_PROXY__SERVER__TLS__CERT_PATH": str(tmp_path / "tls" / "cert.pem"),
        "GEM_PROXY__SERVER__TLS__KEY_PATH": str(tmp_path / "tls" / "key.pem"),
        "GEM_PROXY__GEMINI__BASE_URL": mock.url,
    }
    (tmp_path / "tls").mkdir()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), *c["args"]], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(timeout=5, trust_env=False) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get(f"http://127.0.0.1:{admin}/health/live").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                r = http.get(f"http://127.0.0.1:{admin}{c[probe]['httpGet']['path']}")
                assert r.status_code == 200, (probe, r.text)
            assert http.get(f"http://127.0.0.1:{admin}/health/ready").json()["usable_keys"] == 1
        # Auth is on by default: a client token minted the way NOTES says works.
        token = subprocess.run(
            [str(binary), "token", "--sub", "helm-test", "--ttl", "1h"], env=env, capture_output=True, text=True
        )
        assert token.returncode == 0, token.stderr
        base = f"https://127.0.0.1:{port}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        # One connection per request: after a refusal the gateway may close the connection.
        for headers, status in (({}, 401), ({"x-goog-api-key": token.stdout.strip()}, 200)):
            with httpx.Client(timeout=10, trust_env=False, verify=False) as http:
                r = http.post(base, json=body, headers=headers)
                assert r.status_code == status, r.text
        assert r.json()["candidates"], r.text
    except (AssertionError, httpx.HTTPError) as e:
        raise AssertionError(f"{e!r}\ngateway output:\n{log.read_text(errors='replace')[-4000:]}") from e
    finally:
        _stop(proc)


# --------------------------------------------------------------------------- the pod, in Podman
#
# `podman kube play` (Podman 4.3) runs the rendered Deployment as a pod, with two adjustments for
# what it does differently from a cluster, both applied to copies of the rendered manifests:
# - a `kind: Secret` in the played YAML is stored as YAML, and reading it for `secretKeyRef` then
#   fails ("cannot set env GEMINI_API_KEY_1: secret <name> is not valid JSON"): the test creates
#   the Podman secret itself, from the Secret's `data` as JSON (what `secretKeyRef` reads), and
#   plays the other manifests;
# - it publishes every containerPort on the host's 0.0.0.0 as if it had a hostPort: the test adds
#   hostIP 127.0.0.1 and a free hostPort to each, so nothing binds a fixed or public port.
# Services, the NetworkPolicy and the ServiceAccount have no meaning there; probes become health
# checks that nothing runs (no systemd), so the test asks the readiness endpoint itself.


def _gateway_image() -> str:
    if os.environ.get("GEM_PROXY_IMAGE"):
        return os.environ["GEM_PROXY_IMAGE"]
    if not (ROOT / "docker" / "Dockerfile").is_file():
        pytest.skip(
            "docker/Dockerfile is not in this tree (the gateway's container image): nothing to run "
            "the chart's pod with; set GEM_PROXY_IMAGE to an image to run this test"
        )
    try:
        from podman import gateway_image  # the container tests' image builder
    except ImportError:
        pytest.fail("docker/Dockerfile exists but tests/e2e/podman.py (which builds its image) does not")
    return gateway_image()


def _podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    podman = shutil.which("podman")
    if podman is None:
        pytest.fail("podman is not installed: run scripts/setup.sh", pytrace=False)
    proc = subprocess.run([podman, *args], capture_output=True, text=True, timeout=timeout, env=_PODMAN_ENV)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc


_PODMAN_ENV: dict[str, str] = {}


def test_the_rendered_pod_runs_in_podman(tmp_path: Path):
    image = _gateway_image()
    _PODMAN_ENV.update(os.environ)
    if "CONTAINERS_CONF" not in _PODMAN_ENV:
        # runc and explicit rlimits: the defaults fail in sandboxed machines.
        conf = tmp_path / "containers.conf"
        conf.write_text(
            '[containers]\ndefault_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n'
        )
        _PODMAN_ENV["CONTAINERS_CONF"] = str(conf)
    release = f"helm-{os.urandom(3).hex()}"
    repository, _, tag = image.rpartition(":")
    sets = (f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never")
    rendered = _render((str(CI / "single-memory-values.yaml"),), (), sets, None, release)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    secret = one(docs, "Secret")
    deploy = one(docs, "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    host_ports = {}
    for p in container["ports"]:
        host_ports[p["name"]] = p["hostPort"] = free_port()
        p["hostIP"] = "127.0.0.1"
    played = tmp_path / "pod.yaml"
    played.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] in ("ConfigMap", "Deployment")]))
    data = tmp_path / "secret.json"
    data.write_text(json.dumps(secret["data"]))
    secret_name = secret["metadata"]["name"]
    pod = f"{deploy['metadata']['name']}-pod-0"
    gateway = f"{pod}-gem-proxy"
    _podman("secret", "create", secret_name, str(data))
    try:
        _podman("kube", "play", str(played), timeout=180)
        admin = f"http://127.0.0.1:{host_ports['admin']}"
        with httpx.Client(timeout=5, trust_env=False) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = http.get(f"{admin}{container['readinessProbe']['httpGet']['path']}")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                state = _podman("inspect", gateway, "--format", "{{.State.Status}}", check=False).stdout.strip()
                logs = _podman("logs", gateway, check=False)
                assert state == "running" and time.monotonic() < deadline, f"{state}:\n{logs.stdout}{logs.stderr}"
                time.sleep(0.5)
            assert r.json()["usable_keys"] == 1
            assert http.get(f"{admin}{container['livenessProbe']['httpGet']['path']}").status_code == 200
        # Run as the chart says: its user, a read-only root filesystem, no capabilities.
        info = json.loads(_podman("inspect", gateway).stdout)[0]
        assert info["Config"]["User"].split(":")[0] == "65532"
        assert info["HostConfig"]["ReadonlyRootfs"] is True
        assert not info["EffectiveCaps"]
        # The client token the NOTES tell operators to mint, in the pod; auth is on.
        token = _podman("exec", gateway, "gem-proxy", "token", "--sub", "helm-test", "--ttl", "1h").stdout.strip()
        assert token.count(".") == 2
        with httpx.Client(timeout=10, trust_env=False, verify=False) as http:
            url = f"https://127.0.0.1:{host_ports['proxy']}/v1beta/models/gemini-2.5-flash:generateContent"
            r = http.post(url, json={"contents": [{"parts": [{"text": "hi"}]}]})
            assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED", r.text
    finally:
        _podman("kube", "down", str(played), check=False, timeout=180)
        _podman("secret", "rm", secret_name, check=False)
