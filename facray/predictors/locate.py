"""Find a predictor, without torch: a predictor folder, a run folder (its ``facray train`` or
``facray combine`` output), either on object storage too (``s3://...``), or an MLflow model URI
(``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model``) -> the local folder and its checked :class:`~facray.predictors.format.Manifest`."""
from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from facray import storage
from facray.predictors.format import MANIFEST, WEIGHTS, Manifest, PredictorError
from facray.runs import RunFolder, RunFolderError


def from_object_storage(uri: str) -> Path | None:
    """The predictor at ``uri`` on object storage (``s3://``, ``gs://``, ``file://``...): a
    predictor folder, or a run folder's ``model/`` or ``combined/``, copied alone into a private
    temporary folder (never the whole run, nor a run's local copy another command may be working
    in). None when ``uri`` is no such URI (``models:/``, ``runs:/`` are MLflow's). Raises
    :class:`PredictorError` when no predictor is there."""
    if not storage.is_uri(uri):
        return None
    layout = RunFolder(tempfile.gettempdir())  # the run folder layout's names only
    for folder in (uri, storage.join(uri, layout.model_dir.name), storage.join(uri, layout.combined_dir.name)):
        if storage.is_file(storage.join(folder, MANIFEST)):
            dest = Path(tempfile.mkdtemp(prefix="facray-model-"))
            atexit.register(shutil.rmtree, dest, ignore_errors=True)
            storage.mirror(folder, str(dest))
            return dest
    if storage.is_file(storage.join(uri, layout.record_file.name)):
        raise PredictorError(f"{uri}: no predictor yet (run `facray combine --run {uri}` on a binary run)")
    raise PredictorError(f"{uri}: no {MANIFEST} there, nor a run folder's {layout.record_file.name} (expected a "
                         "predictor or run folder written by facray)")


def is_model_uri(text: str) -> bool:
    """``models:/...``, ``runs:/...``, ``s3://...`` and the like, unless a local path of that name exists."""
    return ":/" in text and not Path(text).exists()


def resolve_uri(uri: str) -> Path:
    """An MLflow model URI -> local directory holding ``manifest.json`` (a private temporary copy)."""
    import mlflow  # lazy: only a URI needs MLflow (about 1 s to import)
    if uri.startswith("models:/") and uri.endswith("@latest"):
        uri = uri[: -len("@latest")] + "/latest"  # MLflow reserves 'latest' as an alias name
    # Into a folder facray owns, never in place: for a store on local disk MLflow would hand back
    # the registry's own folder and write its registered_model_meta there (on a read-only share:
    # "Read-only file system"; on a writable one: a write into the registry at every read).
    dest = Path(tempfile.mkdtemp(prefix="facray-model-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)  # read into memory long before the exit
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
    except Exception as e:  # noqa: BLE001 - MLflow raises several types for a bad URI
        raise PredictorError(f"{uri}: cannot fetch the model from MLflow "
                             f"(tracking URI {mlflow.get_tracking_uri()}): {e}") from e
    found = sorted(local.rglob(MANIFEST))
    if not found:
        raise PredictorError(f"{uri}: no {MANIFEST} in the model's artifacts (not a facray predictor)")
    return found[0].parent


def locate_predictor(uri_or_path: str | Path) -> tuple[Path, Manifest]:
    """The predictor folder of a folder, run folder or MLflow model URI, and its checked manifest.

    Raises :class:`PredictorError` naming the file: no manifest, an unreadable one, an unknown
    format, missing keys, or no weights file."""
    text = str(uri_or_path)
    path = from_object_storage(text) or (resolve_uri(text) if is_model_uri(text) else Path(text))
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not (path / MANIFEST).is_file():  # a run folder: its `facray train` / `facray combine` output
        try:
            path = RunFolder(path).predictor_dir()
        except RunFolderError:
            pass
    if not (path / MANIFEST).is_file():
        raise PredictorError(f"{path}: no {MANIFEST} (expected a predictor written by `facray combine` or "
                             "`facray train`, or their run folder)")
    manifest = Manifest.read(path)
    if not (path / WEIGHTS).is_file():
        raise PredictorError(f"{path}: {WEIGHTS} is missing")
    return path, manifest
