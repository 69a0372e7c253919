"""Commands that are killed or interrupted: what was finished is kept, nothing of their local Ray
is left running, and a re-run resumes (the defects issue's Kind 5). Each test runs the real
command in a subprocess with its own local Ray, as a user would."""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from facray.data.synth import write_unlabelled_faces
from facray.testing import smoke_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

FACRAY = [sys.executable, "-m", "facray.cli"]


def _wait_for(predicate, seconds: float, what: str):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _loopback(address: str) -> bool:
    """127.0.0.1, ::1, or IPv4 loopback written as IPv6 (::ffff:127.0.0.1)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _is_reaper(p: psutil.Process) -> bool:
    try:
        return "facray.runners.reaper" in " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie
        return False


def _alive(processes: list[psutil.Process]) -> bool:
    """Any of them still running (a zombie has exited: only its parent has not reaped it)."""
    def running(p):
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False
    return any(running(p) for p in processes)


@pytest.mark.slow  # ~60 s: a labelling run in its own Ray, killed halfway
def test_killed_label_keeps_its_parts_and_leaves_no_ray_behind(tmp_path):
    images = tmp_path / "faces"
    write_unlabelled_faces(images, n=300, seed=3, sizes=(96,))
    model = smoke_model(tmp_path / "model", crop_size=32)
    out = tmp_path / "labels.csv"
    cmd = [*FACRAY, "label", "--images", str(images), "--model", str(model), "--out", str(out),
           "--batch-size", "4", "--num-actors", "1", "--preprocess-actors", "1", "--crop", "full"]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = Path(str(out) + ".parts")
    seen: dict[int, psutil.Process] = {}
    try:
        listening: set[str] = set()

        def first_part_written():
            for p in _tree(driver.pid):
                seen.setdefault(p.pid, p)
                try:
                    listening.update(c.laddr.ip for c in p.net_connections(kind="inet") if c.status == "LISTEN")
                except psutil.Error:
                    pass
            return any(parts.glob("*/*.parquet"))
        _wait_for(first_part_written, 240, "the first part file")
    finally:
        driver.kill()  # SIGKILL: no handler runs in the driver
    driver.wait()
    # A local run's Ray (GCS, raylet, agents, workers) listens on loopback only.
    assert listening and all(_loopback(a) for a in listening), listening
    kept = pd.concat(pd.read_parquet(p) for p in parts.glob("*/*.parquet"))
    assert 0 < len(kept) < 300
    # The reaper (started with the local Ray) stops every process the driver left behind.
    ray_processes = [p for p in seen.values() if not _is_reaper(p)]
    assert ray_processes, "the driver started no Ray processes?"
    _wait_for(lambda: not _alive(ray_processes), 30, "the killed run's Ray processes to exit")
    # The re-run labels only what the killed run had not finished.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"reused {len(kept)}" in done.stdout and len(pd.read_csv(out)) == 300
    assert not parts.exists()


@pytest.mark.slow  # ~40 s: a training run in its own Ray
def test_ctrl_c_twice_during_training_ends_with_one_line_and_exit_130(tmp_path, prepared_small):
    cmd = [*FACRAY, "train", "--prepared", str(prepared_small), "--out", str(tmp_path / "run"),
           "--model", "abm-trunk-tiny", "--epochs", "300", "--image-size", "32", "--batch-size", "4",
           "--cpus-per-worker", "0.5"]
    # SIGINT at its default in the child, whatever this process's disposition is (an ignored
    # SIGINT is inherited, and Python then never raises KeyboardInterrupt).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "epoch 2/300" in line:
            break
    children = _tree(proc.pid)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "facray: interrupted; finished work is kept: re-run the same command to resume"
    # The driver's own output has no traceback. (Lines from Ray's actors carry their "(Name pid=N)"
    # prefix: with the test session's Ray running beside this one, Ray Train's PlacementGroupCleaner
    # cannot tell which of the two instances to query and says so; a user's machine has one.)
    driver_lines = [line for line in err.splitlines() if " pid=" not in line]
    assert not any("Traceback" in line for line in driver_lines)
    assert list((tmp_path / "run" / "ray_results").glob("*/checkpoint_*")), "the last checkpoint is kept"
    _wait_for(lambda: not _alive(children), 60, "the interrupted run's Ray processes to exit")
