"""The deploy files: every YAML parses, every variable they set is a real setting with a valid
value, probes name health services Herald serves, secrets stay in secrets, and the compose file,
the Kubernetes manifests and their Envoy configs agree with each other and with deploy/envoy."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic_settings import BaseSettings

from services import config
from services.cli import build_parser
from services.server import SERVICE_NAMES
from tests.harness import Herald
from tests.test_envoy import envoy_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
YAML_FILES = sorted(DEPLOY.rglob("*.yaml"))
ROLES = ("registry", "ingest", "stream")
# What the pod's downward API gives these in a running cluster.
FIELD_SAMPLES = {"status.podIP": "10.1.2.3", "metadata.name": "herald-stream-7d9f-abcde"}
_SUBSTITUTION = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def _settings_classes() -> list[type[BaseSettings]]:
    return [
        value
        for value in vars(config).values()
        if isinstance(value, type) and issubclass(value, BaseSettings) and value is not BaseSettings
    ]


def _settings() -> dict[str, bool]:
    """Every HERALD_* variable a settings class reads -> whether it is a secret (SecretStr)."""
    found: dict[str, bool] = {}
    for cls in _settings_classes():
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            found[(prefix + name).upper()] = "SecretStr" in str(field.annotation)
    return found


SETTINGS = _settings()


def _build_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> config.Config:
    """The settings a node started with exactly `env` would have (raises if a value is bad)."""
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for cls in _settings_classes():
        cls()  # every class validates its values, also one Config does not hold
    return config.Config()


def _load(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# -- every file --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_deploy_yaml_parses(path: Path) -> None:
    docs = _load(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_the_settings_introspection_sees_the_real_settings() -> None:
    # Guards the test itself: if it saw nothing, every name check below would pass vacuously.
    assert {"HERALD_PORT", "HERALD_AUTH_MODE", "HERALD_DELIVERY_BATCH_MAX"} <= set(SETTINGS)
    assert SETTINGS["HERALD_AUTH_SECRET"]
    assert SETTINGS["HERALD_POSTGRES_DSN"]
    assert not SETTINGS["HERALD_PORT"]
    assert len(_settings_classes()) >= 6


# -- compose -----------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    [doc] = _load(COMPOSE)
    return doc  # type: ignore[no-any-return]


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "compose" / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def _herald_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _compose()["services"].items()
        if str(service.get("image", "")).startswith("herald")
    }


def _resolved(env: dict[str, Any]) -> dict[str, str]:
    example = _env_example()

    def substitute(match: re.Match[str]) -> str:
        assert match.group(1) in example, f"${{{match.group(1)}}} is not in env.example"
        return example[match.group(1)]

    return {name: _SUBSTITUTION.sub(substitute, str(value)) for name, value in env.items()}


def test_compose_has_the_whole_production_profile() -> None:
    services = _compose()["services"]
    assert {"envoy", "postgres", "redis", "registry", "ingest"} <= set(services)
    commands = {name: tuple(s["command"]) for name, s in _herald_services().items()}
    streams = [name for name, command in commands.items() if command == ("serve", "stream")]
    assert len(streams) == 2
    assert commands["registry"] == ("serve", "registry")
    assert commands["ingest"] == ("serve", "ingest")


def test_compose_sets_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = {}
    for name, service in _herald_services().items():
        env = service["environment"]
        unknown = sorted(set(env) - set(SETTINGS))
        assert not unknown, f"compose service {name} sets {unknown}: not settings"
        built = _build_settings(_resolved(env), monkeypatch)
        assert built.backends.profile == "production"
        assert built.auth.mode == "production"
        assert built.server.host == "0.0.0.0"
        build_parser().parse_args(service["command"])  # a real `herald` command line
        ports[name] = built.server.port
        if service["command"][:2] == ["serve", "stream"]:
            # The registry reaches a stream node at the address it advertises.
            assert built.server.advertise_address == f"{name}:{built.server.port}"
            assert built.server.node_id == name
    for name, service in _herald_services().items():
        if name == "migrate":
            continue
        published = {int(str(p).split(":")[1]) for p in service["ports"]}
        assert published == {ports[name]}, f"{name} publishes a port it does not listen on"


def test_compose_secrets_come_from_the_env_file_only() -> None:
    example = _env_example()
    for name, service in _herald_services().items():
        for key, value in service["environment"].items():
            value = str(value)
            if not SETTINGS[key]:
                assert "${" not in value, f"{name}: {key} is not a secret"
                continue
            # A secret is a ${...} from .env, or a URL with no password in it.
            has_password = re.search(r"://[^/@:]*:[^/@]+@", _SUBSTITUTION.sub("", value))
            assert "${" in value or (value.startswith("redis://") and not has_password), (
                f"{name}: {key} is written into compose.yaml"
            )
    assert example, "env.example lists the variables compose.yaml needs"
    assert all("REPLACE-ME" in value for value in example.values()), "placeholders only"
    needed = set(_SUBSTITUTION.findall(COMPOSE.read_text()))
    assert needed == set(example)


def test_compose_builds_the_image_from_the_lock() -> None:
    dockerfiles = {
        (COMPOSE.parent / s["build"]["context"] / s["build"]["dockerfile"]).resolve()
        for s in _herald_services().values()
    }
    [dockerfile] = dockerfiles
    text = dockerfile.read_text()
    assert "--require-hashes -r requirements.lock" in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for item in source.split():
            assert (ROOT / item).exists(), f"the Dockerfile copies {item}, which does not exist"


# -- Envoy configs -----------------------------------------------------------------------------


def _envoy_base() -> dict[str, Any]:
    [doc] = _load(DEPLOY / "envoy" / "envoy.yaml")
    return doc  # type: ignore[no-any-return]


def _endpoints(envoy: dict[str, Any], name: str = "herald") -> list[tuple[str, int]]:
    [cluster] = [c for c in envoy["static_resources"]["clusters"] if c["name"] == name]
    return [
        (e["endpoint"]["address"]["socket_address"]["address"],
         e["endpoint"]["address"]["socket_address"]["port_value"])
        for locality in cluster["load_assignment"]["endpoints"]
        for e in locality["lb_endpoints"]
    ]  # fmt: skip


def _without_endpoints(envoy: dict[str, Any]) -> dict[str, Any]:
    stripped = copy.deepcopy(envoy)
    for cluster in stripped["static_resources"]["clusters"]:
        cluster["load_assignment"]["endpoints"] = []
    return stripped


def _k8s_envoy_config() -> dict[str, Any]:
    [config_map] = [
        d for d in _manifests() if d["kind"] == "ConfigMap" and "envoy.yaml" in d["data"]
    ]
    return yaml.safe_load(config_map["data"]["envoy.yaml"])  # type: ignore[no-any-return]


def test_compose_envoy_is_the_base_config_pointed_at_the_stream_nodes() -> None:
    compose_envoy = _load(DEPLOY / "compose" / "envoy.yaml")[0]
    assert _without_endpoints(compose_envoy) == _without_endpoints(_envoy_base())
    streams = {
        (name, int(s["environment"]["HERALD_PORT"]))
        for name, s in _herald_services().items()
        if s["command"] == ["serve", "stream"]
    }
    assert set(_endpoints(compose_envoy)) == streams
    # The WebSocket cluster: the same nodes, on their WebSocket port.
    ws_streams = {
        (name, int(s["environment"]["HERALD_WS_PORT"]))
        for name, s in _herald_services().items()
        if s["command"] == ["serve", "stream"]
    }
    assert set(_endpoints(compose_envoy, "herald_websocket")) == ws_streams
    envoy = _compose()["services"]["envoy"]
    [listener] = compose_envoy["static_resources"]["listeners"]
    port = listener["address"]["socket_address"]["port_value"]
    assert f"{port}:{port}" in envoy["ports"]
    assert "./envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy["volumes"]
    assert set(envoy["depends_on"]) == {name for name, _ in streams}


def test_kubernetes_envoy_is_the_base_config_pointed_at_the_stream_pods() -> None:
    envoy = _k8s_envoy_config()
    assert _without_endpoints(envoy) == _without_endpoints(_envoy_base())
    [(host, port)] = _endpoints(envoy)
    [headless] = [
        d for d in _manifests() if d["kind"] == "Service" and d["metadata"]["name"] == host
    ]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"app.kubernetes.io/name": "herald-stream"}
    [(ws_host, ws_port)] = _endpoints(envoy, "herald_websocket")
    assert ws_host == host
    assert [p["port"] for p in headless["spec"]["ports"]] == [port, ws_port]
    assert port == int(_container_env(_deployment("stream"))["HERALD_PORT"])
    assert ws_port == int(_container_env(_deployment("stream"))["HERALD_WS_PORT"])


@pytest.mark.parametrize("where", ["compose", "kubernetes"])
def test_the_envoy_configs_validate(where: str, tmp_path: Path) -> None:
    if where == "compose":
        path = DEPLOY / "compose" / "envoy.yaml"
    else:
        path = tmp_path / "envoy.yaml"
        path.write_text(yaml.safe_dump(_k8s_envoy_config()))
    result = subprocess.run(  # noqa: S603 - the venv's envoy on a file of this test
        [envoy_binary(), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


# -- Kubernetes --------------------------------------------------------------------------------


def _manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(_load(path))
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _deployment(role: str) -> dict[str, Any]:
    return _one("Deployment", f"herald-{role}")


def _herald_workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in _manifests():
        if doc["kind"] in ("Deployment", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"] == "herald":
                    yield doc["metadata"]["name"], container


def _container_env(deployment: dict[str, Any]) -> dict[str, str]:
    """The environment of a Deployment's herald container, as the kubelet would build it."""
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return _workload_env(container)


