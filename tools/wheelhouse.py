"""A wheelhouse of facray and everything it needs, for a cluster without internet (an air-gapped
GPU cluster, a common HPC setup) and for a target Python other than this machine's. Built on Linux
x86-64 for Linux x86-64 (pip evaluates platform markers on the machine it runs on).

    make wheelhouse PY=3.12                      # -> wheelhouse/ (or: python tools/wheelhouse.py --python 3.12)
    make wheelhouse PY=3.12 EXCLUDE=torch,torchvision   # the target already has these (and what only they need)
    # copy wheelhouse/ over, then on every node:
    sh wheelhouse/install.sh                     # pip install --no-index --find-links, nothing downloaded

How: pip builds facray's wheel from this folder (its requirements are pyproject.toml's: no second
list), resolves it for the target without downloading (``pip install --dry-run --report``, wheels
for the target's ``--platform`` tags), drops the excluded packages and whatever only they pull in,
then downloads the rest (``pip download --no-deps``, wheels only). pip evaluates requirement
markers (``yuface; python_version < "3.12"``) with the Python it runs on, whatever
``--python-version`` says, so the resolving pip is the target version's own interpreter
(``python3.12`` on the PATH, or ``--interpreter``). Files over ``--part-mb`` are
split into numbered parts (a transfer limit: the GPU machines facray is measured on take 64 MiB a
call); ``install.sh`` joins them, checks every wheel's SHA-256 and installs. Needs pip and
``packaging`` and, once, the package index.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PART_SUFFIX = ".part-"
# manylinux tags pip accepts for a Linux x86-64 target, newest first (torch and Ray ship 2_28 wheels).
LINUX_X86_64 = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64")

INSTALL_SH = """#!/bin/sh
# Install facray from this wheelhouse, offline: join split wheels, check SHA-256, pip install.
# Usage: sh install.sh [pip install options, e.g. --user]; PYTHON=python3.12 sh install.sh picks the Python.
set -eu
cd "$(dirname "$0")"
for first in *{suffix}000; do
    [ -e "$first" ] || continue
    whole="${{first%{suffix}000}}"
    cat "$whole"{suffix}* > "$whole"
