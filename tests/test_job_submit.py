"""``ray job submit`` end to end: a local head on 127.0.0.1, jobs/label.py --smoke-test, the CSV."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]  # ~110 s: a Ray head
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args, env, timeout=120, check=True):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray_bin, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=check)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                out[int(entry)] = (ppid, cmd)
            except (OSError, ValueError, IndexError):
                pass
    return out


def stop_cluster(temp_dir: str) -> None:
    """Stop only the head this test started (``ray stop`` would stop every Ray on the machine):
    processes whose command line names its temp dir, and all their descendants."""
    procs = _processes()
    doomed = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd and pid != os.getpid()}
    grew = True
    while grew:
        kids = {pid for pid, (ppid, _) in procs.items() if ppid in doomed} - doomed
        doomed |= kids
        grew = bool(kids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in doomed:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


def _run_job(address: str, env: dict, *entrypoint: str, attempts: int = 20) -> tuple[str, str]:
    """Submit ``entrypoint`` with the repo as working dir; wait for it; (final status, its logs)."""
    for attempt in range(attempts):  # the job agent needs a few seconds after `ray start`
        submitted = _ray("job", "submit", "--address", address, "--working-dir", ".", "--no-wait", "--",
                         *entrypoint, env=env, check=False)
        found = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr)
        if submitted.returncode == 0 and found:
            break
        time.sleep(3)
    assert found, submitted.stderr[-2000:]
    job_id = found.group(0)
    status = ""
    for _ in range(120):
        status = _ray("job", "status", "--address", address, job_id, env=env).stdout
        if re.search(r"succeeded|failed|stopped", status, re.IGNORECASE):
            break
        time.sleep(2)
    return status, _ray("job", "logs", "--address", address, job_id, env=env, check=False).stdout


def test_ray_job_submit_label_smoke_test(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # Token auth stays on, as on a real cluster. A fresh machine has no ~/.ray/auth_token, so the
    # test makes one exactly as the README tells a new user to (`ray get-auth-token --generate`,
    # which always writes ~/.ray/auth_token), in a home of its own: the user's is never touched.
    env["RAY_AUTH_MODE"] = "token"
    env["HOME"] = str(tmp_path / "home")
    _ray("get-auth-token", "--generate", env=env)
    assert (tmp_path / "home" / ".ray" / "auth_token").stat().st_size > 0
    # Every port free, not Ray's defaults: another Ray on this machine (a user's, a CI job's)
    # may hold them, and the dashboard agent then fails to start and no job can be submitted.
    gcs, dashboard, *agent_ports = (_free_port() for _ in range(8))
    port_flags = [f"--{flag}={port}" for flag, port in zip(
        ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
         "runtime-env-agent-port", "node-manager-port", "object-manager-port"), agent_ports)]
    address = f"http://127.0.0.1:{dashboard}"
    out = tmp_path / "labels.csv"
    temp_dir = tempfile.mkdtemp(prefix="facray-ray-", dir="/tmp")  # short: Unix socket paths max 107
    try:
        _ray("start", "--head", "--num-cpus", "2", "--port", str(gcs), "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard), "--temp-dir", temp_dir,
             "--disable-usage-stats", *port_flags, env=env)
        status, logs = _run_job(address, env, "python", "jobs/label.py", "--smoke-test", "--out", str(out))
        assert re.search(r"succeeded", status, re.IGNORECASE), f"{status}\n{logs[-3000:]}"
        assert "labelled 8 new image(s)" in logs
        # Training under `ray job submit`: every epoch line reaches the job log once, though the
        # epochs of the smoke run come well within Ray's 5 s deduplication window; Ray Train's
        # per-report internals do not (they are --verbose's).
        status, logs = _run_job(address, env, "python", "jobs/train.py", "--smoke-test", "--out",
                                str(tmp_path / "train"))
        assert re.search(r"succeeded", status, re.IGNORECASE), f"{status}\n{logs[-3000:]}"
        for epoch in (1, 2):
            assert len(re.findall(rf"\[rank 0\] epoch {epoch}/2: loss", logs)) == 1, logs[-3000:]
        assert "Checkpoint successfully created" not in logs and "Reporting training result" not in logs
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    rows = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert len(rows) == 8 and rows.path.is_unique
    assert rows.error.notna().sum() == 2 and rows.loc[rows.error.isna(), "Male_prob"].between(0, 1).all()
