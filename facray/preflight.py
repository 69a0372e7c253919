"""Checks made on the driver before Ray starts any work: what a run depends on and can be checked
here is checked here, so a run never trains for an hour and then fails on something that was
wrong from the start. Each failure is a :class:`PreflightError`: one line naming the thing and
the way out (the CLI prints it without a traceback).

Pure Python on the driver; MLflow is imported only by :func:`check_tracking_store`, and nothing
here imports torch (the label driver stays torch-free).
"""
from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import subprocess
import time
import zipfile
from pathlib import Path

from facray import storage


class PreflightError(ValueError):
    """Something a run depends on is unusable; the message names it and the fix."""


@contextlib.contextmanager
def _answer_quickly(seconds: int = 10):
    """MLflow's HTTP client retries a dead server for minutes (291 s measured against a closed
    port): during the check, one try with a short timeout."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(seconds)}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _first_line(error: Exception) -> str:
    """The cause in a few words: an OS error's ``[Errno N] reason`` when the text holds one
    (requests wraps it in three layers), else the first line."""
    text = str(error).strip()
    errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", text)
    if errno:
        return errno.group(0).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def check_tracking_store(tracking_uri: str, experiment: str | None = None, read_only: bool = False) -> None:
    """The MLflow store at ``tracking_uri`` answers (within ~10 s), and ``experiment``, if it
    exists, is not deleted (MLflow refuses to log into a deleted experiment, which a run would
    only find after training). An absent experiment is fine: the run creates it. ``read_only``
    (a command that only reads, e.g. ``label --model models:/...``): a SQLite store must exist
    already; MLflow would create an empty one. A store and experiment that passed within the last
    minute in this process are not asked again (a command checks before Ray starts, then again
    where it opens its MLflow run)."""
    import mlflow
    key = (tracking_uri, experiment, read_only)
    if time.monotonic() - _passed.get(key, -math.inf) < RECHECK_AFTER_S:
        return
    if read_only and tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise PreflightError(f"MLflow tracking store {tracking_uri}: no such file; give the store the model "
                                 "was registered in (e.g. sqlite:///RUN/mlflow.db)")
    with _answer_quickly():
        try:
            client = mlflow.MlflowClient(tracking_uri)
            found = client.get_experiment_by_name(experiment) if experiment else None
            if not experiment:
                client.search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - any failure to reach the store is the same refusal
            raise PreflightError(f"MLflow tracking store {tracking_uri}: cannot use it ({_first_line(e)}); start "
                                 "or fix it, or pass another --tracking-uri") from None
    if found is not None and found.lifecycle_stage == "deleted":
        raise PreflightError(
            f"MLflow experiment {experiment!r} in {tracking_uri} is deleted; restore it "
            f"(MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} mlflow experiments restore --experiment-id {found.experiment_id}) "
            "or pass --experiment NEW_NAME")
    _passed[key] = time.monotonic()


RECHECK_AFTER_S = 60.0
_passed: dict[tuple, float] = {}  # (uri, experiment, read_only) -> when it last passed


def check_generator_file(path: str) -> None:
    """``path`` is a TorchScript module (what ``torch.jit.save`` writes: a zip with a ``code/``
    folder), checked without torch and without unpickling anything. A raw pickle or a
    ``torch.save`` checkpoint (a zip without code) is refused before Ray starts."""
    p = Path(path)
    if not p.is_file():
        raise PreflightError(f"{path}: generator file not found")
    how = ("facray needs a TorchScript generator z -> image in [-1, 1] (N, 3, H, W): save one with "
           "torch.jit.script(G).save(PATH) or torch.jit.trace(G, z).save(PATH)")
    if not zipfile.is_zipfile(p):
        raise PreflightError(f"{path}: not a TorchScript file (a raw pickle or another format); {how}")
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    if not any("/code/" in n for n in names):
        raise PreflightError(f"{path}: a torch.save checkpoint, not a TorchScript module; {how}")


def check_writable(location: str) -> None:
    """A folder (local, or a prefix on an object store) where a run will write: created if
    missing, and a probe file written and removed there. Refuses with the location and the
    reason (no space, no permission, an unreachable endpoint) before any work starts."""
    probe = storage.join(location, f".facray-write-probe-{os.getpid()}")
    try:
        storage.write_bytes(probe, b"")
        fs, path = storage.filesystem(probe)
        fs.delete_file(path)
    except OSError as e:
        raise PreflightError(f"{location}: cannot write there ({_first_line(e)}); check the path, "
                             "its permissions and free space, or the store's endpoint and credentials") from None
    note_job_upload(location)


def note_job_upload(location: str) -> None:
    """Print a note when ``location`` (where a run writes) lies inside the current folder, a git
    work tree, and is not git-ignored: ``ray job submit --working-dir .`` from here uploads every
    file Ray's ``.gitignore``/``.rayignore`` handling does not leave out, run folders included
    (checkpoints, Parquet shards: often gigabytes). Silent elsewhere (outside a repository, on an
    object store, or when git is missing)."""
    if storage.is_uri(location):
        return
    here, target = Path.cwd().resolve(), Path(location).resolve()
    if target == here or here not in target.parents or not (here / ".git").exists():
        return
    try:
        ignored = subprocess.run(["git", "check-ignore", "-q", str(target)], cwd=here, capture_output=True,
                                 timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return
    if not ignored:
        rel = target.relative_to(here)
        print(f"note: {rel} is inside {here} and not in its .gitignore: `ray job submit --working-dir .` from "
              f"here would upload it; add {rel.parts[0]}/ to .gitignore or .rayignore, or write outside", flush=True)


def cgroup_memory_limit(proc_cgroup: str | Path = "/proc/self/cgroup",
                        root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The memory limit (bytes) of this process's own cgroup, the tightest along its path (v1
    ``memory.limit_in_bytes`` or v2 ``memory.max``), or None when there is none. Ray reads only the
    limit at the cgroup root (a container's); a process started inside a limited sub-group (a
    Slurm job, a ``cgexec``, a shell moved into a group) and the local Ray it starts live under
    this one instead."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, name = Path(root) / "memory", "memory.limit_in_bytes"
        elif controllers == "":
            base, name = Path(root), "memory.max"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):
            f = base.joinpath(*parts[:depth]) / name
            try:
                text = f.read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2 ** 60:  # "max" or 2^63 - page: no limit
                limits.append(float(text))
    return min(limits) if limits else None
