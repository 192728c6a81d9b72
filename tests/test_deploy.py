"""deploy/: the Dockerfile lints clean, the manifests validate and say what the proxy needs, one
image tag is used everywhere, the PodMonitor and the KEDA ScaledObject point at what they must,
and the Grafana dashboard keeps vLLM's official queries and reads only series the proxy exports."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from metrics_proxy import __version__
from metrics_proxy.config import SETTINGS, Config
from metrics_proxy.engine_scraper import EngineScraper
from metrics_proxy.engine_series import is_taken
from metrics_proxy.families import COUNTED_BY_BOTH, ENGINE_ORIGIN, MARKED_WITH_ORIGIN
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.tenant_metrics import TenantMetrics

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
MANIFESTS = sorted(KUBERNETES.glob("*.yaml"))
# Core objects, validated against Kubernetes' own schemas.
CORE = ["deployment.yaml", "service.yaml", "sidecar.yaml"]
# Objects of the Prometheus Operator's and KEDA's CRDs, whose schemas kubernetes-validate does
# not have: their tests read the fields that matter and refuse any field those CRDs lack.
CUSTOM = {
    "keda-scaledobject.yaml": ("keda.sh/v1alpha1", "ScaledObject"),
    "podmonitor.yaml": ("monitoring.coreos.com/v1", "PodMonitor"),
}
# The one image, tagged with the package's version, wherever it is built, run or deployed.
IMAGE = f"metrics-proxy:{__version__}"
DASHBOARD = DEPLOY / "grafana" / "metrics-proxy-dashboard.json"
OFFICIAL = json.loads((Path(__file__).parent / "data" / "vllm_dashboard_queries.json").read_text())
OFFICIAL_UID = "b281712d-8bff-41ef-9f3f-71ad43c05e9b"
# A schema set that kubernetes-validate bundles: explicit, so a new release cannot move it.
KUBERNETES_VERSION = "1.33.0"
PORT = 8000
ENV_NAME = re.compile(r"\bPROXY_[A-Z0-9_]+")
TOOL_TIMEOUT = 60


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, cwd=ROOT, timeout=TOOL_TIMEOUT, check=False
    )


# --- Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_has_no_hadolint_findings(hadolint: str) -> None:
    result = _run(hadolint, "--format", "json", str(DOCKERFILE))
    assert (result.returncode, json.loads(result.stdout)) == (0, []), result.stdout + result.stderr


def test_dockerfile_runs_the_proxy_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert "pip install --no-cache-dir ." in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users, "no USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    entrypoint = '["python", "-m", "metrics_proxy.proxy_server"]'
    assert re.search(rf"^ENTRYPOINT {re.escape(entrypoint)}$", text, re.M)
    assert re.search(rf"^EXPOSE {PORT}$", text, re.M)
    assert re.search(rf"PROXY_HOST=0\.0\.0\.0\s*\\?\s*PROXY_PORT={PORT}", text)
    healthcheck = text[text.index("HEALTHCHECK") :]
    assert "urllib" in healthcheck
    assert "/internal/healthz" in healthcheck


def test_the_build_context_holds_what_the_package_metadata_reads() -> None:
    """pip builds the package in the image: every file setup.cfg names must be copied in,
    and .dockerignore must let it through."""
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    readme = metadata["metadata"]["long_description"].removeprefix("file:").strip()
    licenses = metadata["metadata"]["license_files"].split()
    needed = {"pyproject.toml", "setup.cfg", "metrics_proxy", readme, *licenses}
    copied = {
        source.removeprefix("./").rstrip("/")
        for line in re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(), re.M)
        for source in line.split()[:-1]
    }
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    let_through = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert needed <= copied <= let_through


# --- The image's tag -------------------------------------------------------------------------

_VALUE_OPTIONS = {"-e", "--env", "-p", "--publish", "-v", "--volume", "--name", "--network"}


def _docker_images(text: str) -> tuple[list[str], list[str]]:
    """The images of the `docker build -t` and `docker run` commands in ``text`` (commands
    continued over comment lines are joined first)."""
    text = re.sub(r"\\\n#\s*", " ", text)
    built, run = [], []
    for verb, rest in re.findall(r"docker (build|run) ([^`\n]+)", text):
        words = iter(shlex.split(rest))
        for word in words:
            if verb == "build" and word == "-t":
                built.append(next(words))
            elif verb == "run" and word in _VALUE_OPTIONS:
                next(words)
            elif verb == "run" and not word.startswith("-"):
                run.append(word)
                break
    return built, run


def test_one_image_tag_is_built_run_and_deployed() -> None:
    named = {}
    for document in (README, DOCKERFILE):
        built, run = _docker_images(document.read_text())
        assert built, document.name
        assert run, document.name
        named[document.name] = set(built) | set(run)
    deployments = [_one("deployment.yaml", "Deployment"), _one("sidecar.yaml", "Deployment")]
    named["manifests"] = {_proxy_container(d)["image"] for d in deployments}
    assert named == {key: {IMAGE} for key in named}


# --- Kubernetes manifests --------------------------------------------------------------------


def _documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def _one(name: str, kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _documents(name) if doc["kind"] == kind]
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    """A container's plain ``value`` variables (``valueFrom`` ones come from Secrets)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _proxy_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if "PROXY_UPSTREAM_URL" in _env(c)]
    return found


