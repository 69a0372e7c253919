"""The predictor folder format, without torch: constants, the typed :class:`Manifest`, its checks
and the SHA-256 of the weights.

A predictor is a directory holding ``weights.pt`` and ``manifest.json``, in one of two formats:

- ``facray-abm-combined`` (``facray combine``): per attribute one binary ABM-CNN on the photo or
  its sketch; ``weights.pt`` is ``{"<attribute>__<modality>": ABMCNN state dict}``;
- ``facray-multitask`` (``facray train``, ``facray distill``): one registered network
  (:mod:`facray.models.registry`) with a logit per attribute; ``weights.pt`` is its state dict, the
  manifest names the model and its arguments;
- ``facray-ensemble`` (``facray ensemble``): the weighted mean of member predictors' probabilities;
  ``weights.pt`` is ``{"<i>": member i's weights}``, the manifest's ``members`` holds each member's
  weight and whole manifest (:mod:`facray.predictors.ensemble`).

``manifest.json`` holds the format and version, the crop the model expects (size, margin, centre),
the input size, per attribute its decision threshold (chosen on validation) and validation/test
accuracy, the SHA-256 of the weights file and the shape of every tensor, so a manifest that does
not match its weights fails at load time, before any image is read. The manifest is written last:
a folder with one is complete.

Only the processes that run a network import torch (a process that imports it costs about
0.5 GB): the labelling driver and its preprocess actors read this module alone.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from facray.predictors.calibration import temperatures_of
FORMAT = "facray-abm-combined"
MULTITASK_FORMAT = "facray-multitask"
ENSEMBLE_FORMAT = "facray-ensemble"
FORMATS = (FORMAT, MULTITASK_FORMAT, ENSEMBLE_FORMAT)
VERSION = 1
MANIFEST, WEIGHTS = "manifest.json", "weights.pt"


class PredictorError(ValueError):
    """A predictor is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Manifest:
    """A checked ``manifest.json``. ``attributes``: one dict per covered attribute (``attribute``,
    ``threshold``, ``val_accuracy``, ``test_accuracy``; combined predictors also ``modality``), as
    in the file; keys this class does not name (training details, ``thresholds``: where they came
    from) are kept in ``extra`` and written back unchanged."""
    format: str
    attributes: list[dict]
    image_size: int                   # the network's input side, pixels
    crop: dict                        # size (pixels), margin (fraction of the face), centre
    sketch_channels: int              # 0: no sketch input (multi-task); 1 or 3 (combined)
    weights_sha256: str
    tensor_shapes: dict
    version: int = VERSION
    model: str | None = None          # multi-task: the registered model name
    model_kwargs: dict = field(default_factory=dict)
    name: str | None = None
    # Per-attribute temperatures fitted on validation (facray.predictors.calibration); None: raw sigmoids.
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)

    REQUIRED = ("weights_sha256", "tensor_shapes", "attributes", "image_size", "crop", "sketch_channels")

    @classmethod
    def from_json(cls, record: object, source: Path | str = MANIFEST) -> "Manifest":
        """Check a parsed manifest (``source`` names the file in errors): a known format and
        every required key, else :class:`PredictorError`."""
        if not isinstance(record, dict) or record.get("format") not in FORMATS:
            found = record.get("format") if isinstance(record, dict) else type(record).__name__
            raise PredictorError(f"{source}: format is {found!r}, expected one of {', '.join(FORMATS)}")
        missing = [k for k in cls.REQUIRED if k not in record]
        if missing:
            raise PredictorError(f"{source}: missing {', '.join(missing)} (incomplete or hand-edited manifest)")
        named = {f.name for f in fields(cls)} - {"extra"}
        try:
            temperatures_of(record.get("calibration"))
        except ValueError as e:
            raise PredictorError(f"{source}: {e}") from None
        return cls(**{k: v for k, v in record.items() if k in named},
                   extra={k: v for k, v in record.items() if k not in named})

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        """``folder/manifest.json``, parsed and checked."""
        path = Path(folder) / MANIFEST
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PredictorError(f"{path}: not a readable JSON manifest ({e})") from None
        return cls.from_json(record, path)

    def to_json(self) -> dict:
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        if self.format != MULTITASK_FORMAT:
            del record["model"], record["model_kwargs"]
        for optional in ("name", "calibration"):
            if record[optional] is None:
                del record[optional]
        return {**record, **self.extra}

    def write(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(_json_numbers(self.to_json()), indent=1, allow_nan=False))

    @property
    def attribute_names(self) -> list[str]:
        return [c["attribute"] for c in self.attributes]

    @property
    def needs_sketch(self) -> bool:
        """Whether any attribute is decided on the pencil sketch (by any member of an ensemble)."""
        if self.format == ENSEMBLE_FORMAT:
            return any(m.needs_sketch for _, m in self.members)
        return any(c.get("modality") == "sketch" for c in self.attributes)

    @property
    def members(self) -> list[tuple[float, "Manifest"]]:
        """An ensemble's (weight, member manifest) pairs, checked; empty for other formats."""
        if self.format != ENSEMBLE_FORMAT:
            return []
        records = self.extra.get("members")
        if not isinstance(records, list) or not records:
            raise PredictorError(f"{MANIFEST}: an ensemble manifest needs a non-empty members list")
        return [(float(r["weight"]), Manifest.from_json(r["manifest"], f"{MANIFEST} member {i}"))
                for i, r in enumerate(records)]

    @property
    def display_name(self) -> str:
        """The ``model`` column of the label output: the given name, else format and weights digest."""
        return self.name or f"{self.format}:{self.weights_sha256[:12]}"


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_weights_file(path: Path, manifest: Manifest) -> bytes:
    """The bytes of ``path``'s weights file, refused unless they match the manifest's SHA-256."""
    blob = (path / WEIGHTS).read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.weights_sha256:
        raise PredictorError(f"{path / WEIGHTS}: SHA-256 {digest[:12]}... does not match the manifest's "
                             f"{str(manifest.weights_sha256)[:12]}... (weights replaced or corrupted)")
    return blob


def set_thresholds(dest: str | Path, thresholds: dict[str, float], how: str, calibration: dict | None = None) -> None:
    """Replace the decision thresholds of the predictor in ``dest`` (attribute -> threshold on the
    calibrated probabilities; ``how`` says where they came from, kept as the manifest's
    ``thresholds``) and, when given, its ``calibration``
    (:func:`facray.predictors.calibration.calibration_record`). The weights are untouched, so their
    SHA-256 still holds."""
    manifest = Manifest.read(Path(dest))
    for c in manifest.attributes:
        c["threshold"] = float(thresholds.get(c["attribute"], c.get("threshold", 0.5)))
    manifest.extra["thresholds"] = how
    if calibration is not None:
        manifest = replace(manifest, calibration=calibration)
    manifest.write(Path(dest))


# Fields a predictor decides with: never written as null (a NaN there is refused by json.dumps).
_DECISION_FIELDS = ("threshold", "calibration")


def _json_numbers(value, key: str | None = None):
    """``value`` with every non-finite float outside :data:`_DECISION_FIELDS` as None: JSON has
    no NaN, and a manifest is read by more than Python (a figure nobody could score, e.g. the
    accuracy of an attribute without labelled test rows, is NaN in facray's records). A
    non-finite threshold or temperature stays, for ``json.dumps(allow_nan=False)`` to refuse."""
    if key in _DECISION_FIELDS:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_numbers(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_numbers(v) for v in value]
    return value
