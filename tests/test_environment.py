"""facray.environment: facray's requirements, and which of them this Python does not meet (what
`facray check-nodes` runs on every node)."""
from __future__ import annotations

import importlib.metadata as metadata

import pytest

from facray.environment import describe_python, facray_requirements, unmet


def test_met_requirements_say_nothing():
    assert unmet(facray_requirements()) == []  # this environment is facray's own


@pytest.mark.parametrize("requirement, line", [
    ("nosuchpackage-facray>=1", "nosuchpackage-facray missing (needs >=1)"),
    ("torch>=99", f"torch {metadata.version('torch')} (needs >=99)"),
    # with what it costs, for the packages whose absence changes results rather than failing
    ("opencv-python-headless>=99", f"opencv-python-headless {metadata.version('opencv-python-headless')} "
                                   "(needs >=99): no image decoding or face detection"),
])
def test_each_unmet_requirement_is_one_line(requirement, line):
    assert unmet([requirement]) == [line]


def test_markers_for_another_python_are_skipped_and_extras_are_followed():
    assert unmet(["nosuchpackage-facray>=1; python_version < '3.0'"]) == []
    # pandas[performance] asks for numexpr, bottleneck...: checked one level down, named with the extra.
    found = unmet(["pandas[performance]>=2"])
    missing = [n for n in ("numexpr", "bottleneck", "numba") if not _installed(n)]
    assert all(any(f.startswith(f"{n} missing") and f.endswith("(from pandas[performance])") for f in found)
               for n in missing), found


def test_facray_requirements_leave_out_the_dev_extra():
    names = {r.split(";")[0] for r in facray_requirements()}
    assert not any(n.startswith(("pytest", "moto")) for n in names) and any(n.startswith("ray[") for n in names)
    assert describe_python().startswith("Python 3.") and "torch " in describe_python()


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False