def test_the_manifests_are_the_ones_described() -> None:
    assert [m.name for m in MANIFESTS] == sorted([*CORE, *CUSTOM])


@pytest.mark.parametrize("manifest", [KUBERNETES / name for name in CORE], ids=lambda m: m.name)
def test_manifest_validates_strictly(kubernetes_validate: str, manifest: Path) -> None:
    result = _run(
        kubernetes_validate, "--strict", "--kubernetes-version", KUBERNETES_VERSION, str(manifest)
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _check_proxy_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    """The checks every pod running the proxy must pass; returns the proxy container."""
    template = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= template["metadata"]["labels"].items()
    )
    pod = template["spec"]
    container = _proxy_container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert PORT in ports.values()

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("livenessProbe") == ("/internal/healthz", PORT)
    assert probe("readinessProbe") == ("/internal/readyz", PORT)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    security = container["securityContext"]
    assert security["runAsNonRoot"] or pod["securityContext"]["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }
    env = _env(container)
    # The values parse as the proxy would parse them at start-up.
    config = Config.from_env(env)
    assert config.port == PORT
    # In-flight requests get their grace period before Kubernetes kills the pod.
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_period
    return container


def test_deployment_runs_the_proxy_as_described() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    assert deployment["metadata"]["name"] == "metrics-proxy"
    container = _check_proxy_pod(deployment)
    env = _env(container)
    for name in ("PROXY_MODEL_NAME", "PROXY_ENGINE_LABEL", "PROXY_MAX_CONCURRENCY"):
        assert name in env


def test_service_sends_port_80_to_the_proxy() -> None:
    service = _one("service.yaml", "Service")
    deployment = _one("deployment.yaml", "Deployment")
    assert service["metadata"]["name"] == "metrics-proxy"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, PORT)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_sidecar_puts_the_proxy_beside_vllm() -> None:
    deployment = _one("sidecar.yaml", "Deployment")
    service = _one("sidecar.yaml", "Service")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    proxy = _check_proxy_pod(deployment)
    (vllm,) = [c for c in containers if c is not proxy]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    args = vllm["args"]
    assert "--model" in args
    assert args[args.index("--port") + 1] == "8001"
    env = _env(proxy)
    assert env["PROXY_UPSTREAM_URL"] == "http://127.0.0.1:8001"
    assert env["PROXY_MODEL_NAME"] == args[args.index("--model") + 1]
    # vLLM labels its own series engine="0" (its data-parallel rank): the proxy must differ.
    assert env["PROXY_ENGINE_LABEL"] not in ("", "0")
    # One scrape target: the engine's own series come through the proxy (on loopback).
    assert env["PROXY_ENGINE_METRICS"] == "true"
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(80, PORT)]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_every_proxy_variable_named_is_a_setting() -> None:
    settings = {s.env for s in SETTINGS}
    named = {
        path.name: set(ENV_NAME.findall(path.read_text())) for path in [DOCKERFILE, *MANIFESTS]
    }
    assert all(named[n] for n in ("Dockerfile", "deployment.yaml", "sidecar.yaml")), named
    unknown = {name: env - settings for name, env in named.items() if env - settings}
    assert unknown == {}


# --- Custom resources: the PodMonitor and the KEDA ScaledObject --------------------------------

POD_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "jobLabel", "keepDroppedTargets", "labelLimit",
    "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector",
    "podMetricsEndpoints", "podTargetLabels", "sampleLimit", "scrapeClass",
    "scrapeProtocols", "selector", "targetLimit",
}  # fmt: skip
POD_METRICS_ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenSecret", "enableHttp2", "filterRunning",
    "followRedirects", "honorLabels", "honorTimestamps", "interval", "metricRelabelings",
    "oauth2", "params", "path", "port", "portNumber", "proxyUrl", "relabelings", "scheme",
    "scrapeTimeout", "tlsConfig", "trackTimestampsStaleness",
}  # fmt: skip
SCALED_OBJECT_SPEC = {
    "advanced", "cooldownPeriod", "fallback", "idleReplicaCount", "initialCooldownPeriod",
    "maxReplicaCount", "minReplicaCount", "pollingInterval", "scaleTargetRef", "triggers",
}  # fmt: skip
PROMETHEUS_TRIGGER = {
    "activationThreshold", "authModes", "customHeaders", "ignoreNullValues", "namespace",
    "query", "queryParameters", "serverAddress", "threshold", "unsafeSsl",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CUSTOM))
