"""Paths or URIs: one way to read and write files on local disk and on the storage a cluster shares.

Pure Python + pyarrow; runs wherever files are touched (driver, Ray actors, Train workers).
``--prepared``, ``prepare --out``, ``label --images`` and ``label --out`` take a local path or any
URI pyarrow reads (``s3://``, ``gs://``, ``hdfs://``, ``file://``). ``pathlib.Path`` cannot hold a
URI (``Path("s3://b/x")`` is ``s3:/b/x``), so locations stay strings and are joined here.

S3-compatible servers (MinIO, Ceph, moto): set ``AWS_ENDPOINT_URL`` as for the AWS CLI and boto3;
pyarrow does not read it, so :func:`filesystem` passes it on. Credentials come from the usual AWS
variables or files.
"""
from __future__ import annotations

import fnmatch
import functools
import os
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    """``scheme://...`` (not a Windows drive letter, not a local path that happens to contain ':')."""
    text = str(location)
    return "://" in text and len(text.split("://", 1)[0]) > 1 and not os.path.exists(text)


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI. Filesystems are cached per
    scheme and bucket: building one for ``s3://`` may ask the network for the bucket's region,
    which must not happen once per image."""
    text = str(location)
    if not is_uri(text):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    if "?" in text:  # explicit options (endpoint_override=..., region=...): pyarrow parses them
        return pafs.FileSystem.from_uri(text)
    parsed = urlparse(text)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return _cached_filesystem(parsed.scheme, parsed.netloc, endpoint if parsed.scheme == "s3" else None), \
        path_inside(text)


@functools.lru_cache(maxsize=32)
def _cached_filesystem(scheme: str, netloc: str, endpoint: str | None) -> pafs.FileSystem:
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        return pafs.S3FileSystem(endpoint_override=parsed.netloc, scheme=parsed.scheme,
                                 region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"))
    return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]


def path_inside(location: str) -> str:
    """The path :func:`filesystem` would return for ``location``, without building a filesystem
    (which for ``s3://`` may ask the network for the bucket's region): for listing many files."""
    if not is_uri(location):
        return os.path.abspath(os.path.expanduser(str(location)))
    parsed = urlparse(str(location))
    if parsed.scheme in ("s3", "gs", "gcs"):
        return (parsed.netloc + parsed.path).rstrip("/")
    return parsed.path


def staging_name(uri: str) -> str:
    """A relative local path that names ``uri`` readably: ``s3://bucket/runs/x`` -> ``s3/bucket/runs/x``."""
    parsed = urlparse(str(uri))
    return os.path.join(parsed.scheme, parsed.netloc or "_", *[p for p in parsed.path.split("/") if p not in ("", ".", "..")])


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for paths and URIs alike."""
    text = str(location)
    if is_uri(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(text, *parts)


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file (an object store writes it as one object: readers never see half)."""
    fs, path = filesystem(location)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode("utf-8"))


def delete_file(location: str) -> None:
    """Remove one file; nothing to do when it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete(location: str) -> None:
    """Remove a file, or a folder and everything under it; nothing to do when neither is there."""
    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def delete_dir(location: str) -> None:
    """Remove a folder and everything under it; nothing to do when it does not exist."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def list_files(location: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under ``location`` (recursive), as locations of the same kind, sorted."""
    fs, path = filesystem(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [str(location)]
    if info.type == pafs.FileType.NotFound:
        return []
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    found = [e.path for e in entries if e.type == pafs.FileType.File
             and (not suffixes or e.path.lower().endswith(suffixes))]
    if is_uri(str(location)):
        scheme = str(location).split("://", 1)[0]
        return sorted(f"{scheme}://{p}" for p in found)
    return sorted(found)


def mirror(source: str, target: str, synced: dict | None = None, skip: frozenset[str] = frozenset(),
           last: tuple[str, ...] = ()) -> int:
    """Make the files under ``target`` those under ``source`` (paths or URIs, either way round):
    copy each file that changed since the two were last in step, delete the files ``source``
    lacks. Returns the number of files copied.

    ``synced``: what was in step, ``{relative path: [source signature, target signature]}`` (a
    signature is ``[size, mtime_ns]`` as that side lists it), kept by the caller between calls and
    updated here; a file is copied unless both sides still list what it records, so neither a
    copy made in the other direction nor a same-size rewrite is mistaken for unchanged. Empty or
    None: everything is copied. ``skip``: ``fnmatch`` patterns; paths with a folder or file that
    matches one (at any depth) are neither copied nor deleted. ``last``: file names copied after
    all others (a folder's "finished" markers: an interrupted copy never shows them without what
    they describe)."""
    synced = {} if synced is None else synced
    src_fs, src_root = filesystem(source)
    dst_fs, dst_root = filesystem(target)
    wanted, present = _tree(src_fs, src_root, skip), _tree(dst_fs, dst_root, skip)
    changed = [rel for rel, info in wanted.items()
               if rel not in present or synced.get(rel) != [_signature(info), _signature(present[rel])]]
    for rel in sorted(changed, key=lambda r: (r.rsplit("/", 1)[-1] in last, r)):
        dst = f"{dst_root}/{rel}"
        dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(f"{src_root}/{rel}", dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
        synced[rel] = [_signature(wanted[rel]), _signature(dst_fs.get_file_info(dst))]
    for rel in present.keys() - wanted.keys():
        dst_fs.delete_file(f"{dst_root}/{rel}")
    for rel in list(synced):
        if rel not in wanted:
            del synced[rel]
    return len(changed)


def _signature(info: pafs.FileInfo) -> list:
    return [info.size, info.mtime_ns]


def _tree(fs: pafs.FileSystem, root: str, skip: frozenset[str]) -> dict[str, pafs.FileInfo]:
    """Relative path -> FileInfo of every file under ``root`` outside ``skip``."""
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return {}
    found = {}
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = entry.path[len(root):].lstrip("/")
        if entry.type == pafs.FileType.File and not any(fnmatch.fnmatchcase(part, pattern)
                                                         for part in rel.split("/") for pattern in skip):
            found[rel] = entry
    return found
