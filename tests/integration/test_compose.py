"""docker/compose.yaml through Debian's docker-compose (`config` resolves the file and needs no engine).

Integration, not unit: it runs the docker-compose tool (.ci/run installs it). The Dockerfile's checks are pure
and stay in tests/unit/test_docker.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"
SECRETS = {"TUNER_DB_PASSWORD": "from-env", "RAY_AUTH_TOKEN": "token-from-env"}


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("Debian's docker-compose is needed (.ci/run installs it: apt-get install docker-compose)")
    return subprocess.run(
        [tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def clean_env() -> dict[str, str]:
    """This process's environment without the variables compose.yaml reads."""
    names = ("TUNER_DB_PASSWORD", "RAY_AUTH_TOKEN", "TUNER_DB_PORT", "RAY_HEAD_ADDRESS")
    return {k: v for k, v in os.environ.items() if k not in names}


def services(**env: str) -> dict[str, Any]:
    """The services of the resolved compose file, with the secrets (and `env`) set."""
    done = compose_config({**clean_env(), **SECRETS, **env})
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)["services"]
    return resolved


def published(port: str | dict[str, Any]) -> str:
    """A published port as HOST_IP:PUBLISHED:TARGET (docker-compose 1 writes a string, Compose 2 a mapping)."""
    if isinstance(port, dict):
        return f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
    return str(port).removesuffix("/tcp")


def device_paths(service: dict[str, Any]) -> list[str]:
    """The host paths of a service's `devices:` (a string SOURCE:TARGET, or a mapping in Compose 2)."""
    return [d["source"] if isinstance(d, dict) else str(d).split(":")[0] for d in service.get("devices", [])]


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


def test_the_compose_file_is_valid_and_takes_the_secrets_from_the_environment() -> None:
    env = clean_env()
    done = compose_config({**env, **SECRETS})
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"postgres", "ray-head", "ray-worker", "dashboard"}
    for name in ("ray-head", "ray-worker", "dashboard"):
        environment = config["services"][name]["environment"]
        assert environment["TUNER_STORAGE"].startswith("postgresql://tuner:from-env@")
        assert environment["RAY_AUTH_MODE"] == "token" and environment["RAY_AUTH_TOKEN"] == "token-from-env"
    for name in ("postgres", "dashboard"):  # published on the host's loopback only
        assert all(published(p).startswith("127.0.0.1:") for p in config["services"][name]["ports"]), name
    assert "from-env" not in COMPOSE.read_text()  # no password or token in the file
    missing = compose_config({**env, "RAY_AUTH_TOKEN": "t"})
    assert missing.returncode != 0 and "TUNER_DB_PASSWORD" in missing.stderr
    missing = compose_config({**env, "TUNER_DB_PASSWORD": "p"})
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN" in missing.stderr


def test_one_ray_worker_per_host_holds_the_hosts_gpus_and_reaches_its_peers_over_rdma() -> None:
    config = services()
    worker, head = config["ray-worker"], config["ray-head"]
    assert worker.get("network_mode") == "host" and head.get("network_mode") == "host"
    assert worker.get("container_name"), "a fixed container name keeps `--scale ray-worker=N` from running two"
    assert "/dev/infiniband" in device_paths(worker)
    assert worker["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert "IPC_LOCK" in worker.get("cap_add", [])
    assert worker.get("deploy", {}).get("replicas", 1) == 1
    reserved = {name: gpu_reservations(service) for name, service in config.items()}
    assert {name for name, found in reserved.items() if found} == {"ray-worker"}, "only the worker holds GPUs"
    assert len(reserved["ray-worker"]) == 1 and reserved["ray-worker"][0]["driver"] == "nvidia"
    assert "--num-gpus=0" in head["entrypoint"]  # the head shares the worker's host: it must not count its GPUs
    for name in ("ray-head", "ray-worker", "dashboard"):
        assert config[name].get("init") is True, f"{name} needs an init to reap the trials' orphans"
        assert config[name].get("ipc") == "host"


def test_the_host_network_services_reach_postgres_and_the_head_through_the_hosts_addresses() -> None:
    config = services()
    for name in ("ray-head", "ray-worker"):
        assert "@127.0.0.1:5433/tuner" in config[name]["environment"]["TUNER_STORAGE"], name
    assert [published(p) for p in config["postgres"]["ports"]] == ["127.0.0.1:5433:5432"]
    dashboard = config["dashboard"]
    by_name = dashboard.get("network_mode") != "host"  # on the compose network it reaches postgres by name
    assert ("@postgres:5432/tuner" if by_name else "@127.0.0.1:5433/tuner") in dashboard["environment"]["TUNER_STORAGE"]
    assert "--address=127.0.0.1:6379" in config["ray-worker"]["entrypoint"]

    moved = services(TUNER_DB_PORT="6543", RAY_HEAD_ADDRESS="head-host:6379")
    assert [published(p) for p in moved["postgres"]["ports"]] == ["127.0.0.1:6543:5432"]
    assert "@127.0.0.1:6543/tuner" in moved["ray-head"]["environment"]["TUNER_STORAGE"]
    assert "--address=head-host:6379" in moved["ray-worker"]["entrypoint"]