def test_custom_resources_are_what_they_say(name: str) -> None:
    (document,) = _documents(name)
    assert (document["apiVersion"], document["kind"]) == CUSTOM[name]
    assert document.keys() == {"apiVersion", "kind", "metadata", "spec"}
    assert document["metadata"]["name"]


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes' label selector semantics: matchLabels and matchExpressions, all of them."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        matches = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[expression["operator"]]
        if not matches:
            return False
    return True


def test_the_pod_monitor_scrapes_the_proxy_in_every_proxy_pod() -> None:
    spec = _one("podmonitor.yaml", "PodMonitor")["spec"]
    assert spec.keys() <= POD_MONITOR_SPEC
    endpoints = spec["podMetricsEndpoints"]
    assert endpoints
    for name in ("deployment.yaml", "sidecar.yaml"):
        deployment = _one(name, "Deployment")
        template = deployment["spec"]["template"]
        assert _selects(spec["selector"], template["metadata"]["labels"]), name
        proxy = _proxy_container(deployment)
        annotations = template["metadata"]["annotations"]
        for endpoint in endpoints:
            assert endpoint.keys() <= POD_METRICS_ENDPOINT
            # The port is found by name in every container of the pod: only the proxy's has it.
            named = [
                (container is proxy, port["containerPort"])
                for container in template["spec"]["containers"]
                for port in container.get("ports", [])
                if port.get("name") == endpoint["port"]
            ]
            # The target the prometheus.io annotations announce, and no other.
            assert named == [(True, int(annotations["prometheus.io/port"]))], name
            assert endpoint["path"] == annotations["prometheus.io/path"]


def test_keda_scales_the_sidecar_deployment_on_the_proxys_queue() -> None:
    spec = _one("keda-scaledobject.yaml", "ScaledObject")["spec"]
    assert spec.keys() <= SCALED_OBJECT_SPEC
    target = _one("sidecar.yaml", "Deployment")
    reference = spec["scaleTargetRef"]
    assert reference.get("apiVersion", "apps/v1") == "apps/v1"
    assert reference.get("kind", "Deployment") == "Deployment"
    assert reference["name"] == target["metadata"]["name"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert metadata.keys() <= PROMETHEUS_TRIGGER
    assert all(isinstance(value, str) for value in metadata.values())  # KEDA takes strings
    assert metadata["serverAddress"].startswith(("http://", "https://"))
    assert float(metadata["threshold"]) > 0
    # The proxies' own queue, summed over the pods: vLLM's series of the same name differ
    # in their engine label.
    query = metadata["query"]
    (matchers,) = re.findall(r"\bvllm:num_requests_waiting\{([^}]*)\}", query)
    assert query.startswith("sum(")
    env = _env(_proxy_container(target))
    assert dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', matchers)) == {
        "engine": env["PROXY_ENGINE_LABEL"],
        "model_name": env["PROXY_MODEL_NAME"],
    }
    assert "vllm:num_requests_waiting" in _exported_series()
    # Without a queue in the proxy nothing waits there: the target sets one, as large as
    # what vLLM runs at once.
    max_concurrency = Config.from_env(env).max_concurrency
    assert max_concurrency > 0
    (vllm,) = [c for c in target["spec"]["template"]["spec"]["containers"] if "args" in c]
    args = vllm["args"]
    assert int(args[args.index("--max-num-seqs") + 1]) == max_concurrency


# --- Grafana dashboard -----------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(_panels(panel.get("panels", [])))
    return flat


DASHBOARD_JSON: dict[str, Any] = json.loads(DASHBOARD.read_text())
PANELS = _panels(DASHBOARD_JSON["panels"])
OFFICIAL_TITLES = {q["panel"] for q in OFFICIAL["queries"]}
PROXY_PANELS = [p for p in PANELS if p["type"] != "row" and p["title"] not in OFFICIAL_TITLES]


def test_dashboard_is_its_own() -> None:
    assert DASHBOARD_JSON["title"] == "metrics_proxy — vLLM metrics"
    assert DASHBOARD_JSON["uid"] not in ("", OFFICIAL_UID)
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))


