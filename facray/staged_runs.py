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
import os
from pathlib import Path

from facray import storage
from facray.runs import RunFolder

# On the object storage only, never in the local copy (so a push, which makes the bucket the
# copy's, leaves them): what Ray and the workers write there themselves while a command runs (Ray
# Train's and Tune's storage, failure notes, the --fail-at-epoch marker)...
_REMOTE_ONLY = frozenset({"ray_results", "tune", "failure*.txt", ".injected_failure"})
# ...and a sweep's trials, run folders of their own that each trial pulls and pushes.
_NOT_MIRRORED = _REMOTE_ONLY | {"trials"}


def staging_root() -> Path:
    """Where a driver keeps its local copies: ``FACRAY_STAGING``, else ``~/.cache/facray/runs``
    (``s3://bucket/runs/x`` -> ``<root>/s3/bucket/runs/x``). Only a cache: a pull makes it the
    bucket's again, so deleting it loses nothing."""
    return Path(os.environ.get("FACRAY_STAGING") or Path.home() / ".cache" / "facray" / "runs")


def run_folder(location: str | Path) -> RunFolder:
    """The run folder at ``location``: a path (a :class:`RunFolder`), or a URI on object storage
    (``s3://``, ``gs://``, ``file://``...: a :class:`StagedRunFolder`). Touches nothing, so
    workers call it too."""
    return StagedRunFolder(str(location)) if storage.is_uri(str(location)) else RunFolder(location)


class StagedRunFolder(RunFolder):
    """The run folder at ``uri`` on object storage, worked on in a local copy (``root``)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        super().__init__(staging_root() / storage.staging_name(self.uri))

    @property
    def location(self) -> str:
        return self.uri

    def pull(self) -> None:
        """Make the local copy the bucket's: files the bucket lacks are removed from it, so a copy
        never mixes two runs (what only the bucket holds, and ``trials/``, are not copied)."""
        self.root.mkdir(parents=True, exist_ok=True)
        storage.mirror(self.uri, str(self.root), skip=_NOT_MIRRORED)

    def push(self) -> None:
        """Make the bucket the local copy's (leaving what only the bucket holds, and ``trials/``)."""
        if self.root.is_dir():
            storage.mirror(str(self.root), self.uri, skip=_NOT_MIRRORED)

    def send_jobs(self, keys: list[str]) -> None:
        """From a ``train-binary --mode separate`` trial, on any node: its jobs straight to the bucket
        (a push from there would make the bucket that node's partial copy)."""
        for key in keys:
            storage.mirror(str(self.job_dir(key)), storage.join(self.uri, "jobs", key))

    def fetch_jobs(self) -> None:
        storage.mirror(storage.join(self.uri, "jobs"), str(self.jobs_dir))

    def ray_storage(self, name: str = "ray_results") -> tuple[str, object]:
        fs, path = storage.filesystem(storage.join(self.uri, name))
        return path, fs

    def trial(self, name: str) -> "StagedRunFolder":
        """A sweep's trial: on the bucket under ``trials/``, its copy under this copy's ``trials/``."""
        return StagedRunFolder(storage.join(self.uri, "trials", name))

    def claim(self, settings: dict, digest: str, overwrite: bool = False) -> None:
        super().claim(settings, digest, overwrite)
        if overwrite:  # the parts only the bucket holds; push() replaces the rest
            for name in ("ray_results", "tune"):
                storage.delete_dir(storage.join(self.uri, name))
            for note in storage.list_files(self.uri):
                name = note.rsplit("/", 1)[-1]
                if name == self.failure_marker.name or fnmatch.fnmatchcase(name, "failure*.txt"):
                    storage.delete_file(note)