done
sha256sum -c --quiet SHA256SUMS
"${{PYTHON:-python3}}" -m pip install --no-index --find-links . "$@" facray
"""


def target_environment(python: str, platform_machine: str = "x86_64") -> dict:
    """PEP 508 marker values of the target (Linux, CPython ``python``, e.g. "3.12")."""
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "sys_platform": "linux", "os_name": "posix",
            "platform_system": "Linux", "platform_machine": platform_machine, "platform_release": "",
            "platform_version": "", "implementation_version": f"{python}.0", "extra": ""}


def keep(report: dict, root: str, environment: dict, exclude: set[str]) -> dict[str, str]:
    """name -> version of the packages ``root`` needs on the target, from a ``pip install
    --dry-run --report`` resolution, without those in ``exclude`` and what only they need.

    The walk follows each package's ``requires_dist`` under the target's markers, with the extras
    the requiring package asked for (``ray[train]`` follows ray's ``extra == "train"`` entries)."""
    found = {canonicalize_name(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    excluded = {canonicalize_name(name) for name in exclude}
    missing = []
    kept: dict[str, str] = {}
    todo = [(canonicalize_name(root), frozenset())]
    seen: set[tuple[str, frozenset]] = set()
    while todo:
        name, extras = todo.pop()
        if name not in found and name not in excluded:
            missing.append(name)  # pip resolved markers another way than the target would
        if (name, extras) in seen or name in excluded or name not in found:
            continue
        seen.add((name, extras))
        meta = found[name]
        kept[name] = meta["version"]
        for text in meta.get("requires_dist") or []:
            req = Requirement(text)
            applies = req.marker is None or any(
                Marker(str(req.marker)).evaluate({**environment, "extra": extra}) for extra in ("", *extras))
            if applies:
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    if missing:
        raise SystemExit(f"wheelhouse: the target needs {', '.join(sorted(set(missing)))}, which pip's resolution "
                         "left out: it evaluated markers for another machine (build on the target's OS and "
                         "architecture)")
    return kept


def split_large(folder: Path, part_bytes: int) -> list[Path]:
    """Split every file in ``folder`` larger than ``part_bytes`` into ``NAME.part-000``, ... (the
    whole file removed); returns the parts written."""
    parts = []
    for path in sorted(folder.glob("*.whl")):
        if path.stat().st_size <= part_bytes:
            continue
        with path.open("rb") as f:
            for i, chunk in enumerate(iter(lambda: f.read(part_bytes), b"")):
                part = path.with_name(f"{path.name}{PART_SUFFIX}{i:03d}")
                part.write_bytes(chunk)
                parts.append(part)
        path.unlink()
    return parts


def write_checksums(folder: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(folder.glob("*.whl"))]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def target_interpreter(python: str, given: str | None) -> str:
    """The interpreter whose pip resolves for Python ``python``: ``given``, else ``python3.12``
    (for "3.12") on the PATH. Raises SystemExit with what to do when it is missing or another
    version."""
    exe = given or shutil.which(f"python{python}")
    if not exe:
        raise SystemExit(f"wheelhouse: needs a Python {python} interpreter (pip evaluates requirement markers with "
                         f"the Python it runs on): install python{python} or pass --interpreter PATH")
    ran = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                         text=True)
    found = ran.stdout.strip()
    if ran.returncode != 0:  # e.g. a pyenv shim for a version not selected
        raise SystemExit(f"wheelhouse: {exe} does not run ({ran.stderr.strip()[:200]}): pass --interpreter PATH")
    if found != python:
        raise SystemExit(f"wheelhouse: {exe} is Python {found}, not {python}")
    return exe


def build(out: Path, python: str, platforms: tuple[str, ...], exclude: set[str], part_mb: float,
          interpreter: str | None = None) -> None:
    exe = target_interpreter(python, interpreter)
    if platforms == LINUX_X86_64 and (sys.platform != "linux" or platform.machine() != "x86_64"):
        # pip evaluates sys_platform / platform_machine markers on this machine, not the target's.
        raise SystemExit(f"wheelhouse: builds for Linux x86-64 on Linux x86-64 only (this is {sys.platform} "
                         f"{platform.machine()}): pip reads requirement markers from the machine it runs on")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"wheelhouse: {out} is not empty: remove it first (two builds in one folder would mix "
                         "their wheels, and install.sh would pick the newest)")

    def pip(*args: str) -> None:
        subprocess.run([exe, "-m", "pip", *args], check=True)

    out.mkdir(parents=True, exist_ok=True)
    pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(REPO))
    wheel = max(out.glob("facray-*.whl"), key=lambda p: p.stat().st_mtime)
    target = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
              *[f"--platform={p}" for p in platforms]]
    with tempfile.TemporaryDirectory() as tmp:
        report_file = Path(tmp) / "report.json"
        pip("install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report_file),
            "--target", str(Path(tmp) / "target"), *target, str(wheel))
        report = json.loads(report_file.read_text())
    wanted = keep(report, "facray", target_environment(python), exclude)
    pins = [f"{name}=={version}" for name, version in sorted(wanted.items()) if name != "facray"]
    pip("download", "--no-deps", "--quiet", "--dest", str(out), *target, *pins)
    write_checksums(out)
    parts = split_large(out, int(part_mb * 1e6))
    (out / "install.sh").write_text(INSTALL_SH.format(suffix=PART_SUFFIX))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wheelhouse {out}: {len(pins) + 1} packages for Python {python} ({', '.join(platforms[:1])}), "
          f"{size / 1e6:.0f} MB in {len(list(out.iterdir()))} files ({len(parts)} parts of <= {part_mb:g} MB)"
          + (f"; left out: {', '.join(sorted(exclude))} and what only they need" if exclude else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                   help="target Python, e.g. 3.12 (default: this one)")
    p.add_argument("--out", type=Path, default=REPO / "wheelhouse")
    p.add_argument("--platform", action="append", help=f"pip platform tag(s) (default: Linux x86-64: {LINUX_X86_64})")
    p.add_argument("--exclude", default="", help="comma list of packages the target has already (torch,torchvision)")
    p.add_argument("--part-mb", type=float, default=60.0, help="split files larger than this (MB)")
    p.add_argument("--interpreter", help="the target Python's interpreter (default: python<version> on the PATH)")
    args = p.parse_args(argv)
    exclude = {name.strip() for name in args.exclude.split(",") if name.strip()}
    build(args.out, args.python, tuple(args.platform or LINUX_X86_64), exclude, args.part_mb, args.interpreter)
    return 0


if __name__ == "__main__":
    sys.exit(main())
