"""The deployment docs stay true to docker/compose.yaml."""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import COMPOSE_FILE, DOCKER_DIR, load_compose
from tests.support.cluster import REPO


def _compose_variables() -> set[str]:
    """Interpolated ``${VARIABLE}``s, and the pass-through ones (an environment key
    without a value, read from the shell or docker/.env)."""
    interpolated = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    passed = {key for key, value in raw["x-curator-env"].items() if value is None}
    return interpolated | passed


def test_env_example_lists_exactly_the_compose_variables() -> None:
    text = (DOCKER_DIR / "env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z_][A-Z0-9_]*)=", text, re.M))
    assert listed == _compose_variables()


def test_docker_readme_names_only_real_services_and_variables() -> None:
    text = (DOCKER_DIR / "README.md").read_text()
    services = set(load_compose()["services"])
    named = set(re.findall(r"--scale (\w+)=", text))
    named |= set(re.findall(r"\b(?:run --rm(?: --no-deps)?|exec) (\w+)", text))
    named |= set(re.findall(r"\b(\w+):/data", text))
    assert named and named <= services, named - services
    for variable in re.findall(r"\b((?:CURATOR|REDIS|FLOWER)_[A-Z_]+)=", text):
        assert variable in _compose_variables(), f"{variable} is not a compose.yaml setting"


def test_readme_ends_with_the_cluster_section() -> None:
    text = (REPO / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert sections[-1] == "From one machine to a cluster"
    section = text.split("## From one machine to a cluster", 1)[1]
    for needle in ("CURATOR_BROKER_URL", "--autoscale", "curator-worker flower",
                   "CURATOR_VISIBILITY_TIMEOUT", "prefetch", "docker/README.md"):
        assert needle in section, needle
