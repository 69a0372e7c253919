"""Which files are input images: the one listing rule for ``label``, ``prepare`` and ``data check``.

Pure Python (no Ray, no torch). A source is a folder (walked recursively, directory links followed,
loops guarded), a glob, a ``.txt``/``.lst`` list of paths, one file, or a URI pyarrow lists.

A file is an input when its suffix names an image format (:data:`IMAGE_SUFFIXES`, decodable or
not: a HEIC photo the decoder cannot read still becomes an error row naming its format) or, for
any other suffix, when its first bytes carry an image signature (a JPEG saved as ``.dat``). Every
other file is *skipped* and counted by reason in :attr:`Listing.skipped`, so a summary can say what
was left out and why; nothing is dropped without a count. Readability is not judged here: a file
that looks like an image but fails to decode is an input, and the decoder reports it.
"""
from __future__ import annotations

import glob
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from facray import storage
from facray.data.errors import DatasetError, where
from facray.data.imageio import sniff_format

# Suffixes of image formats: what OpenCV/Pillow decode here, plus formats users hold that this
# install may not decode (HEIC/HEIF, JPEG XL): listed all the same, so they get an error row.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff",
                  ".avif", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".pbm", ".pgm", ".ppm", ".pnm")
SIGNATURE_BYTES = 64  # enough for every signature imageio.sniff_format knows (ISO-BMFF brands)
LIST_SUFFIXES = (".txt", ".lst")


@dataclass
class Listing:
    """The inputs of a source and what was left out.

    ``paths``: absolute paths (or URIs), sorted, one per input file (a file reached through two
    directory links is two inputs, as a viewer shows it twice). ``skipped``: reason -> count for
    files that are not inputs (``not an image`` with ``skipped_examples`` naming a few,
    ``not a regular file``, ``directory link loop``, ``unreadable folder``).
    """
    paths: list[str]
    skipped: Counter = field(default_factory=Counter)
    skipped_examples: list[str] = field(default_factory=list)
    root: str = ""  # what inputs are named relative to (image_ids): the folder, glob folder or list's folder

    def image_ids(self, names: list[str]) -> list[str]:
        """Each input's name relative to :attr:`root` with ``/`` separators (``000001.jpg``,
        ``people/ann.png``): the key CelebA's and FFHQ's lists use. An input outside the root (an
        absolute entry of a list file) keeps its full name."""
        return [image_id(name, self.root) for name in names]

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(f"{printable_name(path)} ({reason})")

    def format_skipped(self) -> str:
        """``skipped 3 file(s): not an image 2, not a regular file 1 (e.g. ...)`` or ``""``."""
        if not self.skipped:
            return ""
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        return f"skipped {sum(self.skipped.values())}: {counts} (e.g. {'; '.join(self.skipped_examples[:3])})"


def inside_root(root: str | Path, name: str) -> Path | None:
    """``root / name`` for a name a list file gives, or None when it would leave ``root``.

    Both separators count (MTFL's lists use Windows ``\\``); an absolute name, a drive letter or
    ``..`` components that climb out of ``root`` leave it. Judged on the names, not by resolving
    links: a symlink inside the root stays allowed (folders are often linked in).
    """
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if name.startswith(("/", "\\")) or (parts and len(parts[0]) == 2 and parts[0][1] == ":"):
        return None
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            return None
    normal = os.path.normpath("/".join(parts)) if parts else "."
    return Path(root) / normal


def has_image_signature(path: str, read=None) -> bool:
    """Do the file's first bytes carry an image format's signature (see ``imageio.sniff_format``)?"""
    try:
        if read is not None:
            head = read(path)
        else:
            with open(path, "rb") as f:
                head = f.read(SIGNATURE_BYTES)
    except OSError:
        return False
    return sniff_format(head) is not None


