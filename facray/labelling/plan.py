"""What a ``facray label`` run labels, what it reuses, how the two are merged, and its summary:
the business rules of a run, pure, so the Ray runner (:mod:`facray.runners.label`) only runs them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from facray.labelling.batch import format_stage_seconds
from facray.labelling.output import KEY_COLUMNS, OUTPUT_COLUMNS, complete_images, output_table


def no_rows() -> pd.DataFrame:
    """An empty table of earlier rows (``--overwrite``, or nothing written yet)."""
    return pd.DataFrame(columns=list(dict.fromkeys(OUTPUT_COLUMNS + KEY_COLUMNS)))


def reusable(inputs: pd.DataFrame, done: pd.DataFrame, model: str, faces: str, crop: str = "auto") -> np.ndarray:
    """Per row of ``inputs`` (:func:`facray.labelling.inputs.list_inputs`), whether ``done``
    (:func:`facray.labelling.output.previous_rows`) holds its result already: the same size and
    modification time, the same model, the same ``--faces`` and ``--crop`` modes, and every row the
    image has."""
    keys = done[KEY_COLUMNS].drop_duplicates("path")  # an image's face rows share their keys
    merged = inputs.merge(keys, on="path", how="left", suffixes=("", "_done"))
    # Nullable columns (parts read back from Parquet) compare to NA where nothing was done: not fresh.
    return ((merged["size"] == merged["size_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
            & (merged["model"] == model) & (merged["faces"] == faces) & (merged["crop"] == crop)
            & merged["path"].map(complete_images(done))).fillna(False).to_numpy(dtype=bool)


def merge_rows(inputs: pd.DataFrame, done: pd.DataFrame, reused: np.ndarray, new: list[pd.DataFrame]) -> pd.DataFrame:
    """The run's output rows: the reused ones of ``done`` and the ``new`` ones, one set per image
    (the newest), sorted by path and face, each with its ``image_id``. Raises ``RuntimeError`` if
    an input has no row: every input shows up in the output, labelled or with its error."""
    kept = done[done.path.isin(set(inputs.path[reused]))]
    rows = pd.concat([kept, *new], ignore_index=True).drop_duplicates(["path", "face_index"], keep="last")
    rows = rows.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    missing = set(inputs.path) - set(rows.path)
    if missing:
        raise RuntimeError(f"{len(missing)} input(s) have no output row (e.g. {sorted(missing)[:3]})")
    rows["image_id"] = rows["path"].map(dict(zip(inputs.path, inputs.image_id)))
    return rows


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
    first_rows: pd.DataFrame | None = None  # the output's first rows (output_table's columns), to show

    @classmethod
    def of(cls, rows: pd.DataFrame, inputs: pd.DataFrame, reused: np.ndarray, labelled: int, **rest) -> "LabelSummary":
        """Counted from the written ``rows``: faces found, errors and images with several faces
        are counted per image (with ``--faces all``, on the image's largest-face row)."""
        per_image = rows.drop_duplicates("path")
        n_faces = pd.to_numeric(per_image["n_faces"], errors="coerce")
        return cls(inputs=len(inputs), reused=int(reused.sum()), labelled=labelled,
                   faces_found=int(per_image.face_found.astype(bool).sum()),
                   errors=int((per_image.error.fillna("") != "").sum()), skipped=inputs.attrs.get("skipped_text", ""),
                   multi_face=int((n_faces > 1).sum()), rows=len(rows), first_rows=output_table(rows.head(5)), **rest)

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
                "  wall clock: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.phases.items()) + "\n"
                "  in the actors: " + (format_stage_seconds(self.stages) or "nothing to label"))
