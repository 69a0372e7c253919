"""cluster.yaml is valid for Ray's cluster launcher, and exposes the dashboard only with token auth."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

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
