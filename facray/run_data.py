"""The prepared data a training run trained on, verified: the location in its ``run.json`` (or
one given explicitly, e.g. the same data at another path), checked against the shard version the
run recorded, so a report is never computed on data re-prepared since. Pure Python."""
from __future__ import annotations

import json
from shlex import quote

from facray import storage
from facray.data.prepared import read_metadata
from facray.runs import RunFolder, RunFolderError
from facray.staged_runs import run_folder


def trained_on(run: RunFolder, override: str | None = None) -> str:
    """The prepared data ``run`` trained on: ``override`` (the same data elsewhere) or the recorded
    location. Raises :class:`RunFolderError` when it is gone, or holds other data (naming which)."""
    settings = run.settings()
    location = override or settings["prepared"]
    try:
        version = read_metadata(location)["shards"]
    except FileNotFoundError as e:
        raise RunFolderError(f"{run.location} trained on {location}, which is gone ({e}); "
                             "pass --prepared with the same data's new location") from None
    if version != settings["prepared_version"]:
        raise RunFolderError(_other_data(run, location, settings))
    return location


def recorded_settings(location: str) -> dict:
    """The settings the run at ``location`` was trained with, read where it is (for a URI, from
    the object storage: no local copy is made). Raises :class:`RunFolderError` when it has none."""
    run = run_folder(location)
    if not storage.is_uri(str(location)):
        return run.settings()
    try:
        return json.loads(storage.read_text(storage.join(run.location, run.record_file.name)))["settings"]
    except FileNotFoundError:
        raise RunFolderError(f"{location}: no {run.record_file.name}; not a run folder written by facray") from None


def split_settings(run: RunFolder, prepared: str | None = None) -> dict:
    """The run's split fields (train/val/test split, holdout, seed) with the verified prepared
    location (:func:`trained_on`): what :meth:`facray.training.splits.SplitSpec.of` takes."""
    return {**run.settings(), "prepared": trained_on(run, prepared)}


def _other_data(run: RunFolder, location: str, settings: dict) -> str:
    """Why ``location`` is not the data ``run`` trained on: another dataset (its source differs
    from the recorded data's) or the same one prepared again."""
    meta = read_metadata(location)
    try:
        trained = read_metadata(settings["prepared"]) if settings["prepared"] != location else None
    except FileNotFoundError:
        trained = None
    source, name = f"{meta.get('dataset', '?')} from {meta.get('root', '?')}", quote(run.location)
    if trained and (trained.get("dataset"), trained.get("root")) != (meta.get("dataset"), meta.get("root")):
        return (f"{location} holds {source}, but {run.location} trained on {trained.get('dataset', '?')} from "
                f"{trained.get('root', '?')}: another dataset. To score this run on it: facray evaluate "
                f"--model {name} --dataset {quote(str(meta.get('root', location)))}")
    return (f"{location} holds shards {meta['shards']} ({source}), but {run.location} trained on shards "
            f"{settings['prepared_version']}: re-prepared since, or another dataset; a report on it would not "
            f"describe this run. Pass --prepared with the data it trained on; to score the run on another "
            f"dataset: facray evaluate --model {name} --dataset DIR")