def test_dashboard_keeps_every_official_query_unchanged() -> None:
    assert len(OFFICIAL["queries"]) == 27
    held = {(p["title"], t["expr"]) for p in PANELS for t in p.get("targets", [])}
    missing = [q for q in OFFICIAL["queries"] if (q["panel"], q["expr"]) not in held]
    assert missing == []


def test_dashboard_variables_are_all_defined() -> None:
    defined = {v["name"] for v in DASHBOARD_JSON["templating"]["list"]} | {"__rate_interval"}
    used = {
        name
        for p in PANELS
        for t in p.get("targets", [])
        for name in re.findall(r"\$(\w+)", t["expr"])
    }
    assert used <= defined


def _exported_series() -> dict[str, set[str]]:
    """Series name → label names, from a real recorder that has seen one HTTP exchange (the
    http_* families have no series before) and, with attribution on, one tenant's request."""
    recorder = ProxyMetricsRecorder("m")
    recorder.observe_http("/v1/chat/completions", "POST", 200, 0.1)
    request = recorder.start_request()
    request.tenant_series = TenantMetrics(recorder.registry, "m", "proxy", 1).account("t")
    request.finish("stop")
    scraper = EngineScraper("http://127.0.0.1:1/metrics", 1.0, recorder.collect)
    series: dict[str, set[str]] = {}
    for family in [*recorder.collect(), *scraper.collect()]:
        labels = {name for sample in family.samples for name, _ in sample.labels}
        suffixes = ("_bucket", "_sum", "_count") if family.type == "histogram" else ("",)
        for suffix in suffixes:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def _engine_prints_too(series: str) -> bool:
    """Whether --engine-metrics adds the engine's series of this name to the proxy's page."""
    parts = {
        f"{name}{suffix}" for name in COUNTED_BY_BOTH for suffix in ("_bucket", "_sum", "_count")
    }
    return is_taken(series) and series not in parts


PROXY_ENGINE = 'engine=~"$proxy_engine"'


def test_the_proxy_engine_variable_reads_a_family_never_taken_from_the_engine() -> None:
    (variable,) = [v for v in DASHBOARD_JSON["templating"]["list"] if v["name"] == "proxy_engine"]
    query = variable["query"]["query"]
    (name,) = re.findall(r"label_values\(([\w:]+)\{[^}]*\}, engine\)", query)
    assert name.removesuffix("_count") in COUNTED_BY_BOTH
    assert 'job=~"$proxy_job"' in query
    assert variable["definition"] == query
    assert variable["includeAll"]
    assert variable["multi"]


def test_proxy_panels_read_only_series_the_proxy_exports() -> None:
    assert len(PROXY_PANELS) >= 8
    exported = _exported_series()
    target_labels = {"job", "instance"}  # added by Prometheus at scrape time
    # A proxy panel reading a family --engine-metrics takes from the engine too keeps to the
    # proxy's own series: by the proxy's engine label, or origin!="engine" where the engine's
    # series carry it (a family whose labels have no engine).
    target_labels.add(ENGINE_ORIGIN[0])
    seen = set()
    for panel in PROXY_PANELS:
        for target in panel["targets"]:
            expr = target["expr"]
            selectors = re.findall(r"([A-Za-z_:][\w:]*)\{([^}]*)\}", expr)
            assert selectors, f"{panel['title']}: every selector has braces: {expr}"
            for name, matchers in selectors:
                assert name in exported, f"{panel['title']}: {name} is not exported"
                used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
                if _engine_prints_too(name):
                    own = 'origin!="engine"' if name in MARKED_WITH_ORIGIN else PROXY_ENGINE
                    assert own in matchers, f"{panel['title']}: {expr}"
                used |= {
                    label.strip()
                    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
                    for label in group.split(",")
                    if label.strip()
                }
                assert used - target_labels <= exported[name], f"{panel['title']}: {expr}"
                seen.add(name)
    described = {
        "vllm:num_requests_waiting",
        "vllm:request_queue_time_seconds_sum",
        "vllm:request_queue_time_seconds_count",
        "proxy_errors_total",
        "proxy_client_disconnects_total",
        "vllm:admission_rejections_total",
        "proxy_estimated_token_counts_total",
        "http_requests_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "proxy_tenant_requests_total",
        "proxy_tenant_prompt_tokens_total",
        "proxy_tenant_generation_tokens_total",
        "proxy_tenant_queue_time_seconds_sum",
        "proxy_tenant_queue_time_seconds_count",
        "proxy_engine_scrape_up",
        "proxy_engine_scrape_duration_seconds",
    }
    assert described <= seen