def _workload_env(container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(_one("Secret", source["secretRef"]["name"])["stringData"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = FIELD_SAMPLES[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_kustomization_lists_every_manifest() -> None:
    [kustomization] = _load(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files


def test_kubernetes_sets_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    workloads = list(_herald_workloads())
    assert len(workloads) >= 4  # registry, ingest, stream, migrate
    for name, container in workloads:
        names = {item["name"] for item in container.get("env", [])}
        assert not names - set(SETTINGS), f"{name} sets {sorted(names - set(SETTINGS))}"
        env = _workload_env(container)
        assert not set(env) - set(SETTINGS), f"{name} reads {sorted(set(env) - set(SETTINGS))}"
        built = _build_settings(env, monkeypatch)
        assert built.backends.profile == "production"
        assert built.auth.mode == "production"
        build_parser().parse_args(container["args"])  # a real `herald` command line
    stream = _build_settings(_container_env(_deployment("stream")), monkeypatch).server
    # Advertised to the registry: the pod's own address, not 0.0.0.0.
    assert (stream.host, stream.advertise_address) == ("10.1.2.3", "")


def test_secrets_live_in_the_secret_and_nowhere_else() -> None:
    [config_map] = [d for d in _manifests() if d["metadata"]["name"] == "herald-config"]
    [secret] = [d for d in _manifests() if d["kind"] == "Secret"]
    assert not [k for k in config_map["data"] if SETTINGS[k]], "a secret in the ConfigMap"
    assert all(SETTINGS[k] for k in secret["stringData"]), "a plain setting in the Secret"
    assert {"HERALD_AUTH_SECRET", "HERALD_POSTGRES_DSN"} <= set(secret["stringData"])
    assert all("REPLACE-ME" in v or "@" not in v for v in secret["stringData"].values())
    assert "REPLACE-ME" in secret["stringData"]["HERALD_AUTH_SECRET"]
    assert "REPLACE-ME" in secret["stringData"]["HERALD_POSTGRES_DSN"]
    for name, container in _herald_workloads():
        for item in container.get("env", []):
            assert not SETTINGS[item["name"]], f"{name} writes {item['name']} in the manifest"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_probed_on_its_own_grpc_health_name(role: str) -> None:
    deployment = _deployment(role)
    spec = deployment["spec"]["template"]["spec"]
    [container] = spec["containers"]
    env = _container_env(deployment)
    port = int(env["HERALD_PORT"])
    assert {"name": "grpc", "containerPort": port} in container["ports"]
    assert container["args"] == ["serve", role]
    for probe in ("startupProbe", "readinessProbe"):
        grpc_probe = container[probe]["grpc"]
        assert grpc_probe["port"] == port
        assert grpc_probe["service"] in SERVICE_NAMES[role]
    # Liveness must not follow backend health (an outage would restart every pod).
    assert "grpc" not in container["livenessProbe"]
    assert spec["terminationGracePeriodSeconds"] > float(env["HERALD_SHUTDOWN_GRACE_S"])
    [service] = [
        d
        for d in _manifests()
        if d["kind"] == "Service"
        and d["spec"]["selector"] == {"app.kubernetes.io/name": f"herald-{role}"}
        and d["spec"].get("clusterIP") != "None"
    ]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["grpc"]


@pytest.mark.asyncio
async def test_the_probed_health_names_answer_serving(herald: Herald) -> None:
    """Each probe's service name, asked of a real node of that role, is SERVING."""
    for role in ROLES:
        [container] = _deployment(role)["spec"]["template"]["spec"]["containers"]
        service = container["readinessProbe"]["grpc"]["service"]
        async with aio.insecure_channel(herald.address(role)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(aio.AioRpcError) as unknown:
                await stub.Check(health_pb2.HealthCheckRequest(service="herald.v1.Nope"), timeout=5)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_nodes_have_a_disruption_budget() -> None:
    [budget] = [d for d in _manifests() if d["kind"] == "PodDisruptionBudget"]
    stream = _deployment("stream")
    assert budget["spec"]["selector"]["matchLabels"] == stream["spec"]["selector"]["matchLabels"]
    assert stream["spec"]["replicas"] > budget["spec"]["maxUnavailable"]


def test_kustomize_builds_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (optional: the YAML checks above still run)")
    result = subprocess.run(  # noqa: S603 - kubectl from PATH on the repository's own files
        [kubectl, "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(built) == len(_manifests())
    namespaced = [d for d in built if d["kind"] != "Namespace"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"herald"}
