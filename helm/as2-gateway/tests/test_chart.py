"""Offline tests of the as2-gateway Helm chart.

Lints the chart strictly and renders it with Helm's own Go SDK (helm-python-sdk, no helm
binary, no cluster) for the default values and every scenario under ci/, validates each
rendered manifest against the Kubernetes 1.29, 1.30 and 1.31 OpenAPI schemas bundled
with kubernetes-validate, and asserts what the chart promises operators: restricted
security contexts, read-only Secret mounts, probes on the admin port, an HPA only when
asked for, configuration that rolls pods when it changes, and environment variables that
the services actually read.

Run: .venv-test/bin/python -m pytest -q helm/as2-gateway/tests
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[1]
REPO = CHART.parents[1]
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
KUBERNETES_VERSIONS = ["1.29.0", "1.30.0", "1.31.0"]
RELEASE = "gw"
NAMESPACE = "as2"
FULLNAME = "gw-as2-gateway"
# Custom resources: the OpenAPI schemas of core Kubernetes do not know them, so they are
# checked structurally below instead.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}
COMPONENTS = ["edge", "routing", "mdn", "sender"]
# Directory of the built service binaries (tests/run sets it after `cargo test`); the
# rendered configuration is then fed to the real binaries.
# The debug binaries cargo built (tests/run points here after `cargo test`); a missing
# binary fails the test with its path rather than skipping it.
BINARIES = os.environ.get("AS2_CHART_TEST_BINARIES") or str(REPO / "target" / "debug")
# Where each service's flags (and their AS2_* variables) are defined.
SERVICE_SOURCES = {
    "edge": "services/edge/src",
    "routing": "services/routing/src",
    "mdn": "services/mdn/src",
    "sender": "services/sender/src",
}


# ---------------------------------------------------------------------------------------
# helpers


def scenario_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


@functools.lru_cache(maxsize=None)
def _chart() -> helm.Chart:
    return helm.Chart.load(str(CHART))


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every manifest the chart renders (hooks included), NOTES.txt left out."""
    rendered = _chart().render(
        values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
    )
    documents = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("metadata", {}).setdefault("annotations", {})
                document["_template"] = path
                documents.append(document)
    return documents


@functools.lru_cache(maxsize=None)
def _render_scenario_json(name: str) -> str:
    return json.dumps(render(scenario_values(name)))


def render_scenario(name: str) -> list[dict[str, Any]]:
    return json.loads(_render_scenario_json(name))


def without_test_keys(document: dict[str, Any]) -> dict[str, Any]:
    document = copy.deepcopy(document)
    document.pop("_template", None)
    if not document["metadata"]["annotations"]:
        del document["metadata"]["annotations"]
    return document


def of_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]


