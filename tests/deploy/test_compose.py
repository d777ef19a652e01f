"""docker-compose.yml is valid and complete, checked offline (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# A copy of the Compose Specification schema (compose-spec/compose-spec, Apache-2.0), so that the
# check runs on a clean clone; it must equal the workplace's copy wherever that one is present.
SCHEMA = ROOT / "deploy" / "compose-spec.json"
SHARED_SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"

NEEDED = {"redis", "postgres", "mlflow", "ray-head", "ray-worker", "api"}
_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR:-default}`` / ``${VAR:?message}`` substitution, for the checks below."""
    env = env or {}

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if name in env:
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} has no default: {arg or 'required'}")

    return _VAR.sub(one, value)


def _builtin_schema() -> dict[str, Any]:
    """check-jsonschema's own vendored copy of the Compose schema: a second, independent check."""
    import check_jsonschema

    path = (
        Path(check_jsonschema.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.parametrize("source", ["workplace copy", "check-jsonschema builtin"])
def test_validates_against_compose_spec(compose: dict[str, Any], source: str) -> None:
    if source == "workplace copy":
        schema = json.loads(SCHEMA.read_text())
        # The copy in deploy/ is the workplace's schema, wherever that one is beside the checkout.
        if SHARED_SCHEMA.exists():
            assert schema == json.loads(SHARED_SCHEMA.read_text())
    else:
        schema = _builtin_schema()
    jsonschema.Draft7Validator(schema).validate(compose)


def test_every_needed_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services.keys() >= NEEDED
    for name in NEEDED:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"service {name} has no health check"
        assert not check.get("disable", False)


def test_depends_on_targets_exist_and_wait_for_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, condition in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on undefined service {target}"
            assert condition == {"condition": "service_healthy"}, (name, target)


def test_referenced_volumes_networks_secrets_and_images_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    volumes = set(compose.get("volumes", {}))
    networks = set(compose.get("networks", {}))
    secrets = set(compose.get("secrets", {}))
    built_images = {interpolate(s["image"]) for s in services.values() if "build" in s}
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts undefined volume {source}"
        for net in service.get("networks", []):
            assert net in networks, f"{name} joins undefined network {net}"
        for secret in service.get("secrets", []):
            assert secret in secrets, f"{name} uses undefined secret {secret}"
        image = interpolate(service["image"])
        if image.startswith("lifelong:"):
            assert image in built_images, f"{name} uses {image}, which no service builds"
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.exists(), f"{name} builds from missing {dockerfile}"


def test_ports_bind_to_loopback_unless_told_otherwise(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert interpolate(port).startswith("127.0.0.1:"), f"{name} publishes {port} widely"
            assert interpolate(port, {"LIFELONG_BIND": "0.0.0.0"}).startswith("0.0.0.0:")


def test_no_secret_has_a_default(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN"):
        uses = re.findall(rf"\$\{{{secret}(:[-?])?", text)
        assert uses, f"{secret} is not used"
        assert all(op == ":?" for op in uses), f"{secret} must be required (:?), not defaulted"


def test_ray_workers_scale(compose: dict[str, Any]) -> None:
    # `docker compose up --scale ray-worker=3` needs no fixed name and no host port.
    worker = compose["services"]["ray-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    gpu = compose["services"]["ray-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_redis_persists_with_aof(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"


def test_deploy_doc_lists_every_setting() -> None:
    from service.settings import environment_table

    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = doc.split("<!-- settings-table -->\n", 1)[1].split("\n<!-- /settings-table -->", 1)[0]
    assert table == environment_table()


def test_compose_sets_only_known_settings(compose: dict[str, Any]) -> None:
    from service.settings import Settings

    known = {f"LIFELONG_{name.upper()}" for name in Settings.model_fields}
    known |= {"LIFELONG_ROLE", "LIFELONG_PORT"}  # read by deploy/healthcheck.py
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key in env:
            if key.startswith("LIFELONG_"):
                assert key in known, f"{name} sets {key}, which no setting reads"


def test_only_the_api_is_published(compose: dict[str, Any]) -> None:
    # MLflow and the Ray dashboard have no authentication of their own: they, Redis and
    # PostgreSQL sit on an internal network, and only the API (which needs a key) is published.
    assert compose["networks"]["backend"] == {"internal": True}
    for name, service in compose["services"].items():
        if name == "api":
            assert service["networks"] == ["backend", "frontend"]
            assert service["environment"]["LIFELONG_API_KEYS_FILE"] == "/run/secrets/api-keys"
            continue
        assert "ports" not in service, f"{name} is published"
        assert service.get("networks") == ["backend"], name
