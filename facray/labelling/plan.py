"""What a ``facray label`` run labels, what it reuses, where each input's rows come from, and its summary:
the business rules of a run, pure, so the Ray runner (:mod:`facray.runners.label`) only runs them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from facray.labelling.batch import format_stage_seconds
from facray.labelling.merge import positions
from facray.labelling.output import KEY_COLUMNS, complete_images


def reusable(inputs: pd.DataFrame, done: pd.DataFrame, model: str, faces: str, crop: str = "auto",
             min_confidence: float = 0.0) -> np.ndarray:
    """Per row of ``inputs`` (:func:`facray.labelling.inputs.list_inputs`), whether ``done``
    (:func:`facray.labelling.merge.previous_rows`) holds its result already: the same size and
    modification time, the same model, the same ``--faces``, ``--crop`` and ``--min-confidence``,
    and every row the image has."""
    keys = done[KEY_COLUMNS].drop_duplicates("path")  # an image's face rows share their keys
    merged = inputs.merge(keys, on="path", how="left", suffixes=("", "_done"))
    # Nullable columns (parts read back from Parquet) compare to NA where nothing was done: not fresh.
    return ((merged["size"] == merged["size_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
            & (merged["model"] == model) & (merged["faces"] == faces) & (merged["crop"] == crop)
            & (merged["min_confidence"] == min_confidence)
            & merged["path"].map(complete_images(done))).fillna(False).to_numpy(dtype=bool)


def choose_sources(inputs: pd.DataFrame, done: pd.DataFrame, reused: np.ndarray, new: pd.DataFrame) -> np.ndarray:
    """Where each input's rows come from, per row of ``inputs`` (sorted by path): the id of a
    :class:`facray.labelling.merge.Source`. A reused image comes from the earlier source ``done``
    (:func:`facray.labelling.merge.previous_rows`) has it in, any other from this run's ``new``
    keys. Raises ``RuntimeError`` if an input has no row: every input shows up in the output,
    labelled or with its error."""
    paths = inputs["path"].to_numpy(object)
    chosen = np.full(len(paths), -1, np.int64)
    for keys, wanted in ((done, reused), (new, ~reused)):
        first = keys.drop_duplicates("path", keep="last")
        pos = positions(paths, first["path"])
        found = pos >= 0
        pos, source = pos[found], first["_source"].to_numpy()[found]
        take = wanted[pos]
        chosen[pos[take]] = source[take]
    if (chosen < 0).any():
        missing = paths[chosen < 0]
        raise RuntimeError(f"{len(missing)} input(s) have no output row (e.g. {sorted(missing)[:3]})")
    return chosen


@dataclass
class LabelSummary:
    """What a run did, for people (:meth:`format`) and for callers (tests, the demo)."""
    inputs: int
    reused: int
    labelled: int
    faces_found: int
    errors: int
    seconds: float
    out: str
    model: str
    phases: dict  # wall-clock seconds on the driver: start-up, pipeline, write
    stages: dict  # seconds summed over the actors, per stage (decode, detect, crop, sketch, predict)
    skipped: str = ""  # files of the source that are not inputs, by reason (Listing.format_skipped)
    multi_face: int = 0  # images in which the detector found more than one face
    errors_file: str = ""  # --format celeba: where the rows its list cannot hold went
    rows: int = 0  # rows written: one per input, or (--faces all) one per face
    faces: str = "largest"  # --faces
    crop_methods: dict | None = None  # rows per crop_method (template, detect, ...)
    first_rows: pd.DataFrame | None = None  # the output's first rows (output_table's columns), to show
    min_confidence: float = 0.0  # --min-confidence
    decided: int = 0  # cells with a decision (rows without an error)
    decidable: int = 0  # cells the model covers (rows without an error)

    @classmethod
    def of(cls, written, inputs: pd.DataFrame, reused: np.ndarray, labelled: int, **rest) -> "LabelSummary":
        """From what was written (:class:`facray.labelling.write.Written`, counted as the rows
        streamed by): faces found, errors and images with several faces are counted per image
        (with ``--faces all``, on the image's largest-face row)."""
        return cls(inputs=len(inputs), reused=int(reused.sum()), labelled=labelled, faces_found=written.faces_found,
                   errors=written.errors, skipped=inputs.attrs.get("skipped_text", ""), multi_face=written.multi_face,
                   rows=written.rows, first_rows=written.first_rows, decided=written.decided,
                   decidable=written.decidable,
                   crop_methods={k or "(older facray)": v for k, v in written.crop_methods.most_common()}, **rest)

    def format(self) -> str:
        return (f"labelled {self.labelled} new image(s), reused {self.reused}, {self.rows or self.inputs} rows "
                f"in {self.out}\n"
                + (f"  not inputs: {self.skipped}\n" if self.skipped else "") +
                f"  model: {self.model}\n  faces found: {self.faces_found}/{self.inputs - self.errors} images"
                + (f" ({self.multi_face} with more than one face: "
                   + ("a row for each, face_index 0 the largest)" if self.faces == "all"
                      else "the largest labelled, n_faces says how many)") if self.multi_face else "") +
                f", errors: {self.errors}" + (f" (in {self.errors_file})" if self.errors_file else "")
                + f", {self.seconds:.1f}s\n"
                + (("  crops: " + ", ".join(f"{k} {v}" for k, v in self.crop_methods.items()) + "\n")
                   if self.crop_methods else "")
                + (f"  decisions kept at confidence >= {self.min_confidence:g}: {self.decided}/{self.decidable} "
                   f"({self.decided / max(self.decidable, 1):.1%}; the others are empty)\n"
                   if self.min_confidence > 0 else "") +
                "  wall clock: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items()) + "\n"
                "  in the actors: " + (format_stage_seconds(self.stages) or "nothing to label"))