def named(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in of_kind(documents, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def deployments(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in of_kind(documents, "Deployment")
    }


def pod_specs(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in of_kind(documents, "Deployment")]
    specs += [(d["metadata"]["name"], d["spec"]) for d in of_kind(documents, "Pod")]
    return specs


def config_map_env(documents: list[dict[str, Any]], component: str) -> dict[str, str]:
    return named(documents, "ConfigMap", f"{FULLNAME}-{component}")["data"]


def env_variables_read_by(component: str) -> set[str]:
    """The AS2_* (and OTEL_*) variables a service's flags read, from its Rust sources and
    those of the shared crates whose flag blocks the services flatten."""
    sources = list((REPO / SERVICE_SOURCES[component]).rglob("*.rs"))
    for shared in ("crates/as2-common/src", "crates/as2-store/src"):
        sources += list((REPO / shared).rglob("*.rs"))
    names: set[str] = set()
    for source in sources:
        names.update(re.findall(r'env\s*=\s*"([A-Z][A-Z0-9_]*)"', source.read_text()))
    return names


@functools.lru_cache(maxsize=None)
def _local_grpc_files() -> tuple[str, str, str]:
    """A CA and a certificate signed by it, made with the openssl command line, standing
    in for a mounted gRPC credential Secret."""
    directory = Path(os.environ.get("TMPDIR", "/tmp")) / f"as2-chart-grpc-{os.getpid()}"
    directory.mkdir(exist_ok=True)
    ca_key, ca, key, request, cert = (str(directory / n) for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", ca_key,
        "-out", ca, "-days", "2", "-subj", "/CN=chart test CA")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", request,
        "-subj", "/CN=operator")
    run("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2")
    return cert, key, ca


def local_grpc_credential(env: dict[str, str]) -> dict[str, str]:
    """The rendered AS2_GRPC_TLS_* paths (a mounted Secret) replaced by real local files."""
    if "AS2_GRPC_TLS_CERT" not in env:
        return {}
    cert, key, ca = _local_grpc_files()
    return {"AS2_GRPC_TLS_CERT": cert, "AS2_GRPC_TLS_KEY": key, "AS2_GRPC_TLS_CA": ca}


def port_of(service_port: int | str, container: dict[str, Any]) -> int:
    if isinstance(service_port, int):
        return service_port
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert service_port in ports, f"{container['name']} has no port named {service_port}"
    return ports[service_port]


# ---------------------------------------------------------------------------------------
# lint and schema


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lints_strictly(scenario: str, kube_version: str) -> None:
    report = helm.lint(
        str(CHART),
        scenario_values(scenario),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info, "icon is recommended") is fine.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenarios_match_the_values_schema(scenario: str) -> None:
    _chart().validate_schema(scenario_values(scenario))


@pytest.mark.parametrize(
    "values",
    [
        {"edge": {"replicaCont": 3}},
        {"redis": {"passwrd": "x"}},
        {"redis": {"url": "redis+sentinel://redis:26379/"}},
        {"kafka": {"options": "security.protocol"}},
        {"edge": {"publicService": {"type": "Loadbalancer"}}},
        {"keys": {"secrets": [{"id": "../etc", "secretName": "s"}]}},
        {"keys": {"secrets": [{"id": "gateway"}]}},
        {"mdn": {"workers": "many"}},
        {"networkPolicy": {"enable": True}},
        {"sender": {"livenessProbe": {"httpGet": {"path": "/"}}}},
    ],
    ids=lambda values: json.dumps(values),
)
def test_the_schema_rejects_typos_and_wrong_types(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmError):
        _chart().validate_schema(values)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"edge": {"terminationGracePeriodSeconds": 25}}, "terminationGracePeriodSeconds"),
        ({"mdn": {"reclaimIdleMs": 30000}}, "reclaimIdleMs"),
        ({"mdn": {"statusTtlSecs": 60}}, "statusTtlSecs"),
        ({"edge": {"pdb": {"minAvailable": 1}}}, "not both"),
        (
            {"edge": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None}}},
            "targetCPUUtilizationPercentage",
        ),
    ],
)
def test_settings_the_services_would_refuse_fail_the_render(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=message):
        render(values)


# ---------------------------------------------------------------------------------------
# Kubernetes schemas


@pytest.mark.parametrize("kube_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates_against_the_kubernetes_schema(
    scenario: str, kube_version: str
) -> None:
    documents = render_scenario(scenario)
    assert documents, "nothing rendered"
    for document in documents:
        if document["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(without_test_keys(document), kube_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(item) for item in error.path)
            pytest.fail(
                f"{document['_template']}: {document['kind']}/{document['metadata']['name']} "
                f"is invalid for Kubernetes {kube_version} at {path}: {error.message}"
            )


def test_the_bundled_schemas_cover_the_versions_we_claim() -> None:
    available = {kubernetes_validate.utils.major_minor(v) for v in kubernetes_validate.utils.all_versions()}
    for version in KUBERNETES_VERSIONS:
        assert kubernetes_validate.utils.major_minor(version) in available


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_custom_resources_are_well_formed(scenario: str) -> None:
    documents = render_scenario(scenario)
    for monitor in of_kind(documents, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        endpoints = monitor["spec"]["endpoints"]
        assert [e["port"] for e in endpoints] == ["admin"]
        assert endpoints[0]["path"] == "/metrics"
        scraped = [
            s
            for s in of_kind(documents, "Service")
            if selector.items() <= s["metadata"]["labels"].items()
            and "admin" in [p["name"] for p in s["spec"]["ports"]]
        ]
        components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in scraped}
        assert components == set(deployments(documents))
    for rule in of_kind(documents, "PrometheusRule"):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        groups = rule["spec"]["groups"]
        assert groups, "no rule groups"
        for group in groups:
            assert isinstance(group["name"], str) and group["name"]
            assert group["rules"], f"group {group['name']} has no rules"
            for entry in group["rules"]:
                assert ("alert" in entry) != ("record" in entry), entry
                assert isinstance(entry["expr"], (str, int)), entry


# ---------------------------------------------------------------------------------------
# what the chart promises


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_container_runs_as_root_and_security_is_restricted(scenario: str) -> None:
    for name, spec in pod_specs(render_scenario(scenario)):
        pod_context = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            effective = {**pod_context, **context}
            assert effective.get("runAsNonRoot") is True, where
            assert effective.get("runAsUser", 0) != 0, where
            assert effective.get("runAsUser") == 10001, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_gateway_container_has_a_writable_tmp(scenario: str) -> None:
    for component, deployment in deployments(render_scenario(scenario)).items():
        spec = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], component


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secrets_are_mounted_read_only(scenario: str) -> None:
    for name, spec in pod_specs(render_scenario(scenario)):
        secret_volumes = set()
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret_volumes.add(volume["name"])
            if "projected" in volume and any("secret" in s for s in volume["projected"]["sources"]):
                secret_volumes.add(volume["name"])
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secret_volumes:
                    assert mount.get("readOnly") is True, f"{name}/{container['name']}: {mount}"


