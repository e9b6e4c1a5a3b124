"""docker/compose.yaml checks with Debian's docker-compose (`config` needs no engine; nothing is built here)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.fail("Debian's docker-compose is needed (.ci/run installs it: apt-get install docker-compose)")
    return subprocess.run(
        [tool, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_the_compose_file_is_valid_and_takes_the_secrets_from_the_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_DB_PASSWORD", "RAY_AUTH_TOKEN")}
    done = compose_config({**env, "TUNER_DB_PASSWORD": "from-env", "RAY_AUTH_TOKEN": "token-from-env"})
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {"postgres", "ray-head", "ray-worker", "dashboard"}
    for name in ("ray-head", "ray-worker", "dashboard"):
        environment = config["services"][name]["environment"]
        assert environment["TUNER_STORAGE"].startswith("postgresql+psycopg2://tuner:")
        assert environment["RAY_AUTH_MODE"] == "token" and environment["RAY_AUTH_TOKEN"] == "token-from-env"
    assert str(config["services"]["dashboard"]["ports"][0]).startswith("127.0.0.1:")  # on loopback only
    assert "from-env" not in COMPOSE.read_text()  # no password or token in the file
    missing = compose_config({**env, "RAY_AUTH_TOKEN": "t"})
    assert missing.returncode != 0 and "TUNER_DB_PASSWORD" in missing.stderr
    missing = compose_config({**env, "TUNER_DB_PASSWORD": "p"})
    assert missing.returncode != 0 and "RAY_AUTH_TOKEN" in missing.stderr
