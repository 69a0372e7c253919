"""cluster.yaml is valid for Ray's cluster launcher, and exposes the dashboard only with token auth."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _validate(config: dict) -> dict:
    """What `ray up` runs before it starts anything: defaults filled in, then the JSON schema
    (raises on a violation). Returns the filled-in config."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    filled = prepare_config(copy.deepcopy(config))
    validate_config(filled)
    return filled


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_the_launchers_schema(config):
    filled = _validate(config)
    assert filled["head_node_type"] == "head" and set(filled["available_node_types"]) == {"head", "gpu_worker"}
    assert filled["cluster_synced_files"] == []  # a default the launcher filled in: validation really ran


@pytest.mark.parametrize("mutate", [
    lambda c: c.__setitem__("max_wrokers", 4),                                    # a typo'd key
    lambda c: c["available_node_types"]["gpu_worker"].__setitem__("min_workers", "zero"),
    lambda c: c.__setitem__("head_node_type", "no_such_type"),
])
def test_a_typo_fails_validation(config, mutate):
    broken = copy.deepcopy(config)
    mutate(broken)
    with pytest.raises(Exception):  # jsonschema.ValidationError or ValueError, as `ray up` raises
        _validate(broken)


def test_dashboard_on_all_interfaces_only_with_token_auth(config):
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if command.strip().startswith("ray start"):
            pytest.fail(f"ray start without RAY_AUTH_MODE=token: {command}")
        if "ray start" in command:
            assert command.startswith("RAY_AUTH_MODE=token ray start"), command
    assert "~/.ray/auth_token" in config["file_mounts"]  # every node gets the token


def test_nodes_install_facray_itself_not_a_hand_kept_list(config):
    """Every runtime dependency reaches the nodes because they install facray's wheel (whose
    metadata is pyproject.toml's list); a package named in setup_commands would be a second list
    that drifts."""
    mounts = {k: str(v) for k, v in config["file_mounts"].items()}
    assert mounts["~/facray-dist"] == "dist"  # `make dist`: facray's wheel alone (the launcher hashes mounts)
    assert "dist:" in (CLUSTER_YAML.parent / "Makefile").read_text()
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert any("~/facray-dist/facray-*.whl" in c and "--no-deps" not in c for c in installs), installs
    declared = tomllib.loads((CLUSTER_YAML.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {Requirement(r).name for r in declared}
    for command in installs:
        named = {word.split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip("'\"") for word in command.split()}
        assert not names & named, f"setup_commands lists {names & named} by hand: {command}"


def test_installed_metadata_lists_every_pyproject_dependency():
    """What `pip install ~/facray` installs on a node is what facray's metadata requires, which
    `facray check-nodes` checks node by node: the same list as pyproject.toml's."""
    from facray.environment import facray_requirements
    declared = tomllib.loads((CLUSTER_YAML.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {str(Requirement(r)) for r in facray_requirements()} == {str(Requirement(r)) for r in declared}
