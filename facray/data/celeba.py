"""Read CelebA (official text layout, Kaggle CSV layout, CelebA-HQ, in-the-wild) into one table.

Runs on the driver; pure pandas, no Ray. The table has one row per labelled image:

- ``image_id`` (file name as in the list files), ``path`` (absolute),
- the 40 attributes in official order as int8 0/1,
- ``partition`` (0 train, 1 val, 2 test, -1 unknown) and ``split`` ("train"/"val"/"test"),
- ``identity`` (-1 when unknown), bbox ``x_1 y_1 width height`` and the 5 landmarks
  (``lefteye_x`` ... ``rightmouth_y``) when their files exist (NaN otherwise).

``table.attrs`` carries ``image_kind`` ("aligned" or "wild": which frame the landmarks and bbox are
in), ``root``, ``warnings`` and ``skipped`` (rows dropped by ``skip_missing``), so that nothing is
dropped without a count.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES, LANDMARK_ORDER
from facray.data.errors import DatasetError, where
from facray.data.folder import inside_root, list_images, printable_name

log = logging.getLogger(__name__)

LANDMARK_COLUMNS = tuple(f"{point}_{axis}" for point in LANDMARK_ORDER for axis in "xy")
BBOX_COLUMNS = ("x_1", "y_1", "width", "height")
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}
# The official folders; img_align_celeba_png/ is the official lossless edition (its files are
# .png while the list files still name .jpg: matched by stem, see match_image_files).
IMAGE_DIRS = {"img_align_celeba": "aligned", "img_align_celeba_png": "aligned", "img_celeba": "wild"}
SPLITS = ("official", "abm", "identity")


@dataclass
class ListFiles:
    """Which list files a CelebA root holds (None where absent)."""
    root: Path
    image_dir: Path
    image_kind: str
    attributes: Path
    partition: Path | None = None
    identity: Path | None = None
    bbox: Path | None = None
    landmarks: Path | None = None
    csv_layout: bool = False
    notes: list[str] = field(default_factory=list)


def _find_image_dir(root: Path) -> tuple[Path, str]:
    for name, kind in IMAGE_DIRS.items():
        d = root / name
        if d.is_dir():
            # The Kaggle archive nests img_align_celeba/img_align_celeba/.
            if (d / name).is_dir():
                d = d / name
            return d, kind
    raise DatasetError(f"{root}: no image folder; expected one of {sorted(IMAGE_DIRS)}")


def locate_list_files(root: str | Path) -> ListFiles:
    """Find the image folder and list files under ``root`` (text layout first, then Kaggle CSV)."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    image_dir, kind = _find_image_dir(root)
    txt, csv = root / "list_attr_celeba.txt", root / "list_attr_celeba.csv"
    if txt.is_file():
        ext, csv_layout, attributes = ".txt", False, txt
    elif csv.is_file():
        ext, csv_layout, attributes = ".csv", True, csv
    else:
        raise DatasetError(f"{root}: no attribute file; expected list_attr_celeba.txt "
                           "(official) or list_attr_celeba.csv (Kaggle)")

    def optional(stem: str) -> Path | None:
        p = root / f"{stem}{ext}"
        return p if p.is_file() else None

    landmark_stem = "list_landmarks_align_celeba" if kind == "aligned" else "list_landmarks_celeba"
    files = ListFiles(root=root, image_dir=image_dir, image_kind=kind, attributes=attributes,
                      partition=optional("list_eval_partition"),
                      identity=root / "identity_CelebA.txt" if (root / "identity_CelebA.txt").is_file() else None,
                      bbox=optional("list_bbox_celeba"), landmarks=optional(landmark_stem),
                      csv_layout=csv_layout)
    other = "list_landmarks_celeba" if kind == "aligned" else "list_landmarks_align_celeba"
    if optional(other) is not None and files.landmarks is None:
        files.notes.append(f"{other}{ext} is for {'in-the-wild' if kind == 'aligned' else 'aligned'} "
                           f"images, not {image_dir.name}/; ignored")
    return files


def _read_lines(path: Path) -> list[str]:
    try:
        # newline=None folds CRLF and LF alike; strip() below drops trailing spaces; utf-8-sig
        # drops the byte-order mark that Windows editors put at the start of a file.
        with open(path, encoding="utf-8-sig", newline=None) as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read list file ({e})") from e


def _parse_signed_labels(path: Path, lineno: int, name: str, fields: list[str], problems: list[str],
                         names: list[str]) -> list[int] | None:
    """The row's values of the header's attributes ``names``, as 1/0."""
    if len(fields) != len(names):
        problems.append(f"{where(path, lineno)}: {name}: expected {len(names)} attribute "
                        f"values, got {len(fields)}")
        return None
    values = []
    for attr, v in zip(names, fields):
        if v not in ("1", "-1"):
            problems.append(f"{where(path, lineno)}: {name}: {attr} is {v!r}, expected -1 or 1")
            return None
        values.append(1 if v == "1" else 0)
    return values


