"""tests/docker: the docker-compose stack on a Docker engine (testcontainers'
DockerCompose), marked `docker`.

Where no Docker engine answers, every test here is skipped with the reason
("no Docker engine: ..."), decided once at collection; nothing pretends to
have run.  The marker is registered here until pyproject.toml lists it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.errors import InfraError
from harness.stack.compose import PROJECT, ComposeBackend, compose_files, require_docker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TOPOLOGY = os.environ.get("MSDB_COMPOSE_TOPOLOGY", "single")


def _no_docker_reason() -> str | None:
    try:
        require_docker()
    except InfraError as e:
        return f"no Docker engine: {e}"
    try:
        import testcontainers.compose  # noqa: F401  (only whether it imports)
    except ImportError:
        return "no Docker engine test support: testcontainers is not installed (pip install 'testcontainers>=4')"
    return None


NO_DOCKER = _no_docker_reason()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.docker)
            if NO_DOCKER:
                item.add_marker(pytest.mark.skip(reason=NO_DOCKER))


@pytest.fixture(scope="session")
def compose_stack(tmp_path_factory):
    """The compose stack, up once for the session (`up --build --wait`), and its
    stack.json written by ComposeBackend; down with its volumes afterwards."""
    from testcontainers.compose import DockerCompose

    state_dir = tmp_path_factory.mktemp("compose-state")
    old = os.environ.get("COMPOSE_PROJECT_NAME")
    os.environ["COMPOSE_PROJECT_NAME"] = PROJECT       # the project ComposeActions address
    stack = DockerCompose(context=str(ROOT), compose_file_name=compose_files(TOPOLOGY),
                          build=True, wait=True)
    try:
        stack.start()
        backend = ComposeBackend(state_dir, TOPOLOGY, project_dir=ROOT)
        backend.adopt()
        yield backend
    finally:
        try:
            stack.stop(down=True)
        finally:
            if old is None:
                os.environ.pop("COMPOSE_PROJECT_NAME", None)
            else:
                os.environ["COMPOSE_PROJECT_NAME"] = old
            shutil.rmtree(state_dir, ignore_errors=True)
