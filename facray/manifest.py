"""Predictor folders without torch: find one (a folder, a run folder or an MLflow model URI), read
and check its manifest and the SHA-256 of its weights, and make decisions from its thresholds.

What the labelling driver and its preprocess actors need, so that only the processes that run a
network import torch (a process that imports it costs about 0.5 GB); :mod:`facray.predictor`
loads the tensors and builds the networks.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.run_folder import RunFolder, RunFolderError

FORMAT = "facray-abm-combined"
MULTITASK_FORMAT = "facray-multitask"
FORMATS = (FORMAT, MULTITASK_FORMAT)
VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "weights.pt"


class PredictorError(ValueError):
    """A predictor is missing, incomplete or inconsistent."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_weights_file(path: Path, manifest: dict) -> bytes:
    """The bytes of ``path``'s weights file, refused unless they match the manifest's SHA-256."""
    blob = (path / WEIGHTS).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest["weights_sha256"]:
        raise PredictorError(f"{path / WEIGHTS}: SHA-256 {digest[:12]}... does not match the manifest's "
                             f"{str(manifest['weights_sha256'])[:12]}... (weights replaced or corrupted)")
    return blob


def is_model_uri(text: str) -> bool:
    """``models:/...``, ``runs:/...``, ``s3://...`` and the like, unless a local path of that name exists."""
    return ":/" in text and not Path(text).exists()


def resolve_uri(uri: str) -> Path:
    """An MLflow model URI -> local directory holding ``manifest.json`` (a private temporary copy)."""
    import mlflow
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


def locate_predictor(uri_or_path: str | Path) -> tuple[Path, dict]:
    """The predictor folder of a folder, run folder or MLflow model URI, and its checked manifest."""
    text = str(uri_or_path)
    path = resolve_uri(text) if is_model_uri(text) else Path(text)
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
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictorError(f"{path / MANIFEST}: not a readable JSON manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in FORMATS:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PredictorError(f"{path / MANIFEST}: format is {found!r}, expected one of {', '.join(FORMATS)}")
    missing = [k for k in ("weights_sha256", "tensor_shapes", "attributes", "image_size", "crop",
                           "sketch_channels") if k not in manifest]
    if missing:
        raise PredictorError(f"{path / MANIFEST}: missing {', '.join(missing)} (incomplete or hand-edited manifest)")
    if not (path / WEIGHTS).is_file():
        raise PredictorError(f"{path}: {WEIGHTS} is missing")
    return path, manifest


class Thresholded:
    """Decisions and naming from the manifest alone, shared by both predictor kinds."""
    manifest: dict
    thresholds: np.ndarray

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """1/0 per attribute at each attribute's threshold; -1 where not covered."""
        d = (probs >= self.thresholds).astype(np.int8)
        d[:, np.isnan(self.thresholds)] = -1
        return d

    @property
    def attributes(self) -> list[str]:
        return [c["attribute"] for c in self.manifest["attributes"]]

    @property
    def name(self) -> str:
        return self.manifest.get("name") or f"{self.manifest['format']}:{self.manifest['weights_sha256'][:12]}"


def thresholds_of(choices: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    columns = np.array([ATTRIBUTES.index(c["attribute"]) for c in choices], dtype=np.int64)
    thresholds = np.full(len(ATTRIBUTES), np.nan)
    thresholds[columns] = [c.get("threshold", 0.5) for c in choices]
    return columns, thresholds


def needs_sketch(manifest: dict) -> bool:
    """Whether a predictor's manifest has any attribute decided on the pencil sketch."""
    return any(c.get("modality") == "sketch" for c in manifest["attributes"])


class PredictorInfo(Thresholded):
    """A predictor's names, decisions and input needs from its manifest, without its networks."""

    def __init__(self, manifest: dict):
        self.manifest = manifest
        self.columns, self.thresholds = thresholds_of(manifest["attributes"])
        self.needs_sketch = needs_sketch(manifest)
