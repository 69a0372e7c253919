"""``facray label``: label images in bulk into one CSV (or Parquet) on Ray Data. Runs on the
driver; decoding, cropping, sketching and prediction run in Ray actors (the pure per-batch code is
:mod:`facray.labelling`).

Flow: list the inputs (folder, glob, ``.txt`` list or a pyarrow URI) -> load and verify the model
(fails before any image is read) -> skip inputs already labelled (same path, size, mtime and model)
-> Ray Data: read -> decode -> detect + crop -> sketch if needed -> predict (GPU or CPU actors) ->
Parquet parts -> the driver merges old and new rows, sorts by path and replaces the final file
atomically (write to a temporary name, then ``os.replace``). An interrupted run leaves the old
output untouched and its finished parts behind, which the next run reuses.

Memory stays bounded by Ray Data's streaming (blocks in flight), not by the number of images; the
driver holds only the small output table at the end.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import socket
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.config import absolute_paths, option
from facray.data.errors import DatasetError, OutputError, OutputLockedError
from facray.labelling import (OUTPUT_COLUMNS, PROB_COLUMNS, BatchLabeller, encode_output, format_stage_seconds,
                              label_batch, output_table, preprocessing_for, stage_seconds)
from facray.predictors.format import Manifest, PredictorError, read_weights_file
from facray.predictors.locate import locate_predictor
from facray.predictors.thresholds import PredictorInfo
# a process about 0.5 GB); facray.predictors.networks is imported where a predictor is built.

# What decides whether a finished row is reused: the input unchanged (size, mtime), the same
# model, the same faces mode (--faces largest | all).
KEY_COLUMNS = ["path", "size", "mtime_ns", "model", "faces"]


@dataclass
class LabelConfig:
    images: str = option("", "folder (recursive), glob, .txt list of paths, or URI", path=True)
    model: str = option("", "predictor folder or MLflow URI (models:/name@alias, runs:/...)", path=True)
    out: str = option("labels.csv", "output file (.csv; .parquet or .txt with --format)", path=True)
    format: Literal["csv", "parquet", "celeba"] = option(
        "csv", "csv | parquet (decisions as nullable integers) | celeba (list_attr_celeba.txt's layout: "
               "image_id and -1/1 per attribute; rows with errors go to <out>.errors.csv)")
    overwrite: bool = option(False, "relabel everything instead of resuming")
    batch_size: int = option(64, "images per batch")
    layout: Literal["split", "fused"] = option("split", "split: torch-free CPU actors decode and crop for "
                                                      "predict actors (torch and the weights once per predict "
                                                      "actor); fused: each actor does everything (CPU only)")
    num_actors: int = option(0, "predict actors (fused: actors); 0 = one per GPU share, on CPU one per 4 "
                                "CPUs (fused: one per CPU), capped by memory")
    cpus_per_actor: float = option(0.5, "CPUs reserved per actor (a fraction, so Ray Data's read and "
                                        "write tasks always find a CPU)")
    gpus: float = option(0.0, "GPUs per predict actor (0 = CPU)")
    preprocess_actors: int = option(0, "split: CPU actors decoding and cropping; 0 = one per CPU (with GPUs: "
                                       "per CPU left after the predict actors), capped by memory")
    crop: Literal["detect", "full", "auto"] = option("detect", "detect | full | auto (see facray prepare)")
    faces: Literal["largest", "all"] = option("largest", "largest: one row per image, its largest face "
                                                        "(n_faces says how many were found) | all: one row per "
                                                        "face (face_index 0 = the largest), for group photos")
    detector: str = option("auto", "face detector: auto (YuNet if yuface is installed, else Haar) | yunet | "
                                   "haar | a YuNet .onnx file")
    max_pixels: int = option(50_000_000, "refuse larger images")
    generator: str | None = option(None, "TorchScript generator file: z -> image", path=True)
    num: int = option(0, "with --generator: images to generate")
    seed: int = option(0, "with --generator: first seed (one seed per image)")
    z_dim: int = option(0, "with --generator: latent size (0 = the module's z_dim)")
    tracking_uri: str | None = option(None, "MLflow URI for models:/ and runs:/ models", path=True)
    torch_threads: int = option(0, "torch threads per actor that predicts; 0 = fused 1, split on CPU "
                                   "the predict actor's share of the CPUs (at most 4)")
    compile: bool = option(False, "torch.compile the predictor's networks (one H100: 2.8-3x the forward; "
                                  "the first batches wait for the compiler)")


# ---- inputs and previous results (driver, pure) -------------------------------------------------

def list_inputs(images: str) -> pd.DataFrame:
    """``path``, ``size``, ``mtime_ns`` (-1 when unknown) and ``error`` of every input image, by
    the one listing rule (:mod:`facray.data.folder`); what it skipped, and why, is
    ``attrs["skipped_text"]`` (:meth:`facray.data.folder.Listing.format_skipped`).

    A local file whose name is not UTF-8 is listed under a distinct escaped name with an error:
    Arrow and CSV cannot hold the name, and one such file must not sink the job.
    """
    from facray.data.folder import is_utf8_name, list_source, printable_names
    is_uri = storage.is_uri(images)
    listing = list_source(images)
    paths = listing.paths
    if not paths:
        raise DatasetError(f"{images}: no images found ({listing.format_skipped() or 'nothing there'})")
    sizes, mtimes = [], []
    if is_uri:
        fs, _ = storage.filesystem(images)
        for info in fs.get_file_info([storage.path_inside(p) for p in paths]):
            sizes.append(info.size if info.size is not None else -1)
            mtimes.append(info.mtime_ns if info.mtime_ns is not None else -1)
    else:
        for p in paths:
            try:
                st = os.stat(p)
                sizes.append(st.st_size)
                mtimes.append(st.st_mtime_ns)
            except OSError:
                sizes.append(-1)
                mtimes.append(-1)
    names = printable_names(paths)
    errors = ["" if is_utf8_name(p) else f"{n}: file name is not valid UTF-8; rename the file to label it"
              for p, n in zip(paths, names)]
    table = pd.DataFrame({"path": names, "image_id": listing.image_ids(names), "size": sizes, "mtime_ns": mtimes,
                          "error": errors})
    table.attrs["skipped_text"] = listing.format_skipped()
    return table


def index_path(out: str) -> str:
    return out + ".index.parquet"


def errors_path(out: str) -> str:
    """Where ``--format celeba`` writes the rows its list cannot hold (errors), with their reason."""
    return out + ".errors.csv"


def parts_dir(out: str) -> str:
    return out + ".parts"


def _read_parquet(location: str) -> pd.DataFrame:
    fs, path = storage.filesystem(location)
    return pd.read_parquet(path, filesystem=fs)


def read_output(location: str, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return _read_parquet(location)
    return pd.read_csv(io.BytesIO(storage.read_bytes(location)), keep_default_na=False, na_values=[""],
                       dtype={"path": str, "error": str, "model": str})


def previous_rows(out: str, fmt: str) -> pd.DataFrame:
    """Rows already labelled: the final output joined with its index, plus parts of an interrupted
    run. Unreadable leftovers are ignored (those images are simply labelled again)."""
    frames = []
    if storage.is_file(out) and storage.is_file(index_path(out)):
        keys = _read_parquet(index_path(out))
        # An index of an older facray has no format: it was csv or parquet, as asked now.
        written_as = str(keys["format"].iloc[0]) if "format" in keys and len(keys) else \
            (fmt if fmt != "celeba" else "")
        if written_as != fmt:
            pass  # another format under the same name: its rows are labelled again, never misread
        elif fmt == "celeba":  # the list holds decisions only: its index holds the whole rows
            frames.append(keys)
        else:
            rows = read_output(out, fmt).drop(columns=["model"])
            if "face_index" not in rows:
                rows["face_index"] = 0
            if "face_index" not in keys:  # an index of an older facray: one row per image
                keys = keys.assign(face_index=0, faces="largest")
            frames.append(rows.merge(keys, on=["path", "face_index"], how="inner"))
    for part in storage.list_files(parts_dir(out), (".parquet",)):
        try:
            frames.append(_read_parquet(part))
        except Exception:  # noqa: BLE001 - a part cut off mid-write
            continue
    if not frames:
        return pd.DataFrame(columns=list(dict.fromkeys(OUTPUT_COLUMNS + KEY_COLUMNS)))
    rows = pd.concat([f.assign(_source=i) for i, f in enumerate(frames)], ignore_index=True)
    # Rows of an older facray: no faces mode (it labelled the largest face only), one face each.
    rows["faces"] = rows["faces"].fillna("largest") if "faces" in rows else "largest"
    rows["face_index"] = rows["face_index"].fillna(0) if "face_index" in rows else 0
    # An image's rows all come from one source, the newest (output, then parts in order): never
    # face 0 of one run beside face 2 of another.
    rows = rows[rows["_source"] == rows.groupby("path")["_source"].transform("max")]
    return rows.drop(columns="_source").drop_duplicates(subset=["path", "face_index"], keep="last")


def complete_images(done: pd.DataFrame) -> pd.Series:
    """Per path of ``done`` (rows of :func:`previous_rows`), whether all its rows are there: one
    row, or with ``--faces all`` one per face found (``face_index`` 0 .. n_faces-1; a run killed
    between two parts may have written some of an image's faces only)."""
    if done.empty:
        return pd.Series(dtype=bool)
    n_faces = pd.to_numeric(done["n_faces"], errors="coerce").fillna(1).clip(lower=1)
    per = pd.DataFrame({"path": done["path"], "index": done["face_index"], "n": n_faces})
    per["expected"] = per["n"].where(done["faces"] == "all", 1)
    grouped = per.groupby("path").agg(found=("index", "nunique"), expected=("expected", "max"))
    return grouped["found"] >= grouped["expected"]


def write_atomically(rows: pd.DataFrame, out: str, fmt: str) -> None:
    """Write ``out`` so readers see the old or the new file, never half of one: locally a
    temporary file and ``os.replace``; on an object store one object write (atomic there). The
    index (path, size, mtime, model; for ``celeba``, whose list holds decisions only, the whole
    rows) goes beside it for resuming; ``celeba`` writes the rows its list cannot hold to
    :func:`errors_path`. The bytes are :func:`facray.labelling.encode_output`'s."""
    data, left_out = encode_output(rows, fmt)
    index = io.BytesIO()
    (output_table(rows).assign(**{k: rows[k].to_numpy() for k in KEY_COLUMNS[1:]})
     if fmt == "celeba" else rows[[*KEY_COLUMNS, "face_index"]]).assign(format=fmt).to_parquet(index, index=False)
    # The index says which rows of the output are current: it goes first out of the way and last
    # back in, so a failure between the two writes (a full disk) never pairs new keys with old rows.
    storage.delete_file(index_path(out))
    storage.delete_file(errors_path(out))  # (a celeba run's, under the same name)
    if fmt == "celeba":
        if len(left_out):
            _write_whole(errors_path(out), left_out.to_csv(index=False).encode())
    _write_whole(out, data)
    _write_whole(index_path(out), index.getvalue())


def _write_whole(location: str, data: bytes) -> None:
    """Write a file readers see whole or not at all: one object on a store; locally a temporary
    name then ``os.replace``, the temporary file removed if the write fails (a full disk). A
    failure is an :class:`OutputError` naming the location and the problem."""
    try:
        if storage.is_uri(location):
            storage.write_bytes(location, data)
            return
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(location).with_name(f".{Path(location).name}.tmp-{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, location)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise OutputError(f"{location}: cannot write ({getattr(e, 'strerror', None) or e})") from None


@contextlib.contextmanager
def output_lock(out: str):
    """Hold an exclusive lock on ``out`` for the whole run, or refuse at once.

    ``flock`` on ``<out>.lock`` (local outputs; the kernel drops it when the process dies, so a
    killed run never leaves a stale lock; a run that ends, refused or not, removes the file). An object store has no locks: a URI output is locked
    on this machine, where every ``ray job submit`` driver of the cluster runs (the head).
    """
    if storage.is_uri(out):
        folder = Path(tempfile.gettempdir()) / "facray-label-locks"
        folder.mkdir(exist_ok=True)
        lock_file = folder / (hashlib.sha256(out.encode()).hexdigest()[:24] + ".lock")
    else:
        lock_file = Path(out + ".lock")
    while True:
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputLockedError(f"{out}: another facray label run is writing it ({holder}, lock {lock_file}); "
                                    "wait for it or choose another --out") from None
        # The previous holder removes the file as it finishes: if it did so between our open and
        # our lock, we hold a lock on a file nobody else will open; take the new one instead.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        lock_file.unlink(missing_ok=True)  # while still held: no lock file outlives its run
        handle.close()  # releases the lock


# ---- Ray actors -----------------------------------------------------------------------------------

def _predictor_from(manifest: Manifest, weights_ref, cfg: LabelConfig, device: str = "cpu"):
    """Build the predictor from the verified parts the driver gave: the manifest, and the weights
    file's bytes in the object store. Actors never open the tracking store (a cluster's workers
    may not reach it)."""
    import ray

    from facray.predictors.networks import build_predictor, load_weights
    weights = load_weights(ray.get(weights_ref[0]), manifest, Path(cfg.model))
    return build_predictor(manifest, weights, device, cfg.compile)


def _check_weights(manifest: Manifest, weights_ref, path: str) -> None:
    import ray

    from facray.predictors.networks import load_weights
    load_weights(ray.get(weights_ref[0]), manifest, Path(path))


def put_verified_weights(blob: bytes, manifest: Manifest, path: Path):
    """The weights file's bytes into the object store, loaded and checked once (tensors only, the
    models the manifest names, their shapes) in a worker that exits afterwards: the driver never
    imports torch (about 0.5 GB a process), and a bad weights file fails before any image is read."""
    import ray
    ref = ray.put(blob)
    check = ray.remote(num_cpus=0.5, max_calls=1)(_check_weights)
    try:
        ray.get(check.remote(manifest, [ref], str(path)))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, PredictorError):
            raise e.cause from None
        raise
    return ref


def _preprocessing(manifest: Manifest, cfg: LabelConfig):
    import cv2
    cv2.setNumThreads(1)
    return preprocessing_for(manifest, cfg.crop, cfg.detector, cfg.max_pixels, cfg.faces)


class LabelActor:
    """Fused layout: decode, crop, sketch and predict in one actor (no object-store hop between)."""

    def __init__(self, manifest: Manifest, weights_ref, cfg: LabelConfig):
        import torch
        torch.set_num_threads(max(1, cfg.torch_threads))
        self.labeller = BatchLabeller(_predictor_from(manifest, weights_ref, cfg), _preprocessing(manifest, cfg))

    def __call__(self, batch):
        return self.labeller(batch)


class PreprocessForLabelActor:
    """Split layout, CPU side: decode, crop and sketch, from the manifest alone (no torch, no weights)."""

    def __init__(self, manifest: Manifest, weights_ref, cfg: LabelConfig):
        self.labeller = BatchLabeller(None, _preprocessing(manifest, cfg))

    def __call__(self, batch):
        return self.labeller.preprocess(batch)


class PredictActor:
    """Split layout, predicting side: the predictor on ``cuda`` if the actor has a GPU, else on CPU."""

    def __init__(self, manifest: Manifest, weights_ref, cfg: LabelConfig):
        import torch
        torch.set_num_threads(max(1, cfg.torch_threads))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.labeller = BatchLabeller(_predictor_from(manifest, weights_ref, cfg, device), None)

    def __call__(self, batch):
        return self.labeller(batch)


class GeneratorActor:
    """Runs a TorchScript generator (z -> image in [-1, 1], NCHW) and saves PNGs named by seed."""

    def __init__(self, generator: str, out_dir: str, z_dim: int, use_gpu: bool):
        import torch
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.net = torch.jit.load(generator, map_location=self.device).eval()
        self.z_dim = z_dim or int(getattr(self.net, "z_dim", 512))
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch):
        import cv2
        import torch
        seeds = np.asarray(batch["id"], np.int64)
        z = torch.stack([torch.randn(self.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        with torch.no_grad():
            images = self.net(z.to(self.device)).float().clamp(-1, 1)
        pixels = ((images.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
        paths = []
        for s, img in zip(seeds, pixels):
            p = self.out_dir / f"seed{int(s):08d}.png"
            cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.shape[-1] == 3 else img)
            paths.append(str(p))
        return {"path": np.array(paths, dtype=object)}


def _set_tracking(cfg: LabelConfig) -> None:
    if cfg.tracking_uri:
        import mlflow
        mlflow.set_tracking_uri(cfg.tracking_uri)


# ---- the job ------------------------------------------------------------------------------------

def generate_images(cfg: LabelConfig, out: str) -> str:
    """Run the generator on Ray (GPU actors with --gpus) and return the folder of PNGs: beside a
    local output, in the temporary folder for a URI output."""
    import ray
    name = out.rsplit("/", 1)[-1].rsplit(".", 1)[0] + "_generated"
    folder = Path(tempfile.gettempdir()) / name if storage.is_uri(out) else Path(out).parent / name
    ds = ray.data.range(cfg.num).map_batches(lambda b: {"id": b["id"] + cfg.seed}, batch_format="numpy")
    ds = ds.map_batches(GeneratorActor, fn_constructor_args=(cfg.generator, str(folder), cfg.z_dim, cfg.gpus > 0),
                        batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor,
                        num_gpus=cfg.gpus or None, compute=ray.data.ActorPoolStrategy(size=1))
    written = ds.count()
    print(f"generated {written} images (seeds {cfg.seed}..{cfg.seed + cfg.num - 1}) in {folder}", flush=True)
    return str(folder)


ACTOR_MEMORY = 1.0e9  # an actor that predicts: torch, OpenCV, the model and a batch of images
# One that only decodes and crops: no torch, 0.18 GB PSS each on 2 cores (bench/label.py); 1024 px
# inputs decoded 8 at a time add 25 MB.
PREPROCESS_ACTOR_MEMORY = 0.4e9


def pool_sizes(cfg: LabelConfig, resources: dict) -> tuple[int, int, int]:
    """(label or predict actors, preprocess actors, torch threads per predicting actor) for
    ``resources`` (``ray.cluster_resources()``): what the user gave, else sized to the cluster.

    Split (the default): with GPUs one predict actor per GPU share and every CPU left over
    decoding, so no GPU waits on one CPU stage; on CPU one predict actor per 4 CPUs with a thread
    per CPU (at most 4) and a preprocess actor per CPU. The CPUs are oversubscribed on purpose:
    Ray Data's backpressure pauses the preprocess actors whenever prediction falls behind, so the
    cores go where the work is (2 cores: the fused layout's speed with 0.3 GB less, bench/label.py).
    Fused: one actor per CPU. Never more actors than the memory holds."""
    cpus, gpus, memory = int(resources.get("CPU", 1)), resources.get("GPU", 0), resources.get("memory", ACTOR_MEMORY)
    if cfg.layout == "fused":
        return cfg.num_actors or max(1, min(cpus, int(memory // ACTOR_MEMORY))), 0, cfg.torch_threads or 1
    if cfg.gpus > 0:
        predict = cfg.num_actors or max(1, int(gpus // cfg.gpus))
        threads, spare = cfg.torch_threads or 1, cpus - predict
    else:
        predict = cfg.num_actors or max(1, min(cpus // 4, int(memory // ACTOR_MEMORY) - 1))
        threads, spare = cfg.torch_threads or max(1, min(4, cpus // predict)), cpus
    by_memory = int((memory - predict * ACTOR_MEMORY) // PREPROCESS_ACTOR_MEMORY)
    return predict, cfg.preprocess_actors or max(1, min(spare, by_memory)), threads


# glibc gives each thread of a process its own malloc arena; the decode, detect and forward buffers
# of changing sizes spread over them and are not given back, so an actor grew by ~85 MB from 3,000
# to 20,000 images (2 cores, bench/label.py: actors' PSS 1.45 -> 1.62 GB). Two arenas keep it flat
# (1.45 -> 1.48 GB) at the same speed. Env vars in an actor's runtime_env add to the job's own.
ACTOR_RUNTIME_ENV = {"env_vars": {"MALLOC_ARENA_MAX": "2"}}


def run_pipeline(todo: pd.DataFrame, manifest: Manifest, weights_ref, cfg: LabelConfig, part: str) -> None:
    import ray
    num_actors, preprocess_actors, threads = pool_sizes(cfg, ray.cluster_resources())
    cfg = replace(cfg, num_actors=num_actors, preprocess_actors=preprocess_actors, torch_threads=threads)
    split = cfg.layout == "split"
    print(f"labelling with {num_actors} {'predict' if split else 'CPU'} actor(s) of {threads} torch thread(s)"
          + (f" fed by {preprocess_actors} preprocess actor(s)" if split else ""), flush=True)
    rows_per_block = max(1, min(cfg.batch_size * 4, -(-len(todo) // (4 * max(cfg.num_actors, cfg.preprocess_actors, 1)))))
    bounds = np.arange(0, len(todo), rows_per_block)
    ds = ray.data.from_pandas([todo[["path", "size", "mtime_ns"]].iloc[b:b + rows_per_block].reset_index(drop=True) for b in bounds])
    # The weights in a list: the actors that predict fetch them themselves with ray.get.
    actors = dict(fn_constructor_args=(manifest, [weights_ref], cfg), batch_format="numpy", batch_size=cfg.batch_size,
                  num_cpus=cfg.cpus_per_actor, runtime_env=ACTOR_RUNTIME_ENV)
    if split:
        ds = ds.map_batches(PreprocessForLabelActor, compute=ray.data.ActorPoolStrategy(size=cfg.preprocess_actors),
                            **actors)
        ds = ds.map_batches(PredictActor, num_gpus=cfg.gpus or None, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
                            **actors)
    else:
        ds = ds.map_batches(LabelActor, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), **actors)
    with PartWriter(part, flush_rows=4 * cfg.batch_size, flush_seconds=5.0) as writer:
        for block in ds.iter_batches(batch_size=None, batch_format="pandas"):
            writer.add(block.assign(faces=cfg.faces))


class PartWriter:
    """Finished rows to durable Parquet parts under ``folder`` as they arrive, so a killed run
    loses at most ``flush_rows`` rows or ``flush_seconds`` of work (a re-run reuses the parts).

    The driver writes them itself from the pipeline's output stream: Ray Data's ``write_parquet``
    held its writes back under its resource budget (the first part of a 79 s run appeared at 74 s).
    Each part is written whole (a temporary name then ``os.replace`` locally, one object on a
    store), so a reader never sees half of one.
    """

    def __init__(self, folder: str, flush_rows: int = 512, flush_seconds: float = 10.0):
        self.folder, self.flush_rows, self.flush_seconds = folder, flush_rows, flush_seconds
        self.pending: list[pd.DataFrame] = []
        self.parts, self.last = 0, time.monotonic()

    def add(self, rows: pd.DataFrame) -> None:
        self.pending.append(rows)
        if sum(map(len, self.pending)) >= self.flush_rows or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            buf = io.BytesIO()
            pd.concat(self.pending, ignore_index=True).to_parquet(buf, index=False)
            _write_whole(storage.join(self.folder, f"part-{self.parts:06d}.parquet"), buf.getvalue())
            self.parts += 1
            self.pending = []
        self.last = time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.flush()  # also on an error or an interrupt: what is finished is kept


@dataclass
class LabelSummary:
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


def label_images(cfg: LabelConfig) -> LabelSummary:
    """Label ``cfg.images`` (or generated images) with ``cfg.model`` into ``cfg.out`` (a path or
    URI), holding a lock on ``cfg.out`` for the whole run."""
    cfg = absolute_paths(cfg)
    if cfg.layout == "fused" and cfg.gpus > 0:
        raise ValueError("--layout fused runs on CPU; with --gpus preprocess actors feed the GPU actors (split)")
    out = cfg.out if storage.is_uri(cfg.out) else str(Path(cfg.out).expanduser().resolve())
    if not storage.is_uri(out):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        return _label_locked(cfg, out)


def preflight(cfg: LabelConfig, out: str) -> None:
    """What ``label`` depends on, checked before Ray starts (see :mod:`facray.preflight`): the
    generator file, the output's folder (a probe write: a full disk or an unreachable store fails
    here, not after the run), the tracking store an MLflow model URI needs. The model itself is
    checked by :func:`facray.predictors.locate.locate_predictor` and :func:`put_verified_weights`."""
    from facray.preflight import PreflightError, check_generator_file, check_tracking_store, check_writable
    if cfg.generator:
        if not cfg.num:
            raise ValueError("--generator needs --num N")
        check_generator_file(cfg.generator)
    elif not cfg.images:
        raise ValueError("--images (or --generator) is required")
    if cfg.faces == "all" and cfg.format == "celeba":
        raise ValueError("--faces all writes one row per face; a CelebA-style list holds one per image: "
                         "use --format csv or parquet")
    check_writable(out.rsplit("/", 1)[0] if storage.is_uri(out) else str(Path(out).parent))
    if cfg.model.startswith(("models:/", "runs:/")):
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow's default would create an empty ./mlflow.db, which holds no model
            raise PreflightError(f"--model {cfg.model}: an MLflow model URI needs the store that registered it: "
                                 "--tracking-uri (e.g. sqlite:///runs/abm/mlflow.db) or MLFLOW_TRACKING_URI")
        check_tracking_store(uri, read_only=True)


def _label_locked(cfg: LabelConfig, out: str) -> LabelSummary:
    from facray.runtime import init_ray

    start = time.perf_counter()
    preflight(cfg, out)
    _set_tracking(cfg)
    # Resolve and check once, before any image is read (the tensors in put_verified_weights); the
    # actors get these verified parts. No torch in the driver.
    path, manifest = locate_predictor(cfg.model)
    blob = read_weights_file(path, manifest)
    predictor = PredictorInfo(manifest)
    model_name, weights_ref = predictor.name, None
    if cfg.generator:
        init_ray(dashboard=False)
        weights_ref = put_verified_weights(blob, manifest, path)
        images = generate_images(cfg, out)
    else:
        images = cfg.images
    inputs = list_inputs(images)
    if cfg.overwrite:
        storage.delete_dir(parts_dir(out))
        done = pd.DataFrame(columns=list(dict.fromkeys(OUTPUT_COLUMNS + KEY_COLUMNS)))
    else:
        done = previous_rows(out, cfg.format)
    keys = done[KEY_COLUMNS].drop_duplicates("path")  # an image's face rows share their keys
    merged = inputs.merge(keys, on="path", how="left", suffixes=("", "_done"))
    # Nullable columns (parts read back from Parquet) compare to NA where nothing was done: not fresh.
    fresh = ((merged["size"] == merged["size_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
             & (merged["model"] == predictor.name) & (merged["faces"] == cfg.faces)
             & merged["path"].map(complete_images(done))).fillna(False).to_numpy(dtype=bool)
    todo = inputs[~fresh]
    print(f"{len(inputs)} input image(s): {int(fresh.sum())} already labelled, {len(todo)} to label "
          f"with {predictor.name} ({len(predictor.attributes)} attributes"
          f"{', sketches needed' if predictor.needs_sketch else ''})", flush=True)
    unnamable = todo[todo.error != ""]  # error rows straight away: their names cannot travel
    todo = todo[todo.error == ""]
    new = [pd.DataFrame(label_batch({k: unnamable[k].to_numpy() for k in ("path", "error", "size", "mtime_ns")},
                                    predictor)).assign(faces=cfg.faces)] if len(unnamable) else []
    phases = {}
    if len(todo):
        init_ray(dashboard=False)
        weights_ref = weights_ref or put_verified_weights(blob, manifest, path)
        del blob  # in the object store now
        phases["start-up"] = time.perf_counter() - start
        part = storage.join(parts_dir(out), f"run-{int(time.time() * 1000)}")
        run_pipeline(todo, manifest, weights_ref, cfg, part)
        new += [_read_parquet(p) for p in storage.list_files(part, (".parquet",))]
        phases["pipeline"] = time.perf_counter() - start - phases["start-up"]
    written = time.perf_counter()
    kept = done[done.path.isin(set(inputs.path[fresh]))]
    rows = pd.concat([kept, *new], ignore_index=True).drop_duplicates(["path", "face_index"], keep="last")
    rows = rows.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    missing = set(inputs.path) - set(rows.path)
    if missing:
        raise RuntimeError(f"{len(missing)} input(s) have no output row (e.g. {sorted(missing)[:3]})")
    rows["image_id"] = rows["path"].map(dict(zip(inputs.path, inputs.image_id)))
    try:
        write_atomically(rows, out, cfg.format)
    except OutputError as e:
        raise OutputError(f"{e}; the labelled rows are kept in {parts_dir(out)}: free space (or fix access) "
                          "and re-run the same command to write them") from None
    storage.delete_dir(parts_dir(out))
    phases["write"] = time.perf_counter() - written
    per_image = rows.drop_duplicates("path")  # (--faces all: the image's largest-face row)
    n_faces = pd.to_numeric(per_image["n_faces"], errors="coerce")
    return LabelSummary(len(inputs), int(fresh.sum()), len(todo) + len(unnamable),
                        int(per_image.face_found.astype(bool).sum()), int((per_image.error.fillna("") != "").sum()),
                        time.perf_counter() - start, out,
                        model_name, phases, stage_seconds(pd.concat(new)) if new else {},
                        inputs.attrs.get("skipped_text", ""), int((n_faces > 1).sum()),
                        errors_path(out) if cfg.format == "celeba" and storage.is_file(errors_path(out)) else "",
                        len(rows), cfg.faces)


def smoke_model(folder: Path, crop_size: int = 48) -> Path:
    """An *untrained* (seeded random weights) 40-attribute predictor, for plumbing tests only:
    its predictions mean nothing. Named so in its manifest."""
    from facray.models.abm import init_model
    from facray.predictors.networks import write_predictor
    weights, choices = {}, []
    for i, a in enumerate(ATTRIBUTES):
        m = "sketch" if i % 5 == 0 else "real"
        weights[f"{a}__{m}"] = init_model(i, 1 if m == "sketch" else 3, crop_size, 0.5).state_dict()
        choices.append({"attribute": a, "modality": m, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None})
    return write_predictor(folder, choices, weights, {"size": crop_size, "margin": 0.35}, crop_size, 1,
                           extra={"name": "smoke-untrained"})


__all__ = ["LabelConfig", "label_images", "list_inputs", "smoke_model", "PROB_COLUMNS"]
