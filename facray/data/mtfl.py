"""Read MTFL (Multi-Task Facial Landmark) list files into facray's metadata table.

Runs on the driver; pure pandas. Rows of ``training.txt`` / ``testing.txt`` are
``path x1..x5 y1..y5 gender smile glasses pose`` with Windows ``\\`` separators, often a leading
space and CRLF endings. MTFL's codes map onto the CelebA columns ``Male`` (gender 1), ``Smiling``
(smile 1) and ``Eyeglasses`` (glasses 1); the other 37 attributes are unknown (absent columns,
-1 in :func:`facray.data.celeba.labels_matrix`). Landmarks use CelebA's column names.
"""
from __future__ import annotations

from pathlib import Path, PureWindowsPath

import numpy as np
import pandas as pd

from facray.data.celeba import LANDMARK_COLUMNS
from facray.data.errors import DatasetError, where
from facray.data.folder import inside_root

MTFL_FILES = {"training.txt": "train", "testing.txt": "test"}
POSES = {1: "left_profile", 2: "left", 3: "frontal", 4: "right", 5: "right_profile"}


def _parse_mtfl_file(path: Path, root: Path, problems: list[str]) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # a BOM is fine
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read MTFL list ({e})") from e
    rows = []
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 15:
            problems.append(f"{where(path, lineno)}: expected 15 fields (path, 10 coordinates, "
                            f"gender, smile, glasses, pose), got {len(parts)}")
            continue
        try:
            coords = [float(v) for v in parts[1:11]]
            gender, smile, glasses, pose = (int(v) for v in parts[11:15])
        except ValueError:
            problems.append(f"{where(path, lineno)}: non-numeric coordinate or code in {parts[1:]}")
            continue
        if gender not in (1, 2) or smile not in (1, 2) or glasses not in (1, 2) or pose not in POSES:
            problems.append(f"{where(path, lineno)}: codes gender={gender} smile={smile} "
                            f"glasses={glasses} pose={pose} out of range (1/2, 1/2, 1/2, 1..5)")
            continue
        if inside_root(root, parts[0]) is None:
            problems.append(f"{where(path, lineno)}: image {parts[0]!r} is outside the dataset folder {root}")
            continue
        relative = Path(*PureWindowsPath(parts[0]).parts)
        xs, ys = coords[:5], coords[5:]
        row = {"image_id": relative.as_posix(), "path": str(root / relative),
               "Male": int(gender == 1), "Smiling": int(smile == 1),
               "Eyeglasses": int(glasses == 1), "pose": pose, "line": lineno}
        # MTFL lists all x then all y; CelebA interleaves (x, y) per point.
        for k in range(5):
            row[LANDMARK_COLUMNS[2 * k]] = xs[k]
            row[LANDMARK_COLUMNS[2 * k + 1]] = ys[k]
        rows.append(row)
    return rows


def read_mtfl(root: str | Path, files: tuple[str, ...] | None = None,
              skip_missing: bool = False) -> pd.DataFrame:
    """Read MTFL under ``root`` into a table (one row per list row).

    ``files`` defaults to whichever of ``training.txt`` (split "train") and ``testing.txt``
    (split "test") exist. Missing images raise unless ``skip_missing``; the count of skipped rows
    is in ``table.attrs["skipped"]``.
    """
    root = Path(root).expanduser().resolve()
    names = files or tuple(f for f in MTFL_FILES if (root / f).is_file())
    if not names:
        raise DatasetError(f"{root}: no MTFL list file (training.txt / testing.txt)")
    problems: list[str] = []
    frames = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{path}: MTFL list file not found")
        rows = _parse_mtfl_file(path, root, problems)
        frame = pd.DataFrame(rows)
        frame["split"] = MTFL_FILES.get(name, "train")
        frame["source_file"] = name
        frames.append(frame)
    if problems:
        raise DatasetError(f"{root}: {len(problems)} malformed MTFL row(s)", problems)
    table = pd.concat(frames, ignore_index=True)
    for c in ("Male", "Smiling", "Eyeglasses"):
        table[c] = table[c].astype(np.int8)
    for c in LANDMARK_COLUMNS:
        table[c] = table[c].astype(np.float32)
    exists = np.array([Path(p).is_file() for p in table["path"]])
    if not exists.all():
        missing = table.loc[~exists]
        if not skip_missing:
            raise DatasetError(f"{root}: {len(missing)} listed image(s) missing (pass skip_missing "
                               "/ --skip-missing to go on without them)",
                               [f"{where(root / f, ln)}: {p} does not exist"
                                for f, ln, p in zip(missing["source_file"], missing["line"], missing["path"])])
        table = table.loc[exists].reset_index(drop=True)
    table["split"] = pd.Categorical(table["split"], categories=["train", "val", "test"])
    table.attrs.update(image_kind="wild", root=str(root), warnings=[],
                       skipped={"missing_image": int((~exists).sum())})
    return table
