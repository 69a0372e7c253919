"""What facray needs installed, checked in the running Python: its runtime requirements (read from
facray's installed metadata, which pip wrote from ``pyproject.toml``: one source, no hand-kept
list) and the extras they name, met or not. Pure Python (``importlib.metadata`` and ``packaging``);
:mod:`facray.runners.nodes` runs it on every node of a Ray cluster.
"""
from __future__ import annotations

import importlib.metadata as metadata
import platform

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What a missing optional-in-practice package costs, said beside it.
CONSEQUENCES = {
    "yuface": "face crops fall back to OpenCV's Haar cascade (no landmarks, more misses)",
    "opencv-python-headless": "no image decoding or face detection",
    "aiohttp": "ray[default] incomplete: no dashboard, no `ray job submit`, Ray Train's state polling fails",
}


def facray_requirements() -> list[str]:
    """facray's runtime requirements as PEP 508 strings (``"torch<3,>=2.2"``, ``"yuface>=2023.5;
    python_version < '3.12'"``), optional extras (``dev``) left out. Raises
    ``PackageNotFoundError`` when facray is not installed here (run from a source folder only)."""
    return [text for text in metadata.requires("facray") or []
            if not (Requirement(text).marker and "extra" in str(Requirement(text).marker))]


def unmet(requirements: list[str]) -> list[str]:
    """The requirements this Python does not meet, one line each ("yuface missing (needs
    >=2023.5): face crops fall back to ..."; "torch 2.1.0 (needs <3,>=2.2)"). A requirement whose
    marker does not apply here (``python_version < '3.12'`` on 3.12) is skipped; the extras a
    requirement names (``ray[default,train]``) are checked one level down, as pip installs them."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(_line(req, "missing"))
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(_line(req, version))
        for extra in sorted(req.extras):
            problems += [f"{p} (from {req.name}[{extra}])" for p in unmet(_extra_requirements(req.name, extra))]
    return problems


def _extra_requirements(name: str, extra: str) -> list[str]:
    """What ``name[extra]`` adds to ``name``'s own requirements, with the extra's marker applied."""
    added = []
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate({"extra": extra}) and not req.marker.evaluate({"extra": ""}):
            req.marker = None
            added.append(str(req))
    return added


def _line(req: Requirement, found: str) -> str:
    need = f"needs {req.specifier}" if req.specifier else "needed"
    consequence = CONSEQUENCES.get(canonicalize_name(req.name))
    return f"{req.name} {found} ({need})" + (f": {consequence}" if consequence else "")


def describe_python() -> str:
    """``Python 3.11.9, facray 0.9.0, torch 2.14.1, ray 2.60.0`` (what is installed here)."""
    versions = []
    for name in ("facray", "torch", "ray"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} not installed")
    return ", ".join([f"Python {platform.python_version()}", *versions])
