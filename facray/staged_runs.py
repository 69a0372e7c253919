"""Run folders on object storage (``--out s3://bucket/runs/x``), for clusters whose nodes share no
filesystem, only a bucket. Pure Python + pyarrow (:mod:`facray.storage`).

The driver works in a local copy of the run folder (:func:`staging_root`), as MLflow, pandas and
``torch.load`` need files: :meth:`StagedRunFolder.pull` makes the copy the bucket's, the command
works in it, :meth:`StagedRunFolder.push` makes the bucket the copy's. What the other nodes must
reach while the command runs never goes through the copy:

- Ray Train's and Tune's storage (checkpoints, experiment state): ``<uri>/ray_results``,
  ``<uri>/tune``, given to Ray as a pyarrow filesystem, so an S3-compatible server
  (``AWS_ENDPOINT_URL``) works; a resumed run finds its checkpoints there from any node.
- The workers' failure notes (:meth:`RunFolder.write_failure`), written straight to ``<uri>``.
- A sweep's trials: each is a staged run folder of its own under ``<uri>/trials/``, pulled and
  pushed by its trial on whichever node runs it.

One driver at a time per run, as for a run folder on disk; the bucket needs no locking, since
every file facray writes is written whole.
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from facray import storage
from facray.runs import FAILURE_NOTES, INJECTED_FAILURE, TRAINED_OUTPUTS, RunFolder

# On the object storage only, never in the local copy (so a push, which makes the bucket the
# copy's, leaves them): what Ray and the workers write there themselves while a command runs (Ray
# Train's and Tune's storage, failure notes, the --fail-at-epoch marker)...
_REMOTE_ONLY = frozenset({"ray_results", "tune", FAILURE_NOTES, INJECTED_FAILURE})
# ...a sweep's trials, run folders of their own that each trial pulls and pushes; and, in the
# local copy only, what the copy and the bucket held when last in step (storage.mirror's record).
_SYNCED_FILE = ".facray-synced.json"
_NOT_MIRRORED = _REMOTE_ONLY | {"trials", _SYNCED_FILE}
# Copied last: the files that say a run, or a predictor in it, is there and finished.
_MARKERS = ("manifest.json", "metrics.json", "run.json")


def staging_root() -> Path:
    """Where a driver keeps its local copies: ``FACRAY_STAGING``, else ``~/.cache/facray/runs``
    (``s3://bucket/runs/x`` -> ``<root>/s3/bucket/runs/x``). Only a cache: a pull makes it the
    bucket's again, so deleting it loses nothing."""
    return Path(os.environ.get("FACRAY_STAGING") or Path.home() / ".cache" / "facray" / "runs")


def run_folder(location: str | Path) -> RunFolder:
    """The run folder at ``location``: a path (a :class:`RunFolder`), or a URI on object storage
    (``s3://``, ``gs://``, ``file://``...: a :class:`StagedRunFolder`). Touches nothing, so
    workers call it too. Raises ValueError for a URI with ``?options`` (an S3-compatible server
    is named by ``AWS_ENDPOINT_URL``: a run's parts are joined onto its URI)."""
    text = str(location)
    if not storage.is_uri(text):
        return RunFolder(location)
    if "?" in text:
        raise ValueError(f"{text}: a run folder's URI takes no ?options; for an S3-compatible server set "
                         "AWS_ENDPOINT_URL (and the AWS credentials) in the environment")
    return StagedRunFolder(text)


class StagedRunFolder(RunFolder):
    """The run folder at ``uri`` on object storage, worked on in a local copy (``root``)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        super().__init__(staging_root() / storage.staging_name(self.uri))

    @property
    def location(self) -> str:
        return self.uri

    def pull(self) -> None:
        """Make the local copy the bucket's: what changed there since the copy was last in step,
        and files the bucket lacks are removed, so a copy never mixes two runs (what only the
        bucket holds, and ``trials/``, are not copied)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._mirror(self.uri, str(self.root), "remote", "local")

    def push(self) -> None:
        """Make the bucket the local copy's: what changed here since they were last in step, the
        markers of a finished run last (leaving what only the bucket holds, and ``trials/``)."""
        if self.root.is_dir():
            self._mirror(str(self.root), self.uri, "local", "remote")

    def _mirror(self, source: str, target: str, source_side: str, target_side: str) -> None:
        record = self.root / _SYNCED_FILE
        state = json.loads(record.read_text()) if record.is_file() else {}
        pairs = {rel: [sides[source_side], sides[target_side]] for rel, sides in state.items()}
        storage.mirror(source, target, pairs, skip=_NOT_MIRRORED, last=_MARKERS)
        record.write_text(json.dumps({rel: {source_side: a, target_side: b} for rel, (a, b) in pairs.items()}))

    def default_tracking_uri(self) -> str:
        raise ValueError(f"{self.uri}: a run on object storage logs to an MLflow store every machine reaches: pass "
                         "--tracking-uri (an MLflow server) or set MLFLOW_TRACKING_URI; the default SQLite store "
                         "would live in one machine's local copy of the run")

    def send_jobs_from(self, checkpoint: RunFolder) -> list[str]:
        """From a ``train-binary --mode separate`` trial, on any node: the checkpoint's jobs
        straight to the bucket (this node's copy of the run, if any, is not the driver's)."""
        keys = []
        for job_dir in sorted(checkpoint.jobs_dir.glob("*")):
            storage.mirror(str(job_dir), storage.join(self.uri, "jobs", job_dir.name), last=_MARKERS)
            keys.append(job_dir.name)
        return keys

    def fetch_jobs(self, keys: list[str]) -> None:
        for key in keys:
            storage.mirror(storage.join(self.uri, "jobs", key), str(self.job_dir(key)))

    def ray_storage(self, name: str = "ray_results") -> tuple[str, object]:
        fs, path = storage.filesystem(storage.join(self.uri, name))
        return path, fs

    def trial(self, name: str) -> "StagedRunFolder":
        """A sweep's trial: on the bucket under ``trials/``, its copy under this copy's ``trials/``."""
        return StagedRunFolder(storage.join(self.uri, "trials", name))

    def claim(self, settings: dict, digest: str, overwrite: bool = False) -> None:
        if overwrite:  # on the bucket too, at once: nothing of the old run may come back
            for name in TRAINED_OUTPUTS:
                storage.delete(storage.join(self.uri, name))
            for note in storage.list_files(self.uri):
                name = note.rsplit("/", 1)[-1]
                if fnmatch.fnmatchcase(name, FAILURE_NOTES):
                    storage.delete_file(note)
        super().claim(settings, digest, overwrite)
