"""Stop a local Ray left behind by a driver that died without shutting it down (SIGKILL, OOM killer).

``python -m facray.runners.reaper DRIVER_PID`` runs beside a driver that started a local Ray
(:func:`facray.runners.runtime.init_ray` starts it). While the driver lives it notes every process below it
once a second (GCS, raylet, the dashboard and runtime-env agents, workers); when the driver is gone
it kills those still running. Measured without it: after ``kill -9`` of a labelling driver, Ray's
dashboard and runtime-env agents were still alive a minute later. A clean exit leaves nothing for
it to do: ``ray.shutdown`` has stopped them all.

psutil identifies a process by pid *and* start time, so a pid the system has since reused for
another process is never killed.
"""
from __future__ import annotations

import sys
import time

import psutil

POLL_SECONDS = 1.0
GRACE_SECONDS = 2.0  # let Ray's own shutdown finish first on a clean exit


def watch(driver_pid: int) -> int:
    """Block until ``driver_pid`` exits, then kill what it left. Returns how many were killed."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    me = psutil.Process().pid
    seen: dict[int, psutil.Process] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.Error:
            pass
        time.sleep(POLL_SECONDS)
    time.sleep(GRACE_SECONDS)
    left = [p for p in seen.values() if p.is_running()]
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    return len(left)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
