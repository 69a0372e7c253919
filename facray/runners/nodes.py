"""``facray check-nodes``: every live Ray node has what facray needs, checked on the node itself:
facray's runtime requirements (:mod:`facray.environment`, from ``pyproject.toml`` through facray's
installed metadata), and on a node that declares GPUs, CUDA devices torch can use.

A cluster set up from a hand-kept package list once labelled with the Haar fallback because
``yuface`` was not on it, and nothing said so; a GPU node whose torch is a CPU build trains on its
CPU. Runs on the driver; one zero-CPU task per node, pinned there.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from facray.environment import describe_python, facray_requirements, unmet
from facray.runners.runtime import init_ray


@dataclass
class NodeReport:
    node_id: str
    address: str
    python: str          # "Python 3.11.9, facray ..., torch ..., ray ..."
    problems: list[str]

    def line(self) -> str:
        state = "ok" if not self.problems else "; ".join(self.problems)
        return f"node {self.node_id[:8]} ({self.address}): {self.python}: {state}"


def _check_here(requirements: list[str], gpus_declared: float) -> tuple[str, list[str]]:
    problems = unmet(requirements)
    if gpus_declared:
        import torch
        seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not seen:
            build = f"torch {torch.__version__}" + ("" if torch.version.cuda else " is a CPU build")
            problems.append(f"declares {gpus_declared:g} GPU(s) but torch sees no CUDA device ({build}): "
                            "GPU work runs on the CPU")
    return describe_python(), problems


def check_nodes(timeout_s: float = 300.0) -> list[NodeReport]:
    """One :class:`NodeReport` per live node (the requirements are the driver's facray's), all
    answers awaited together for at most ``timeout_s``. Raises ValueError when facray is not
    installed where the driver runs (a source folder has no metadata to read)."""
    import importlib.metadata
    import time
    try:
        requirements = facray_requirements()
    except importlib.metadata.PackageNotFoundError:
        raise ValueError("facray is not installed here, so its requirements cannot be read: `pip install .` "
                         "(or the wheel) where the driver runs, as cluster.yaml's setup_commands do") from None
    init_ray()
    check = ray.remote(num_cpus=0)(_check_here)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = []
    for node in nodes:
        gpus = node.get("Resources", {}).get("GPU", 0)
        # A GPU node's check holds a sliver of one GPU: Ray shows a task its GPUs only when it asks.
        options = dict(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                       num_gpus=0.01 if gpus else 0)
        pending.append(check.options(**options).remote(requirements, gpus))
    reports, deadline = [], time.monotonic() + timeout_s
    for node, ref in zip(nodes, pending):
        try:
            python, problems = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            python, problems = "?", [f"no answer within {timeout_s:g} s (its GPUs all busy, or the node is stuck)"]
        except ray.exceptions.RayError as e:
            python, problems = "?", [f"the check failed there: {str(e).splitlines()[0]}"]
        reports.append(NodeReport(node["NodeID"], node.get("NodeManagerAddress", "?"), python, problems))
    return reports