def _classify(path: str, listing: Listing) -> bool:
    """True if the local file ``path`` is an input; else count why it is skipped."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a dangling link or a link loop: an input if named like an image (error row)
        if path.lower().endswith(IMAGE_SUFFIXES):
            return True
        listing.skip("broken link", path)
        return False
    if not stat.S_ISREG(mode):  # never open a FIFO or a device to sniff it: it could block
        listing.skip("not a regular file", path)
        return False
    if path.lower().endswith(IMAGE_SUFFIXES) or has_image_signature(path):
        return True
    listing.skip("not an image", path)
    return False


def _walk(top: str, listing: Listing) -> list[str]:
    """Files under ``top``, following directory links; a link back to a folder on its own path
    (a loop) is skipped. Two links to one folder are both walked: both are inputs."""
    found = []
    root = os.stat(top)
    stack = [(top, frozenset({(root.st_dev, root.st_ino)}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError:
            listing.skip("unreadable folder", folder)
            continue
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                st = os.stat(e.path)
                key = (st.st_dev, st.st_ino)
                if key in ancestors:
                    listing.skip("directory link loop", e.path)
                else:
                    stack.append((e.path, ancestors | {key}))
            elif _classify(e.path, listing):
                found.append(e.path)
    return found


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob pattern as a regular expression over ``/``-separated paths: ``**/`` any folders (or
    none), ``*`` and ``?`` within one name, ``[...]`` a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _recursive_glob(pattern: str, listing: Listing) -> list[str]:
    """A ``**`` pattern matched against the loop-guarded walk of its fixed leading folder (Python's
    own ``glob`` follows a directory link back to an ancestor until the path grows too long)."""
    parts = pattern.split("/")
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    if not os.path.isdir(base):
        return []
    regex = _glob_regex("/".join(parts[fixed:]))
    # The pattern already says which files the user means: what the walk skips is not reported.
    matched = Listing([])
    return [p for p in _walk(base, matched) if regex.match(os.path.relpath(p, base))]


def image_id(name: str, root: str) -> str:
    """``name`` relative to ``root`` (see :meth:`Listing.image_ids`)."""
    if not root:
        return name
    prefix = root if root.endswith(("/", os.sep)) else root + ("/" if "://" in root else os.sep)
    if not name.startswith(prefix):
        return name
    return name[len(prefix):].replace(os.sep, "/")


def _glob_root(pattern: str) -> str:
    """The folder a glob pattern's matches are under: its path up to the first wildcard."""
    head = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
    return os.path.abspath(head if head.endswith(os.sep) else os.path.dirname(head) or ".")