def test_key_secrets_are_laid_out_per_key_id_in_the_keys_dir() -> None:
    values = scenario_values("production-values.yaml")
    documents = render(values)
    wanted = {s["id"]: s["secretName"] for s in values["keys"]["secrets"]}
    for component in ["edge"]:
        spec = deployments(documents)[component]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "keys")
        assert mount["readOnly"] is True
        env = config_map_env(documents, component)
        assert env["AS2_KEYS_DIR"] == mount["mountPath"]
        assert env["AS2_DEFAULT_DECRYPTION_KEY_ID"] == "gateway-2026"
        assert env["AS2_DEFAULT_SIGNING_KEY_ID"] == "gateway-2026"
        volume = next(v for v in spec["volumes"] if v["name"] == "keys")
        found = {}
        for source in volume["projected"]["sources"]:
            paths = sorted(item["path"] for item in source["secret"]["items"])
            key_id = paths[0].split("/")[0]
            assert paths == [f"{key_id}/tls.crt", f"{key_id}/tls.key"]
            found[key_id] = source["secret"]["name"]
        assert found == wanted
    # Only the components that sign or decrypt hold private keys.
    for component in ["routing", "mdn"]:
        spec = deployments(documents)[component]["spec"]["template"]["spec"]
        assert "keys" not in [v["name"] for v in spec["volumes"]]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_hit_health_endpoints_on_the_admin_port(scenario: str) -> None:
    documents = render_scenario(scenario)
    for component, deployment in deployments(documents).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = config_map_env(documents, component)
        admin_port = int(env["AS2_HTTP_LISTEN"].rsplit(":", 1)[1])
        expected = {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
        for probe, path in expected.items():
            check = container[probe]["httpGet"]
            assert check["path"] == path, f"{component} {probe}"
            assert port_of(check["port"], container) == admin_port, f"{component} {probe}"
        # The container ports are the ports the service listens on.
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["admin"] == admin_port
        if "AS2_GRPC_LISTEN" in env:
            assert ports["grpc"] == int(env["AS2_GRPC_LISTEN"].rsplit(":", 1)[1])
        if component == "edge":
            assert ports["as2"] == int(env["AS2_EDGE_LISTEN"].rsplit(":", 1)[1])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_services_point_at_named_container_ports(scenario: str) -> None:
    documents = render_scenario(scenario)
    by_component = deployments(documents)
    for service in of_kind(documents, "Service"):
        component = service["spec"]["selector"]["app.kubernetes.io/component"]
        container = by_component[component]["spec"]["template"]["spec"]["containers"][0]
        names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}: {port}"


