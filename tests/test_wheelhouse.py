"""tools/wheelhouse.py: which packages a target gets, and the offline install from split parts."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.wheelhouse import (INSTALL_SH, PART_SUFFIX, keep, split_large, target_environment, target_interpreter,
                              write_checksums)


def _item(name: str, version: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


REPORT = {"install": [
    _item("facray", "1.0", "torch>=2", "ray[train]>=2", "numpy", "yuface>=2023.5; python_version < '3.12'"),
    _item("torch", "2.5", "nvidia-cublas-cu12; platform_system == 'Linux'", "numpy", "filelock"),
    _item("ray", "2.60", "filelock", "pandas; extra == 'train'", "aiohttp; extra == 'default'"),
    _item("numpy", "2.0"), _item("filelock", "3.0"), _item("nvidia-cublas-cu12", "12.0"), _item("pandas", "2.2"),
    _item("aiohttp", "3.9"), _item("yuface", "2023.5"),
]}


def test_excluded_packages_go_with_what_only_they_need():
    kept = keep(REPORT, "facray", target_environment("3.12"), exclude={"torch"})
    # numpy and filelock stay (others need them too); torch's CUDA libraries go; yuface's marker
    # excludes it on 3.12; ray[train] brings pandas, not ray[default]'s aiohttp.
    assert kept == {"facray": "1.0", "ray": "2.60", "numpy": "2.0", "filelock": "3.0", "pandas": "2.2"}
    everything = keep(REPORT, "facray", target_environment("3.11"), exclude=set())
    assert set(everything) == {"facray", "torch", "ray", "numpy", "filelock", "nvidia-cublas-cu12", "pandas", "yuface"}


def _wheel(folder: Path, payload: bytes) -> Path:
    """A minimal valid wheel of a package named facray holding one module with ``payload``."""
    module = b"PAYLOAD = " + repr(base64.b64encode(payload).decode()).encode() + b"\n"
    files = {"facray_probe.py": module,
             "facray-0.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: facray\nVersion: 0.0.1\n",
             "facray-0.0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n"}
    record = [f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b'=').decode()},{len(d)}"
              for n, d in files.items()] + ["facray-0.0.1.dist-info/RECORD,,"]
    files["facray-0.0.1.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = folder / "facray-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_split_wheels_are_joined_checked_and_installed_offline(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    payload = os.urandom(20_000)  # incompressible: the wheel is over the part size
    wheel = _wheel(house, payload)
    write_checksums(house)
    parts = split_large(house, part_bytes=10_000)
    assert len(parts) == 3 and not wheel.exists() and all(PART_SUFFIX in p.name for p in parts)
    assert max(p.stat().st_size for p in parts) <= 10_000
    (house / "install.sh").write_text(INSTALL_SH.format(suffix=PART_SUFFIX))
    target = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "PIP_NO_INPUT": "1", "PIP_CONFIG_FILE": os.devnull}
    done = subprocess.run(["sh", str(house / "install.sh"), "--quiet", "--no-deps", "--target", str(target)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"PAYLOAD = {base64.b64encode(payload).decode()!r}" in (target / "facray_probe.py").read_text()

    # A corrupted part is caught before pip sees it.
    wheel.unlink()
    parts[1].write_bytes(b"x" + parts[1].read_bytes()[1:])
    done = subprocess.run(["sh", str(house / "install.sh"), "--no-deps", "--target", str(tmp_path / "other")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "FAILED" in (done.stdout + done.stderr)
    assert not (tmp_path / "other").exists()


def test_the_resolving_interpreter_must_be_the_targets_version():
    """pip evaluates markers with the Python it runs on: another version would resolve wrongly."""
    with pytest.raises(SystemExit, match="needs a Python 3.99 interpreter"):
        target_interpreter("3.99", None)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(SystemExit, match=f"is Python {here}, not 3.99"):
        target_interpreter("3.99", sys.executable)
    assert target_interpreter(here, sys.executable) == sys.executable


def test_a_requirement_the_resolution_left_out_is_an_error_not_a_gap():
    """pip evaluates markers on the machine it runs on: resolved elsewhere, torch's CUDA libraries
    would be missing from the report, and the wheelhouse would fail offline on the cluster."""
    report = {"install": [item for item in REPORT["install"] if item["metadata"]["name"] != "nvidia-cublas-cu12"]}
    with pytest.raises(SystemExit, match="the target needs nvidia-cublas-cu12"):
        keep(report, "facray", target_environment("3.11"), exclude=set())
    assert "torch" in keep(REPORT, "facray", target_environment("3.11"), exclude=set())
