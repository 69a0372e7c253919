"""``facray data check``: validate a CelebA or MTFL folder and summarise it.

Runs on the driver; no Ray. Reads the list files (any malformed row is an error naming file and
line), then decodes every image in a thread pool (OpenCV releases the GIL) to find unreadable ones.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.data.celeba import labels_matrix, locate_list_files, read_celeba
from facray.data.errors import DatasetError
from facray.data.imageio import ImageError, read_image
from facray.data.mtfl import read_mtfl
from facray.training.metrics import MIN_CLASS_EXAMPLES, class_counts, one_sided_attributes


@dataclass
class CheckReport:
    root: str
    layout: str
    images: int
    splits: dict[str, int]
    identities: int
    balance: pd.DataFrame  # attribute -> positives, rate
    unreadable: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def format(self) -> str:
        lines = [f"{self.root}  [{self.layout}]", f"  images (labelled): {self.images}",
                 "  splits: " + ", ".join(f"{k} {v}" for k, v in self.splits.items())]
        if self.identities:
            lines.append(f"  identities: {self.identities}")
        for k, v in self.skipped.items():
            if v:
                lines.append(f"  skipped ({k}): {v}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        lines.append("  label balance (positives / rate):")
        for attr, row in self.balance.iterrows():
            lines.append(f"    {attr:<20} {int(row.positives):>7}  {row.rate:6.1%}")
        lines.append(f"  unreadable images: {len(self.unreadable)}")
        lines += [f"    {u}" for u in self.unreadable[:20]]
        if len(self.unreadable) > 20:
            lines.append(f"    ... and {len(self.unreadable) - 20} more")
        return "\n".join(lines)


def find_unreadable(paths: list[str], workers: int = 4) -> list[str]:
    """Messages for every path that fails to decode (in input order)."""
    def probe(path: str) -> str | None:
        try:
            read_image(path)
        except ImageError as e:
            return str(e)
        return None
    with ThreadPoolExecutor(workers) as pool:
        return [m for m in pool.map(probe, paths) if m is not None]


def detect_layout(root: Path) -> str:
    if any((root / f).is_file() for f in ("training.txt", "testing.txt")):
        return "mtfl"
    return "celeba"


def read_dataset(root: str | Path, skip_missing: bool = False) -> tuple[pd.DataFrame, str]:
    """The labelled table of a dataset folder in any layout facray reads (MTFL; CelebA's lists,
    CSV, or a CelebA-style list with a subset of the attributes) and the layout's name. With no
    partition file the splits are ABM-CNN's 70/15/15 (a warning in ``attrs["warnings"]``)."""
    root = Path(root).expanduser().resolve()
    layout = detect_layout(root)
    if layout == "mtfl":
        return read_mtfl(root, skip_missing=skip_missing), layout
    files = locate_list_files(root)
    split = "official" if files.partition is not None else "abm"
    table = read_celeba(root, split=split, skip_missing=skip_missing)
    if split == "abm":
        table.attrs["warnings"].append("no list_eval_partition: splits shown are ABM-CNN's 70/15/15")
    return table, f"celeba/{table.attrs['layout']}/{table.attrs['image_kind']}"


def check_dataset(root: str | Path, decode: bool = True, skip_missing: bool = False) -> CheckReport:
    """Read ``root`` (CelebA layouts or MTFL) and report counts, balance and unreadable images.

    Raises :class:`DatasetError` on a broken layout (missing/malformed list files, missing images
    unless ``skip_missing``).
    """
    root = Path(root).expanduser().resolve()
    table, layout = read_dataset(root, skip_missing)
    attrs = [a for a in ATTRIBUTES if a in table.columns]
    positives = table[attrs].sum()
    balance = pd.DataFrame({"positives": positives, "rate": positives / max(len(table), 1)})
    splits = table["split"].value_counts().reindex(["train", "val", "test"], fill_value=0).to_dict()
    warnings = list(table.attrs.get("warnings", [])) + few_examples_warnings(table)
    identities = int(table["identity"].nunique()) if "identity" in table and (table["identity"] >= 0).any() else 0
    unreadable = find_unreadable(table["path"].tolist()) if decode else []
    return CheckReport(str(root), layout, len(table), splits, identities, balance, unreadable,
                       table.attrs.get("skipped", {}), warnings)


def few_examples_warnings(table: pd.DataFrame) -> list[str]:
    """One line per split naming every labelled attribute with fewer than
    :data:`facray.training.metrics.MIN_CLASS_EXAMPLES` positives or negatives there, and one per
    attribute whose training split holds a single class (no model is trained for it)."""

    out = []
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        if not len(rows):
            continue
        labels = labels_matrix(rows)
        pos, neg = class_counts(labels)
        few = [f"{a} {int(pos[j])}+/{int(neg[j])}-" for j, a in enumerate(ATTRIBUTES)
               if pos[j] + neg[j] and min(pos[j], neg[j]) < MIN_CLASS_EXAMPLES]
        if few:
            out.append(f"{split}: {len(few)} attribute(s) with fewer than {MIN_CLASS_EXAMPLES} positives or "
                       f"negatives (their figures there mean little): {', '.join(few)}")
        if split == "train":
            out += list(one_sided_attributes(labels, ATTRIBUTES).values())
    return out


__all__ = ["CheckReport", "DatasetError", "check_dataset", "find_unreadable"]