def test_hpa_exists_only_when_enabled() -> None:
    documents = render()
    assert of_kind(documents, "HorizontalPodAutoscaler") == []
    assert deployments(documents)["edge"]["spec"]["replicas"] == 2

    documents = render({"edge": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 9}}})
    (hpa,) = of_kind(documents, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": f"{FULLNAME}-edge",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 9)
    # The HPA owns the replica count; the Deployment must not fight it on upgrades.
    assert "replicas" not in deployments(documents)["edge"]["spec"]
    assert deployments(documents)["routing"]["spec"]["replicas"] == 2


def test_checksum_annotation_rolls_only_the_component_whose_config_changed() -> None:
    def checksums(values: dict[str, Any]) -> dict[str, dict[str, str]]:
        return {
            component: deployment["spec"]["template"]["metadata"]["annotations"]
            for component, deployment in deployments(render(values)).items()
        }

    base = checksums({})
    assert all(a["checksum/config"] for a in base.values())
    assert checksums({}) == base, "rendering is not deterministic"

    bigger_bodies = checksums({"edge": {"maxBodyBytes": 20971520}})
    assert bigger_bodies["edge"]["checksum/config"] != base["edge"]["checksum/config"]
    assert bigger_bodies["routing"] == base["routing"]
    assert bigger_bodies["mdn"] == base["mdn"]

    more_workers = checksums({"mdn": {"workers": 8}})
    assert more_workers["mdn"]["checksum/config"] != base["mdn"]["checksum/config"]
    assert more_workers["edge"] == base["edge"]

    shared = checksums({"config": {"logFilter": "debug"}})
    for component in base:
        assert shared[component]["checksum/config"] != base[component]["checksum/config"]

    new_password = checksums({"redis": {"url": "redis://:changed@redis:6379/"}})
    for component in base:
        assert new_password[component]["checksum/secret"] != base[component]["checksum/secret"]
        assert new_password[component]["checksum/config"] == base[component]["checksum/config"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_maps_set_only_variables_the_services_read(scenario: str) -> None:
    documents = render_scenario(scenario)
    for component in deployments(documents):
        if not (REPO / SERVICE_SOURCES[component]).is_dir():
            continue  # a service that is not in this checkout yet
        known = env_variables_read_by(component)
        env = config_map_env(documents, component)
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{component} does not read {unknown}"
        for name, value in env.items():
            assert isinstance(value, str) and value != "", f"{component} {name} is empty"
            # Large numbers from values.yaml must not come out as 1.048576e+07.
            assert not re.fullmatch(r"[0-9.]+e[+-][0-9]+", value), f"{component} {name}={value}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_credentials_come_from_secrets_only(scenario: str) -> None:
    values = scenario_values(scenario)
    documents = render_scenario(scenario)
    for component, deployment in deployments(documents).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert "secretKeyRef" in env["AS2_REDIS_URL"]["valueFrom"], component
        if "AS2_KAFKA_OPTIONS" in env:
            assert "secretKeyRef" in env["AS2_KAFKA_OPTIONS"]["valueFrom"], component
        config = config_map_env(documents, component)
        assert "AS2_REDIS_URL" not in config and "AS2_KAFKA_OPTIONS" not in config
    # No password appears outside a Secret.
    secrets = [values.get("redis", {}).get("url", ""), values.get("kafka", {}).get("options", "")]
    for secret in filter(None, secrets):
        for document in documents:
            if document["kind"] != "Secret":
                assert secret not in json.dumps(document), document["_template"]


def test_inline_credentials_go_into_the_chart_secret() -> None:
    values = scenario_values("inline-credentials-values.yaml")
    documents = render(values)
    secret = named(documents, "Secret", f"{FULLNAME}-connection")
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"redis-url": values["redis"]["url"], "kafka-options": values["kafka"]["options"]}
    for component in ["edge", "mdn"]:
        container = deployments(documents)[component]["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["AS2_KAFKA_OPTIONS"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{FULLNAME}-connection",
            "key": "kafka-options",
        }
    routing = deployments(documents)["routing"]["spec"]["template"]["spec"]["containers"][0]
    assert "AS2_KAFKA_OPTIONS" not in {e["name"] for e in routing["env"]}


def test_each_service_can_have_its_own_redis_user_secret() -> None:
    def redis_url_refs(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
        refs = {}
        for component, deployment in deployments(documents).items():
            env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
            refs[component] = env["AS2_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        return refs

    shared = {"name": f"{FULLNAME}-connection", "key": "redis-url"}
    everything = {"sender": {"enabled": True}}
    assert redis_url_refs(render(everything)) == {c: shared for c in ["edge", "routing", "mdn", "sender"]}
    documents = render({
        **everything,
        "redis": {
            "users": {
                "edge": {"existingSecret": "as2-redis-edge"},
                "routing": {"existingSecret": "as2-redis-routing", "existingSecretKey": "url"},
            }
        }
    })
    assert redis_url_refs(documents) == {
        "edge": {"name": "as2-redis-edge", "key": "redis-url"},
        "routing": {"name": "as2-redis-routing", "key": "url"},
        "mdn": shared,
        "sender": shared,
    }


def test_a_redis_cluster_url_is_accepted_and_other_schemes_are_not() -> None:
    import base64

    documents = render({"redis": {"url": "redis+cluster://as2:pw@redis-0:6379,redis-1:6379/"}})
    secret = named(documents, "Secret", f"{FULLNAME}-connection")
    assert base64.b64decode(secret["data"]["redis-url"]).decode().startswith("redis+cluster://")
    _chart().validate_schema({"redis": {"url": "redis+cluster://redis-0:6379/"}})
    with pytest.raises(helm.HelmError):
        _chart().validate_schema({"redis": {"url": "http://redis:6379/"}})


def test_existing_secrets_and_tls_files_are_used_as_given() -> None:
    values = scenario_values("kafka-sasl-redis-auth-values.yaml")
    documents = render(values)
    connection_secrets = [s for s in of_kind(documents, "Secret") if not s["metadata"]["name"].endswith(("-grpc-tls", "-grpc-ca"))]
    assert connection_secrets == [], "no chart-managed connection Secret is needed"
    for component in ["edge", "mdn"]:
        spec = deployments(documents)[component]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        assert env["AS2_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "as2-redis", "key": "redis-url"}
        assert env["AS2_KAFKA_OPTIONS"]["valueFrom"]["secretKeyRef"] == {"name": "as2-kafka", "key": "kafka-options"}
        mount = next(m for m in container["volumeMounts"] if m["name"] == "kafka-tls")
        assert mount == {"name": "kafka-tls", "mountPath": "/etc/as2/kafka-tls", "readOnly": True}
        volume = next(v for v in spec["volumes"] if v["name"] == "kafka-tls")
        assert volume["secret"]["secretName"] == "as2-kafka-tls"
        assert "checksum/secret" not in deployments(documents)[component]["spec"]["template"]["metadata"]["annotations"]
    mdn = deployments(documents)["mdn"]["spec"]["template"]["spec"]
    assert config_map_env(documents, "mdn")["AS2_MDN_TLS_CA_FILE"] == "/etc/as2/mdn-ca/partners.pem"
    assert next(v for v in mdn["volumes"] if v["name"] == "mdn-ca")["secret"]["secretName"] == "as2-partner-cas"


def test_default_values_leave_kafka_options_unset() -> None:
    # The services reject an empty AS2_KAFKA_OPTIONS ("expected key=value"), so the
    # variable is only set when there are options.
    for deployment in deployments(render()).values():
        names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert "AS2_KAFKA_OPTIONS" not in names


def test_service_urls_point_at_the_services() -> None:
    documents = render({"sender": {"enabled": True}})
    services = {s["metadata"]["name"]: s for s in of_kind(documents, "Service")}
    for component, variables in {"edge": ["AS2_ROUTING_URL", "AS2_MDN_URL"], "sender": ["AS2_ROUTING_URL"]}.items():
        env = config_map_env(documents, component)
        for variable in variables:
            match = re.fullmatch(r"https://([a-z0-9-]+):([0-9]+)", env[variable])
            assert match, env[variable]
            service = services[match.group(1)]
            assert int(match.group(2)) in [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert "AS2_MDN_URL" not in config_map_env(render({"mdn": {"enabled": False}}), "edge")


def test_edge_exposure_is_selectable() -> None:
    documents = render()
    public = named(documents, "Service", f"{FULLNAME}-edge-public")
    assert public["spec"]["type"] == "LoadBalancer"
    assert [p["name"] for p in public["spec"]["ports"]] == ["as2"], "admin port must stay internal"
    assert of_kind(documents, "Ingress") == []

    documents = render_scenario("production-values.yaml")
    assert f"{FULLNAME}-edge-public" not in [s["metadata"]["name"] for s in of_kind(documents, "Service")]
    (ingress,) = of_kind(documents, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-edge", "port": {"name": "as2"}}
    for service in of_kind(documents, "Service"):
        if service["spec"]["selector"]["app.kubernetes.io/component"] in ("routing", "mdn"):
            assert service["spec"]["type"] == "ClusterIP"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_disruption_budgets_follow_the_values(scenario: str) -> None:
    values = scenario_values(scenario)
    documents = render_scenario(scenario)
    budgets = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in of_kind(documents, "PodDisruptionBudget")}
    for component, deployment in deployments(documents).items():
        enabled = values.get(component, {}).get("pdb", {}).get("enabled", True)
        assert (component in budgets) == enabled, component
        if enabled:
            selector = budgets[component]["spec"]["selector"]["matchLabels"]
            assert selector == deployment["spec"]["selector"]["matchLabels"]


def test_network_policies_limit_ingress_and_egress() -> None:
    documents = render_scenario("sender-values.yaml")
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in of_kind(documents, "NetworkPolicy")}
    assert set(policies) == {"edge", "routing", "mdn", "sender"}

    def ingress_ports(policy: dict[str, Any]) -> dict[str, list[dict[str, Any]] | None]:
        return {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}

    def egress_ports(policy: dict[str, Any]) -> set[int]:
        return {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}

    gateway_pods = {"app.kubernetes.io/name": "as2-gateway", "app.kubernetes.io/instance": RELEASE}
    edge = ingress_ports(policies["edge"])
    assert edge["as2"] is None, "partners reach the AS2 port from anywhere by default"
    for component in ["routing", "mdn"]:
        grpc = ingress_ports(policies[component])["grpc"]
        assert grpc == [{"podSelector": {"matchLabels": gateway_pods}}], component
        assert "as2" not in ingress_ports(policies[component])
    assert egress_ports(policies["mdn"]) >= {53, 6379, 80, 443}
    assert egress_ports(policies["sender"]) >= {53, 6379, 9092, 80, 443, 50051}
    assert egress_ports(policies["edge"]) >= {53, 6379, 9092, 50051}
    assert not egress_ports(policies["edge"]) & {80, 443}, "the edge calls no partner"
    assert egress_ports(policies["routing"]) == {53, 6379}


def test_helm_test_hook_checks_readiness_and_grpc() -> None:
    documents = render()
    (pod,) = of_kind(documents, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    script = pod["spec"]["initContainers"][0]["command"][-1]
    for component in ["edge", "routing", "mdn"]:
        assert component in script
    assert "/readyz" in script
    commands = {c["name"]: c["command"] for c in pod["spec"]["containers"]}
    assert commands["routing-grpc"][:3] == ["as2ctl", "partnership", "list"]
    assert commands["mdn-grpc"][:3] == ["as2ctl", "mdn", "list"]


def test_monitoring_resources_exist_only_when_enabled() -> None:
    documents = render()
    assert not of_kind(documents, "ServiceMonitor") and not of_kind(documents, "PrometheusRule")
    assert "dashboard" not in " ".join(d["metadata"]["name"] for d in of_kind(documents, "ConfigMap"))

    documents = render_scenario("production-values.yaml")
    (monitor,) = of_kind(documents, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = yaml.safe_load((CHART / "files/prometheus-alerts.yaml").read_text())
    (rule,) = of_kind(documents, "PrometheusRule")
    assert rule["spec"]["groups"] == alerts.get("spec", alerts)["groups"]
    dashboard = named(documents, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["as2-gateway.json"]) == json.loads(
        (CHART / "files/grafana-dashboard.json").read_text()
    )


def test_values_are_documented_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
        return [prefix.rstrip(".")]

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # Kubernetes-native blocks (security contexts, resources, probe timings) are
    # documented as one entry.
    missing = []
    for leaf in leaves(values):
        parts = leaf.split(".")
        if not any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1)):
            missing.append(leaf)
    assert missing == []


def test_the_image_holds_every_service_binary() -> None:
    dockerfile = (REPO / "deploy/docker/Dockerfile").read_text()
    # Every workspace binary is built and copied, so a new service needs no Dockerfile edit.
    assert "cargo build --release --locked --workspace --bins" in dockerfile
    assert "-name 'as2*'" in dockerfile
    assert re.search(r"^USER 10001(:10001)?$", dockerfile, flags=re.MULTILINE)
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.MULTILINE)) >= 2
    assert "ENTRYPOINT" not in dockerfile
    binaries = {"as2-edge", "as2-routing", "as2-mdn", "as2ctl"}
    for binary in binaries:
        assert binary in dockerfile
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ["edge", "routing", "mdn"]:
        assert chart_values[component]["command"][0] in binaries


def run_with_rendered_env(command: list[str], env: dict[str, str]) -> tuple[int | None, str]:
    """Runs a binary with exactly this environment; (exit code or None if still running, output)."""
    return run_all_with_rendered_env([(command, env)])[0]


def run_all_with_rendered_env(
    runs: list[tuple[list[str], dict[str, str]]], seconds: float = 10
) -> list[tuple[int | None, str]]:
    """Runs binaries side by side, each with exactly its environment, for at most `seconds`
    together; (exit code or None if still running, output) of each, in order."""
    processes = []
    for command, env in runs:
        executable = Path(BINARIES or "") / command[0]
        assert executable.is_file(), f"{executable} is not built: run cargo test (tests/run does) or set AS2_CHART_TEST_BINARIES"
        processes.append(
            subprocess.Popen(
                [str(executable), *command[1:]],
                env={"PATH": "/usr/bin:/bin", **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + seconds
    results: list[tuple[int | None, str]] = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
            results.append((process.returncode, output))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            results.append((None, output))
    return results


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_services_accept_the_rendered_configuration(scenario: str) -> None:
    # Each service parses its whole configuration before it connects anywhere (clap exits
    # 2 on a bad value). With Redis pointed at a closed port, a service that got as far as
    # connecting has accepted every variable the chart gave it.
    values = scenario_values(scenario)
    documents = render_scenario(scenario)
    kafka_options = values.get("kafka", {}).get("options") or (
        "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=as2,"
        "sasl.password=secret,ssl.ca.location=/etc/as2/kafka-tls/ca.crt"
    )
    runs = []
    for component, deployment in deployments(documents).items():
        if not (REPO / SERVICE_SOURCES[component]).is_dir():
            continue  # a service that is not in this checkout yet
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = dict(config_map_env(documents, component))
        for name in ("AS2_HTTP_LISTEN", "AS2_GRPC_LISTEN", "AS2_EDGE_LISTEN"):
            if name in env:
                env[name] = "127.0.0.1:0"
        for variable in container["env"]:
            if "value" in variable:
                env[variable["name"]] = variable["value"]
            elif variable["name"] == "AS2_REDIS_URL":
                env["AS2_REDIS_URL"] = "redis://:secret@127.0.0.1:1/0"
            elif variable["name"] == "AS2_KAFKA_OPTIONS":
                env["AS2_KAFKA_OPTIONS"] = kafka_options
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # no exporter start-up in this check
        env.update(local_grpc_credential(env))
        runs.append((component, container["command"] + container.get("args", []), env))
    # The components start side by side: each waits on its Redis for the whole time.
    results = run_all_with_rendered_env([(command, env) for _, command, env in runs])
    assert results, "no component was run"
    for (component, _, _), (code, output) in zip(runs, results):
        assert code != 2 and "Usage:" not in output, f"{component} refused its configuration:\n{output}"
        assert code is None or "redis" in output.lower(), f"{component} stopped before Redis:\n{output}"


def test_the_helm_test_commands_parse() -> None:
    (pod,) = of_kind(render(), "Pod")
    for container in pod["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        # The Services do not resolve here: the call fails (exit 1), the syntax must not (2).
        env = {name: ("https://127.0.0.1:1" if name.endswith("_URL") else value) for name, value in env.items()}
        env.update(local_grpc_credential(env))
        code, output = run_with_rendered_env(container["command"], env)
        assert code == 1, f"{container['name']}: exit {code}\n{output}"
        assert "cannot reach" in output, f"{container['name']} failed before connecting:\n{output}"


# ---------------------------------------------------------------------------------------
# gRPC mutual TLS


def _certificate_text(pem: str) -> str:
    return subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-ext", "subjectAltName,extendedKeyUsage"],
        input=pem.encode(), capture_output=True, check=True,
    ).stdout.decode()


def test_grpc_is_mutual_tls_by_default_with_one_credential_per_component() -> None:
    import base64
    import tempfile

    documents = render({"sender": {"enabled": True}})
    secrets = {s["metadata"]["name"]: s for s in of_kind(documents, "Secret")}
    ca_pem = base64.b64decode(secrets[f"{FULLNAME}-grpc-ca"]["data"]["tls.crt"]).decode()
    for component, deployment in deployments(documents).items():
        env = config_map_env(documents, component)
        assert "AS2_GRPC_INSECURE_PLAINTEXT" not in env, component
        spec = deployment["spec"]["template"]["spec"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "grpc-tls")
        assert mount["readOnly"] is True
        assert env["AS2_GRPC_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
        assert env["AS2_GRPC_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
        assert env["AS2_GRPC_TLS_CA"] == f"{mount['mountPath']}/ca.crt"
        volume = next(v for v in spec["volumes"] if v["name"] == "grpc-tls")
        secret = secrets[volume["secret"]["secretName"]]
        assert secret["type"] == "kubernetes.io/tls"
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        assert data["ca.crt"] == ca_pem
        text = _certificate_text(data["tls.crt"])
        # The common name is the role the permissions table knows.
        assert re.search(rf"subject=CN\s*=\s*{component}\b", text), text
        assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text, text
        assert f"DNS:{FULLNAME}-{component}.{NAMESPACE}.svc" in text, text
        with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca_file:
            ca_file.write(ca_pem)
            ca_file.flush()
            verified = subprocess.run(["openssl", "verify", "-CAfile", ca_file.name], input=data["tls.crt"].encode(), capture_output=True)
            assert verified.returncode == 0, verified.stderr
    # The operator's credential (as2ctl, helm test) is there too.
    operator = base64.b64decode(secrets[f"{FULLNAME}-operator-grpc-tls"]["data"]["tls.crt"]).decode()
    assert "CN = operator:helm" in _certificate_text(operator) or "CN=operator:helm" in _certificate_text(operator)
    (pod,) = of_kind(documents, "Pod")
    for container in pod["spec"]["containers"]:
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        if "AS2_GRPC_TLS_CERT" in env:
            assert any(m["name"] == "grpc-tls" for m in container["volumeMounts"])
    assert next(v for v in pod["spec"]["volumes"] if v["name"] == "grpc-tls")["secret"]["secretName"] == f"{FULLNAME}-operator-grpc-tls"


def test_grpc_credentials_can_come_from_cert_manager_or_existing_secrets() -> None:
    documents = render({
        "grpcTls": {
            "certManager": {"enabled": True, "issuerRef": {"name": "as2-ca", "kind": "ClusterIssuer"}},
            "existingSecrets": {"operator": "my-operator-credential"},
        },
    })
    certificates = {c["metadata"]["name"]: c for c in of_kind(documents, "Certificate")}
    assert sorted(certificates) == sorted(f"{FULLNAME}-{c}-grpc" for c in ["routing", "mdn", "edge"])
    for component in ["routing", "mdn", "edge"]:
        spec = certificates[f"{FULLNAME}-{component}-grpc"]["spec"]
        assert spec["commonName"] == component
        assert spec["secretName"] == f"{FULLNAME}-{component}-grpc-tls"
        assert {"server auth", "client auth"} <= set(spec["usages"])
        assert spec["issuerRef"] == {"name": "as2-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
        assert f"{FULLNAME}-{component}.{NAMESPACE}.svc.cluster.local" in spec["dnsNames"]
    assert not [s for s in of_kind(documents, "Secret") if "grpc" in s["metadata"]["name"]]
    (pod,) = of_kind(documents, "Pod")
    assert next(v for v in pod["spec"]["volumes"] if v["name"] == "grpc-tls")["secret"]["secretName"] == "my-operator-credential"
    with pytest.raises(Exception, match="issuerRef.name is required"):
        render({"grpcTls": {"certManager": {"enabled": True}}})


def test_plain_text_grpc_is_an_explicit_development_switch() -> None:
    documents = render({"grpcTls": {"enabled": False}})
    for component, deployment in deployments(documents).items():
        env = config_map_env(documents, component)
        assert env["AS2_GRPC_INSECURE_PLAINTEXT"] == "true", component
        assert not any(k.startswith("AS2_GRPC_TLS_") for k in env), component
        assert not any(v["name"] == "grpc-tls" for v in deployment["spec"]["template"]["spec"]["volumes"])
        for variable in ("AS2_ROUTING_URL", "AS2_MDN_URL"):
            if variable in env:
                assert env[variable].startswith("http://"), env[variable]
    assert not [s for s in of_kind(documents, "Secret") if "grpc" in s["metadata"]["name"]]


def test_the_edge_serves_https_from_a_tls_secret_when_given() -> None:
    documents = render({"edge": {"tls": {"secretName": "as2-public-tls"}}})
    env = config_map_env(documents, "edge")
    spec = deployments(documents)["edge"]["spec"]["template"]["spec"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "edge-tls")
    assert mount["readOnly"] is True
    assert env["AS2_EDGE_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert env["AS2_EDGE_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    assert next(v for v in spec["volumes"] if v["name"] == "edge-tls")["secret"]["secretName"] == "as2-public-tls"
    assert "AS2_EDGE_TLS_CERT" not in config_map_env(render(), "edge")


def test_redis_over_tls_mounts_its_ca_and_client_certificate() -> None:
    documents = render({"redis": {"url": "rediss://redis:6380/", "tls": {"caSecret": {"name": "redis-ca"}, "clientSecret": "redis-client"}}})
    for component, deployment in deployments(documents).items():
        env = config_map_env(documents, component)
        spec = deployment["spec"]["template"]["spec"]
        mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
        assert env["AS2_REDIS_TLS_CA"] == f"{mounts['redis-ca']['mountPath']}/ca.crt"
        assert env["AS2_REDIS_TLS_CERT"] == f"{mounts['redis-client']['mountPath']}/tls.crt"
        assert env["AS2_REDIS_TLS_KEY"] == f"{mounts['redis-client']['mountPath']}/tls.key"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["redis-ca"]["secret"]["secretName"] == "redis-ca"
        assert volumes["redis-client"]["secret"]["secretName"] == "redis-client"


def test_network_policies_are_on_by_default() -> None:
    documents = render()
    policies = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in of_kind(documents, "NetworkPolicy")}
    assert set(policies) == set(deployments(documents))
    for component, policy in policies.items():
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}, component
        for rule in policy["spec"]["ingress"]:
            port = rule["ports"][0]["port"]
            # Only the edge's AS2 port is open to anyone; gRPC and admin only to peers.
            if port != "as2":
                assert rule.get("from"), f"{component} port {port} is open to anyone"