def _check_header(path: Path, lineno: int, names: list[str]) -> list[str]:
    """The file's attribute names, checked: CelebA names, each once, in any order. A file may name
    a subset (facray's own ``label --format celeba`` output of a partial model, a dataset labelled
    for a few attributes); the others are unknown."""
    unknown = [n for n in names if n not in ATTRIBUTES]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if unknown or repeated or not names:
        raise DatasetError(f"{where(path, lineno)}: attribute header: "
                           + (f"unknown attribute(s) {unknown}; " if unknown else "")
                           + (f"repeated {repeated}; " if repeated else "")
                           + ("no attributes; " if not names else "")
                           + "expected CelebA attribute names (e.g. Male Smiling), any subset, each once")
    return names


def _duplicates_problem(path: Path, names: list[str], linenos: list[int]) -> list[str]:
    seen: dict[str, int] = {}
    problems = []
    for name, ln in zip(names, linenos):
        if name in seen:
            problems.append(f"{where(path, ln)}: duplicate image {name!r} (first at line {seen[name]})")
        else:
            seen[name] = ln
    return problems


def read_attribute_file(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Parse ``list_attr_celeba.txt`` or ``.csv`` into ``image_id`` + 40 int8 0/1 columns.

    Returns the table and warnings (e.g. a count line that disagrees with the rows). Raises
    :class:`DatasetError` listing every malformed or duplicate row with its line number.
    """
    path = Path(path)
    notes: list[str] = []
    problems: list[str] = []
    names: list[str] = []
    linenos: list[int] = []
    rows: list[list[int]] = []
    lines = _read_lines(path)
    if path.suffix == ".csv":
        if not lines:
            raise DatasetError(f"{where(path, 1)}: empty attribute file")
        header = [h.strip() for h in lines[0].split(",")]
        if header[0] != "image_id":
            raise DatasetError(f"{where(path, 1)}: first column must be image_id, got {header[0]!r}")
        header_names = _check_header(path, 1, header[1:])
        body = [(i + 1, ln.split(",")) for i, ln in enumerate(lines) if i >= 1 and ln.strip()]
    else:
        if len(lines) < 2:
            raise DatasetError(f"{where(path, 1)}: attribute file needs a count line and a header line")
        try:
            declared = int(lines[0].strip())
        except ValueError:
            raise DatasetError(f"{where(path, 1)}: expected the image count, got {lines[0].strip()!r}")
        header_names = _check_header(path, 2, lines[1].split())
        body = [(i + 1, ln.split()) for i, ln in enumerate(lines) if i >= 2 and ln.strip()]
    for lineno, parts in body:
        parts = [p.strip() for p in parts]
        if not parts[0]:
            problems.append(f"{where(path, lineno)}: empty image name")
            continue
        values = _parse_signed_labels(path, lineno, parts[0], parts[1:], problems, header_names)
        if values is not None:
            names.append(parts[0])
            linenos.append(lineno)
            rows.append(values)
    problems += _duplicates_problem(path, names, linenos)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed attribute row(s)", problems)
    if path.suffix != ".csv" and declared != len(rows):
        notes.append(f"{where(path, 1)}: count line says {declared} images but the file has "
                     f"{len(rows)} rows; trusting the rows")
    table = pd.DataFrame(np.asarray(rows, dtype=np.int8).reshape(-1, len(header_names)), columns=header_names)
    table = table[[a for a in ATTRIBUTES if a in header_names]]  # the official order
    if len(header_names) < len(ATTRIBUTES):
        notes.append(f"{path}: labels {len(header_names)} of the 40 attributes; the other "
                     f"{len(ATTRIBUTES) - len(header_names)} are unknown (left out of training and scores)")
    table.insert(0, "image_id", names)
    table.attrs["linenos"] = linenos
    return table, notes


def _read_keyed_table(path: Path, columns: tuple[str, ...], has_count_line: bool,
                      has_header: bool, dtype=float, allowed: tuple | None = None) -> pd.DataFrame:
    """Read a list file of ``image_id value...`` rows (text or CSV) into a frame keyed by image_id."""
    lines = _read_lines(path)
    csv = path.suffix == ".csv"
    skip = 1 if csv else int(has_count_line) + int(has_header)
    problems: list[str] = []
    ids, values, linenos = [], [], []
    for i, line in enumerate(lines[skip:], start=skip + 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in (line.split(",") if csv else line.split())]
        if len(parts) != len(columns) + 1:
            problems.append(f"{where(path, i)}: expected {len(columns) + 1} fields, got {len(parts)}")
            continue
        try:
            row = [dtype(p) for p in parts[1:]]
        except ValueError:
            problems.append(f"{where(path, i)}: non-numeric value in {parts[1:]}")
            continue
        if allowed is not None and any(v not in allowed for v in row):
            problems.append(f"{where(path, i)}: {parts[0]}: {columns[0]} is {parts[1]!r}, "
                            f"expected one of {', '.join(map(str, allowed))}")
            continue
        values.append(row)
        ids.append(parts[0])
        linenos.append(i)
    problems += _duplicates_problem(path, ids, linenos)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} malformed row(s)", problems)
    frame = pd.DataFrame(values, columns=list(columns))
    frame.insert(0, "image_id", ids)
    return frame.set_index("image_id")


def abm_split(n: int, seed: int = 0, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> np.ndarray:
    """ABM-CNN's random 70/15/15 split: an array of 0/1/2 (train/val/test) of length ``n``.

    Exact counts (rounded), shuffled with a seeded generator, so the same seed gives the same split
    whatever the machine.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must sum to 1, got {fractions}")
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    parts = np.concatenate([np.zeros(n_train), np.ones(n_val), np.full(n - n_train - n_val, 2)])
    return np.random.default_rng(seed).permutation(parts.astype(np.int8))


def identity_split(identities: np.ndarray, seed: int = 0,
                   fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> np.ndarray:
    """Closed-set identification's split: every person's photos are divided train/val/test
    (seeded), so the people in test were all seen in training. 0/1/2 per row.

    A person with one photo trains only; with two or three, one tests and the rest train; with
    four or more, about ``fractions`` of them (at least one test and one validation photo).
    Rows of unknown identity (-1) are split as :func:`abm_split` does.
    """
    identities = np.asarray(identities)
    parts = np.zeros(len(identities), np.int8)
    rng = np.random.default_rng(seed)
    unknown = identities < 0
    parts[unknown] = abm_split(int(unknown.sum()), seed, fractions)
    for person in np.unique(identities[~unknown]):
        rows = rng.permutation(np.flatnonzero(identities == person))
        n = len(rows)
        n_test = 0 if n < 2 else max(1, int(round(fractions[2] * n)))
        n_val = max(1, int(round(fractions[1] * n))) if n >= 4 else 0
        parts[rows[:n_test]] = 2
        parts[rows[n_test:n_test + n_val]] = 1
    return parts


def match_image_files(names: list[str], image_dir: Path) -> tuple[list[str | None], list[str], dict]:
    """Match list-file image names to the files in ``image_dir`` (by the one listing rule).

    A name matches its file exactly, else a file with the same stem and another image suffix
    (CelebA's PNG edition: lists name ``000001.jpg``, the folder holds ``000001.png``). Returns the
    file name for each list name (None when missing), the files no name matched (orphans) and what
    the listing skipped (reason -> count). A file name that is not UTF-8 can never match a label
    row; it is an orphan under its escaped name.
    """
    listing = list_images(image_dir, recursive=False)
    on_disk = [printable_name(os.path.basename(p)) for p in listing.paths]
    exact = set(on_disk)
    by_stem: dict[str, list[str]] = {}
    for f in on_disk:
        by_stem.setdefault(os.path.splitext(f)[0], []).append(f)
    matched = []
    for name in names:
        if name in exact:
            matched.append(name)
        else:
            same_stem = by_stem.get(os.path.splitext(name)[0], [])
            matched.append(same_stem[0] if len(same_stem) == 1 else None)
    used = {m for m in matched if m is not None}
    return matched, sorted(exact - used), dict(listing.skipped)


def read_celeba(root: str | Path, split: str = "official", seed: int = 0,
                skip_missing: bool = False) -> pd.DataFrame:
    """Read a CelebA-layout folder into the metadata table described in the module docstring.

    Args:
        root: folder holding ``img_align_celeba/`` (or ``img_celeba/``) and the list files.
        split: ``"official"`` (``list_eval_partition``), ``"abm"`` (random 70/15/15, seeded) or
            ``"identity"`` (each person's photos 70/15/15: closed-set identification, see
            :func:`identity_split`; needs ``identity_CelebA.txt``).
        seed: seed of the ABM and identity splits.
        skip_missing: go on without label rows whose image is missing and ignore images with no
            label row; both are counted in ``table.attrs["skipped"]``. Without it they raise.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    files = locate_list_files(root)
    table, notes = read_attribute_file(files.attributes)
    notes = files.notes + notes
    linenos = table.attrs.pop("linenos")

    outside = [f"{where(files.attributes, ln)}: image {name!r} is outside the image folder {files.image_dir}"
               for name, ln in zip(table["image_id"], linenos) if inside_root(files.image_dir, name) is None]
    if outside:  # never opened, not even with --skip-missing: a list file cannot reach outside its root
        raise DatasetError(f"{files.attributes}: {len(outside)} image name(s) outside {files.image_dir}", outside)
    file_names, orphans, not_images = match_image_files(table["image_id"].tolist(), files.image_dir)
    missing_mask = np.array([f is None for f in file_names], dtype=bool)
    skipped = {"missing_image": int(missing_mask.sum()), "unlabelled_image": len(orphans), **not_images}
    renamed = [(n, f) for n, f in zip(table["image_id"], file_names) if f is not None and f != n]
    if renamed:
        notes.append(f"{len(renamed)} image(s) matched their list name by stem (e.g. {renamed[0][0]} -> "
                     f"{renamed[0][1]}: CelebA's PNG edition)")
    if (missing_mask.any() or orphans) and not skip_missing:
        problems = [f"{where(files.attributes, ln)}: image {name!r} is listed but "
                    f"{files.image_dir / name} does not exist"
                    for name, ln, m in zip(table["image_id"], linenos, missing_mask) if m]
        problems += [f"{files.image_dir / name}: image has no row in {files.attributes.name}"
                     for name in orphans]
        raise DatasetError(f"{files.root}: {skipped['missing_image']} labelled image(s) missing, "
                           f"{len(orphans)} image(s) without labels (pass skip_missing / "
                           "--skip-missing to go on without them)", problems)
    table.insert(1, "path", [str(files.image_dir / f) if f is not None else "" for f in file_names])
    if missing_mask.any():
        notes.append(f"skipped {skipped['missing_image']} label row(s) whose image is missing")
        table = table[~missing_mask].reset_index(drop=True)
    if orphans:
        notes.append(f"ignored {len(orphans)} image(s) with no label row")
    for reason, n in not_images.items():
        notes.append(f"{files.image_dir}: skipped {n} file(s): {reason}")

    ids = table["image_id"]

    if files.partition is not None:
        part = _read_keyed_table(files.partition, ("partition",), False, False, dtype=int, allowed=(0, 1, 2))
        table["partition"] = ids.map(part["partition"]).fillna(-1).astype(np.int8).to_numpy()
        unknown = (table["partition"] < 0).sum()
        if unknown:
            notes.append(f"{files.partition}: {unknown} image(s) have no partition row")
    else:
        table["partition"] = np.int8(-1)
    if split == "official":
        if files.partition is None:
            raise DatasetError(f"{files.root}: split='official' needs list_eval_partition; "
                               "use split='abm' for a seeded 70/15/15 split")
        bad = table.loc[table["partition"] < 0, "image_id"].tolist()
        if bad:
            raise DatasetError(f"{files.partition}: {len(bad)} labelled image(s) have no partition row",
                               [f"{files.partition}: no row for {b!r}" for b in bad])
        parts = table["partition"].to_numpy()
    else:
        parts = abm_split(len(table), seed)

    if files.identity is not None:
        ident = _read_keyed_table(files.identity, ("identity",), False, False, dtype=int)
        table["identity"] = ids.map(ident["identity"]).fillna(-1).astype(np.int64).to_numpy()
    else:
        table["identity"] = np.int64(-1)
    if split == "identity":
        if files.identity is None:
            raise DatasetError(f"{files.root}: split='identity' needs identity_CelebA.txt")
        parts = identity_split(table["identity"].to_numpy(), seed)
    table["split"] = pd.Categorical.from_codes(parts, categories=["train", "val", "test"])
    for key, cols in (("bbox", BBOX_COLUMNS), ("landmarks", LANDMARK_COLUMNS)):
        path = getattr(files, key)
        if path is not None:
            frame = _read_keyed_table(path, cols, True, True)
            for c in cols:
                table[c] = ids.map(frame[c]).to_numpy(dtype=np.float32)
        else:
            for c in cols:
                table[c] = np.float32(np.nan)

    for n in notes:
        warnings.warn(n, stacklevel=2)
        log.warning(n)
    table.attrs.update(image_kind=files.image_kind, root=str(files.root), warnings=notes,
                       skipped=skipped, layout="csv" if files.csv_layout else "txt")
    return table


def label_matrix(n: int, columns) -> np.ndarray:
    """The (n, 40) int8 label matrix from per-attribute columns (a mapping of attribute name ->
    n values in {0, 1}): -1 for every attribute ``columns`` lacks (e.g. MTFL's). The one builder
    of the matrix, for tables and for batches (:func:`facray.data.ops.pack_labels`)."""
    out = np.full((n, len(ATTRIBUTES)), -1, np.int8)
    for j, a in enumerate(ATTRIBUTES):
        if a in columns:
            out[:, j] = np.asarray(columns[a], np.int8)
    return out


def labels_matrix(table: pd.DataFrame) -> np.ndarray:
    """The (N, 40) int8 label matrix, with -1 for attributes the table lacks (e.g. MTFL)."""
    return label_matrix(len(table), {a: table[a].to_numpy() for a in ATTRIBUTES if a in table.columns})