def list_images(source: str | Path, recursive: bool = True) -> Listing:
    """The inputs of a folder, glob pattern, ``.txt`` list or single file (see the module docstring).

    Paths are absolute (``abspath``, not ``resolve``: a link keeps its own name) and sorted. A list
    file's entries are all inputs whatever their suffix (the user named them); relative entries are
    relative to the list file. Raises :class:`DatasetError` when the source does not exist.
    """
    text = str(source)
    p = Path(text).expanduser()
    listing = Listing([])
    if p.is_dir():
        if recursive:
            paths = _walk(str(p), listing)
        else:
            paths = [str(p / name) for name in os.listdir(p) if not (p / name).is_dir()]
            paths = [q for q in paths if _classify(q, listing)]
    elif p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
        paths = []
        problems = []
        for lineno, line in enumerate(lines, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(line).expanduser()
                if q.is_absolute():  # the documented form: a list of absolute paths
                    paths.append(str(q))
                elif (inside := inside_root(p.parent, line)) is None:
                    problems.append(f"{where(p, lineno)}: {line!r} leaves the list's folder {p.parent}; "
                                    "give it as an absolute path")
                else:
                    paths.append(str(inside))
        if problems:
            raise DatasetError(f"{p}: {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} outside its folder",
                               problems)
    elif p.is_file():
        paths = [str(p)]
    elif "**" in text:
        paths = _recursive_glob(os.path.expanduser(text), listing)
    elif any(ch in text for ch in "*?["):
        paths = [q for q in glob.glob(os.path.expanduser(text)) if not os.path.isdir(q) and _classify(q, listing)]
    else:
        raise DatasetError(f"{source}: no such folder, file or glob match")
    listing.paths = sorted(os.path.abspath(q) for q in paths)
    if p.is_dir():
        listing.root = os.path.abspath(p)
    elif p.is_file():
        listing.root = os.path.abspath(p.parent)
    else:
        listing.root = _glob_root(os.path.expanduser(text))
    return listing


def list_uri_images(uri: str) -> Listing:
    """The inputs under a pyarrow-readable URI (``s3://bucket/prefix``, ``gs://``, ``file://``),
    by the same rule: an image suffix, else an image signature in the object's first bytes."""
    fs, _ = storage.filesystem(uri)
    listing = Listing([])

    def head(location: str) -> bytes:
        with fs.open_input_stream(storage.path_inside(location)) as f:
            return f.read(SIGNATURE_BYTES)

    for location in storage.list_files(uri):
        if location.lower().endswith(IMAGE_SUFFIXES) or has_image_signature(location, head):
            listing.paths.append(location)
        else:
            listing.skip("not an image", location)
    base = uri.split("?", 1)[0].rstrip("/")  # listed locations carry no ?endpoint_override=... options
    single = listing.paths == [base]  # one object named: ids relative to its prefix
    listing.root = base.rsplit("/", 1)[0] if single else base
    return listing


def list_source(source: str) -> Listing:
    """:func:`list_uri_images` for a URI, :func:`list_images` otherwise."""
    return list_uri_images(source) if storage.is_uri(source) else list_images(source)


def is_utf8_name(path: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds them as lone surrogates, which
    Arrow, CSV writers and terminals refuse)."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable_name(path: str) -> str:
    """``path`` with non-UTF-8 bytes written as ``\\xNN`` escapes, for messages. Not unique on its
    own (a file may be literally named ``caf\\xe9.jpg``): output rows use :func:`printable_names`."""
    return path if is_utf8_name(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


NOT_UTF8_MARK = " (name not UTF-8)"


def printable_names(paths: list[str]) -> list[str]:
    """One printable, distinct name per path, for output rows keyed by name.

    UTF-8 names stay as they are. A name that is not UTF-8 gets its ``\\xNN`` escape; should that
    equal another input's name (a file literally named ``caf\\xe9.jpg``) or another escape, a mark
    and then a counter are added until it is distinct, so no two inputs can share a row. Stable for
    the same set of paths (a re-run resumes by these names).
    """
    names = [p if is_utf8_name(p) else None for p in paths]
    taken = {n for n in names if n is not None}
    for i, p in enumerate(paths):
        if names[i] is None:
            name, base, k = printable_name(p), printable_name(p) + NOT_UTF8_MARK, 1
            while name in taken:
                name, k = (base if k == 1 else f"{base} #{k}"), k + 1
            names[i] = name
            taken.add(name)
    return names


def read_image_folder(source: str | Path, split: str = "unlabelled") -> pd.DataFrame:
    """A metadata table (``image_id``, ``path``, ``split``) for unlabelled images; what the listing
    skipped is in ``table.attrs["skipped"]``."""
    listing = list_images(source)
    paths = listing.paths
    if not paths:
        raise DatasetError(f"{source}: no images found ({listing.format_skipped() or 'the folder is empty'})")
    root = Path(source).expanduser()
    base = root if root.is_dir() else Path(os.path.commonpath(paths)).parent if len(paths) > 1 else Path(paths[0]).parent
    ids = [os.path.relpath(q, os.path.abspath(base)) for q in paths]
    table = pd.DataFrame({"image_id": ids, "path": paths, "split": split})
    table["identity"] = np.int64(-1)
    notes = [listing.format_skipped()] if listing.skipped else []
    table.attrs.update(image_kind="wild", root=str(base), warnings=notes, skipped=dict(listing.skipped))
    return table
