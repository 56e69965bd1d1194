"""docker-compose.yml, the Dockerfiles and .env.example, checked without a Docker engine.

Docker cannot run on the build machine, so this test parses the files and checks what would
otherwise only fail in production: services, commands, environment, start-up order, persistence,
the GPU reservation and the CUDA image.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kronos_jobs.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KRONOS_SERVICES = ("migrate", "api", "worker-cpu", "worker-gpu", "beat")
SETTINGS_VARS = {f"KRONOS_{name.upper()}" for name in Settings.model_fields}


def env_file_vars(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


ENV_EXAMPLE = env_file_vars(ROOT / ".env.example")


def service_env(name: str) -> dict[str, str]:
    """What a service sees: .env.example, then its `environment` block on top."""
    service = SERVICES[name]
    files = [entry["path"] if isinstance(entry, dict) else entry for entry in service.get("env_file", [])]
    env = dict(ENV_EXAMPLE) if ".env.example" in files else {}
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    env.update({key: str(value) for key, value in environment.items()})
    return env


def command(name: str) -> list[str]:
    cmd = SERVICES[name]["command"]
    return cmd.split() if isinstance(cmd, str) else [str(part) for part in cmd]


def test_every_service_is_there():
    assert set(SERVICES) >= {"redis", "postgres", "api", "worker-cpu", "worker-gpu", "beat", "flower"}


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("migrate", ["kronos-jobs", "db", "upgrade"]),
        ("api", ["kronos-jobs", "api"]),
        ("worker-cpu", ["kronos-jobs", "worker", "--pool", "cpu"]),
        ("worker-gpu", ["kronos-jobs", "worker", "--pool", "gpu"]),
        ("beat", ["kronos-jobs", "beat"]),
    ],
)
def test_commands(service, expected):
    assert command(service)[: len(expected)] == expected


def test_redis_persists_and_never_evicts_tasks():
    redis = " ".join(command("redis"))
    assert re.search(r"--appendonly\s+yes", redis), redis
    assert re.search(r"--maxmemory-policy\s+noeviction", redis), redis
    assert any(volume.endswith(":/data") for volume in SERVICES["redis"]["volumes"])


@pytest.mark.parametrize("service", ["redis", "postgres", "api", "worker-cpu", "worker-gpu"])
def test_healthchecks(service):
    assert SERVICES[service]["healthcheck"]["test"]


def test_named_volumes_are_declared():
    declared = set(COMPOSE["volumes"])
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    assert any("/var/lib/postgresql/data" in v for v in SERVICES["postgres"]["volumes"])


@pytest.mark.parametrize("service", ["api", "worker-cpu", "worker-gpu", "beat"])
def test_start_order(service):
    depends = SERVICES[service]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("service", KRONOS_SERVICES)
def test_production_urls(service):
    env = service_env(service)
    assert env["KRONOS_BROKER_URL"].startswith("redis://redis:6379/")
    assert env["KRONOS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["KRONOS_DATABASE_URL"]


REQUIRED_PASSWORD = "${POSTGRES_PASSWORD:?"


def test_database_url_matches_the_postgres_container():
    for service in KRONOS_SERVICES:
        url = service_env(service)["KRONOS_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://${POSTGRES_USER:-kronos}:" + REQUIRED_PASSWORD), service
        assert url.endswith("@postgres:5432/${POSTGRES_DB:-kronos}"), service
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(REQUIRED_PASSWORD)


# --- hardening (issue 11) --------------------------------------------------------------------------


def test_no_default_database_password_anywhere():
    assert "POSTGRES_PASSWORD" not in ENV_EXAMPLE and "KRONOS_DATABASE_URL" not in ENV_EXAMPLE
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / ".env.example").read_text()
    assert "change-me" not in text
    for default in re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text):
        assert default.startswith(":?"), default  # required, never `:-something`


def test_the_old_placeholder_password_is_refused_by_every_process():
    with pytest.raises(ValueError, match="placeholder password"):
        Settings(database_url="postgresql+psycopg://kronos:change-me@postgres:5432/kronos")


@pytest.mark.parametrize("service", ["api", "flower"])
def test_published_ports_bind_loopback_unless_configured(service):
    for port in SERVICES[service]["ports"]:
        assert port.startswith("${PUBLISH_ADDRESS:-127.0.0.1}:"), port
    published = {name for name, s in SERVICES.items() if s.get("ports")}
    assert published == {"api", "flower"}


def test_flower_requires_basic_auth_and_uses_the_configured_broker():
    flower = SERVICES["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert "--broker=\"$$KRONOS_BROKER_URL\"" in " ".join(command("flower"))
    assert ".env.example" in [e["path"] if isinstance(e, dict) else e for e in flower["env_file"]]


def test_the_api_trusts_the_names_it_is_reached_by():
    env = service_env("api")
    assert {"localhost", "127.0.0.1"} <= set(env["KRONOS_TRUSTED_HOSTS"].split(","))


def test_every_kronos_variable_is_a_setting():
    used = set(ENV_EXAMPLE)
    for service in SERVICES:
        used |= set(service_env(service))
    for text in (ROOT / "Dockerfile").read_text(), (ROOT / "Dockerfile.gpu").read_text():
        used |= set(re.findall(r"\b(KRONOS_[A-Z0-9_]+)=", text))
    unknown = {name for name in used if name.startswith("KRONOS_")} - SETTINGS_VARS
    assert not unknown, f"not fields of Settings (a typo is silently ignored): {sorted(unknown)}"


def test_environment_values_are_valid_settings(monkeypatch):
    for service in KRONOS_SERVICES:
        for key in list(SETTINGS_VARS):
            monkeypatch.delenv(key, raising=False)
        for key, value in service_env(service).items():
            if key.startswith("KRONOS_"):
                monkeypatch.setenv(key, value)
        Settings()  # raises on a bad value


def test_api_listens_on_all_interfaces_and_is_published():
    env = service_env("api")
    assert env["KRONOS_API_HOST"] == "0.0.0.0"  # inside its container; published on loopback (above)
    assert any(port.endswith(f":{env['KRONOS_API_PORT']}:{env['KRONOS_API_PORT']}") for port in SERVICES["api"]["ports"])


def test_gpu_worker_reserves_an_nvidia_gpu_and_uses_the_cuda_image():
    gpu = SERVICES["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    assert service_env("worker-gpu")["KRONOS_DEVICE"].startswith("cuda")
    assert service_env("worker-cpu")["KRONOS_DEVICE"] == "cpu"
    assert "deploy" not in SERVICES["worker-cpu"]


def test_cuda_image_installs_requirements_cuda_before_requirements():
    text = (ROOT / "Dockerfile.gpu").read_text()
    installs = re.findall(r"pip install[^\n&]*?-r\s+(\S+)", text)
    assert installs[:2] == ["requirements-cuda.txt", "requirements.txt"], installs


def test_requirements_cuda_pins_the_same_torch_as_requirements():
    def torch_pin(path):
        return next(line for line in (ROOT / path).read_text().splitlines() if line.startswith("torch"))

    assert torch_pin("requirements.txt") == "torch==2.13.0"
    assert torch_pin("requirements-cuda.txt") == torch_pin("requirements.txt")
    assert re.search(r"^--extra-index-url https://download\.pytorch\.org/whl/cu\d+$",
                     (ROOT / "requirements-cuda.txt").read_text(), re.M)


def test_cpu_image_takes_the_cpu_torch_build():
    text = (ROOT / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert "requirements-cuda.txt" not in text


def test_flower_watches_the_same_broker():
    assert ENV_EXAMPLE["KRONOS_BROKER_URL"] == "redis://redis:6379/0"  # flower reads KRONOS_BROKER_URL


@pytest.mark.parametrize("service", KRONOS_SERVICES)
def test_commands_parse_with_the_real_cli(service):
    from tests.readme import parse_cli

    parse_cli(command(service))


# --- the artifact store and worker-only hosts (docker-compose.worker.yml, docker-compose.central.yml) ---

WORKER_COMPOSE = yaml.safe_load((ROOT / "docker-compose.worker.yml").read_text())
WORKER_SERVICES = WORKER_COMPOSE["services"]
CENTRAL_COMPOSE = yaml.safe_load((ROOT / "docker-compose.central.yml").read_text())


@pytest.mark.parametrize("service", ["api", "worker-cpu", "worker-gpu", "beat"])
def test_kronos_services_wait_for_the_artifact_bucket(service):
    assert SERVICES[service]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert SERVICES["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert SERVICES["minio"]["healthcheck"]["test"]
    assert any(v.startswith("minio-data:") for v in SERVICES["minio"]["volumes"])


def test_minio_is_the_default_artifact_store_and_its_bucket_is_the_one_created():
    url = ENV_EXAMPLE["KRONOS_ARTIFACTS_URL"]
    assert url == f"s3://{ENV_EXAMPLE['MINIO_BUCKET']}"
    assert ENV_EXAMPLE["KRONOS_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "$$MINIO_BUCKET" in " ".join(SERVICES["minio-init"]["command"])  # the container's variable, not compose's
    # Workers sign requests with MinIO's account, through the standard AWS variables only, and the
    # password has no default anywhere: compose refuses to start until .env sets it.
    assert "MINIO_ROOT_PASSWORD" not in ENV_EXAMPLE and "AWS_SECRET_ACCESS_KEY" not in ENV_EXAMPLE
    required = "${MINIO_ROOT_PASSWORD:?"
    for service in ("minio", "minio-init"):
        assert SERVICES[service]["environment"]["MINIO_ROOT_PASSWORD"].startswith(required)
    for service in KRONOS_SERVICES:
        env = service_env(service)
        assert env["KRONOS_ARTIFACTS_URL"] == url
        assert env["AWS_SECRET_ACCESS_KEY"].startswith(required) and env["AWS_ACCESS_KEY_ID"] == "${MINIO_ROOT_USER:-kronos}"
    for name in WORKER_SERVICES:
        assert worker_env(name)["AWS_SECRET_ACCESS_KEY"].startswith(required)


def worker_env(name: str) -> dict[str, str]:
    env = dict(ENV_EXAMPLE)
    env.update({k: str(v) for k, v in WORKER_SERVICES[name]["environment"].items()})
    return env


@pytest.mark.parametrize("name", ["worker-cpu", "worker-gpu-0", "worker-gpu-1"])
def test_worker_hosts_point_at_the_central_services_and_keep_no_shared_files(name):
    env = worker_env(name)
    assert env["KRONOS_BROKER_URL"].startswith("redis://${CENTRAL_HOST:?")
    assert "@${CENTRAL_HOST:?" in env["KRONOS_DATABASE_URL"] and env["KRONOS_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["KRONOS_S3_ENDPOINT_URL"].startswith("http://${CENTRAL_HOST:?")
    assert env["KRONOS_ARTIFACTS_URL"].startswith("s3://")  # models travel through the store, not a mount
    volumes = WORKER_SERVICES[name]["volumes"]
    assert volumes == ["worker-data:/data"] and set(WORKER_COMPOSE["volumes"]) == {"worker-data"}
    assert not {"redis", "postgres", "minio", "api", "beat"} & set(WORKER_SERVICES)
    unknown = {k for k in env if k.startswith("KRONOS_")} - SETTINGS_VARS
    assert not unknown
    cmd = WORKER_SERVICES[name]["command"]
    from tests.readme import parse_cli

    parse_cli([str(part) for part in cmd])


@pytest.mark.parametrize("card", [0, 1])
def test_one_gpu_worker_per_card_reserves_that_card_only(card):
    service = WORKER_SERVICES[f"worker-gpu-{card}"]
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["device_ids"] == [str(card)] and "gpu" in device["capabilities"]
    assert "count" not in device  # device_ids and count exclude each other
    # The reserved card is the only one the container sees, so CUDA numbers it 0 there.
    assert worker_env(f"worker-gpu-{card}")["KRONOS_DEVICE"] == "cuda:0"
    assert service["command"][:4] == ["kronos-jobs", "worker", "--pool", "gpu"]
    assert service["build"]["dockerfile"] == "Dockerfile.gpu"
    assert worker_env("worker-cpu")["KRONOS_DEVICE"] == "cpu" and "deploy" not in WORKER_SERVICES["worker-cpu"]


def test_central_override_publishes_the_shared_services_on_a_private_address_only():
    for service, port in (("redis", 6379), ("postgres", 5432), ("minio", 9000)):
        assert service in SERVICES
        [mapping] = CENTRAL_COMPOSE["services"][service]["ports"]
        assert mapping.startswith("${PRIVATE_ADDRESS:?") and mapping.endswith(f":{port}:{port}")
