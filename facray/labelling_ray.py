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

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.config import option
from facray.data.errors import DatasetError
from facray.labelling import OUTPUT_COLUMNS, PROB_COLUMNS, label_batch, preprocessing_for
from facray.predictor import is_model_uri, load_predictor

KEY_COLUMNS = ["path", "size", "mtime_ns", "model"]


@dataclass
class LabelConfig:
    images: str = option("", "folder (recursive), glob, .txt list of paths, or URI")
    model: str = option("", "predictor folder or MLflow URI (models:/name@alias, runs:/...)")
    out: str = option("labels.csv", "output file (.csv, or .parquet with --format parquet)")
    format: str = option("csv", "csv | parquet")
    overwrite: bool = option(False, "relabel everything instead of resuming")
    batch_size: int = option(64, "images per batch")
    num_actors: int = option(2, "actors (CPU: decode+predict fused; GPU: predictors)")
    cpus_per_actor: float = option(0.5, "CPUs reserved per actor")
    gpus: float = option(0.0, "GPUs per predict actor (0 = CPU)")
    preprocess_actors: int = option(2, "with GPUs: CPU actors decoding and cropping")
    crop: str = option("detect", "detect | full | auto (see facray prepare)")
    yunet_model: str | None = option(None, "YuNet .onnx detector instead of Haar")
    max_pixels: int = option(50_000_000, "refuse larger images")
    generator: str | None = option(None, "TorchScript generator file: z -> image")
    num: int = option(0, "with --generator: images to generate")
    seed: int = option(0, "with --generator: first seed (one seed per image)")
    z_dim: int = option(0, "with --generator: latent size (0 = the module's z_dim)")
    tracking_uri: str | None = option(None, "MLflow URI for models:/ and runs:/ models")
    torch_threads: int = option(1, "torch threads per CPU actor")


# ---- inputs and previous results (driver, pure) -------------------------------------------------

def list_inputs(images: str) -> pd.DataFrame:
    """``path``, ``size`` and ``mtime_ns`` of every input image (missing stat -> -1)."""
    from facray.data.folder import list_images, list_uri_images
    is_uri = "://" in images and not Path(images).exists()
    paths = list_uri_images(images) if is_uri else list_images(images)
    if not paths:
        raise DatasetError(f"{images}: no images found (jpg, jpeg, png, webp, bmp)")
    sizes, mtimes = [], []
    if is_uri:
        import pyarrow.fs
        fs, _ = pyarrow.fs.FileSystem.from_uri(images)
        for info in fs.get_file_info([p.split("://", 1)[1] for p in paths]):
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
    return pd.DataFrame({"path": paths, "size": sizes, "mtime_ns": mtimes})


def index_path(out: Path) -> Path:
    return out.with_name(out.name + ".index.parquet")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def read_output(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"path": str, "error": str, "model": str})


def previous_rows(out: Path, fmt: str) -> pd.DataFrame:
    """Rows already labelled: the final output joined with its index, plus parts of an interrupted
    run. Unreadable leftovers are ignored (those images are simply labelled again)."""
    frames = []
    if out.is_file() and index_path(out).is_file():
        rows = read_output(out, fmt)
        keys = pd.read_parquet(index_path(out))
        frames.append(rows.merge(keys[["path", "size", "mtime_ns"]], on="path", how="inner"))
    for part in sorted(parts_dir(out).glob("*/*.parquet")) if parts_dir(out).is_dir() else []:
        try:
            frames.append(pd.read_parquet(part))
        except Exception:  # noqa: BLE001 - a part cut off mid-write
            continue
    if not frames:
        return pd.DataFrame(columns=OUTPUT_COLUMNS + ["size", "mtime_ns"])
    rows = pd.concat(frames, ignore_index=True)
    return rows.drop_duplicates(subset=["path"], keep="last")


def write_atomically(rows: pd.DataFrame, out: Path, fmt: str) -> None:
    """Write ``out`` via a temporary file and ``os.replace``: readers see the old or the new file,
    never half of one. The index (path, size, mtime, model) goes beside it for resuming."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    table = rows[OUTPUT_COLUMNS].copy()
    # Fixed dtypes whatever the mix of rows: decisions 1/0/empty, probabilities floats.
    table[list(ATTRIBUTES)] = table[list(ATTRIBUTES)].astype("float64").round().astype("Int8")
    table[PROB_COLUMNS] = table[PROB_COLUMNS].astype("float64")
    table["face_found"] = table["face_found"].astype(bool)
    table["error"] = table["error"].fillna("").astype(str)
    if fmt == "parquet":
        table.to_parquet(tmp, index=False)
    else:
        table.to_csv(tmp, index=False, float_format="%.6g")
    tmp_index = index_path(out).with_name(f".{index_path(out).name}.tmp-{os.getpid()}")
    rows[KEY_COLUMNS].to_parquet(tmp_index, index=False)
    os.replace(tmp_index, index_path(out))
    os.replace(tmp, out)


# ---- Ray actors -----------------------------------------------------------------------------------

class LabelActor:
    """CPU mode: decode, crop, sketch and predict in one actor (no object-store hop between)."""

    def __init__(self, model: str, cfg: LabelConfig):
        import cv2
        import torch
        cv2.setNumThreads(1)
        torch.set_num_threads(max(1, cfg.torch_threads))
        _set_tracking(cfg)
        self.predictor = load_predictor(model)
        self.chain = preprocessing_for(self.predictor, cfg.crop, cfg.yunet_model, cfg.max_pixels)

    def __call__(self, batch):
        return label_batch(self.chain(batch), self.predictor)


class PreprocessForLabelActor:
    """GPU mode, CPU side: decode, crop and sketch."""

    def __init__(self, model: str, cfg: LabelConfig):
        import cv2
        cv2.setNumThreads(1)
        _set_tracking(cfg)
        self.chain = preprocessing_for(load_predictor(model), cfg.crop, cfg.yunet_model, cfg.max_pixels)

    def __call__(self, batch):
        out = self.chain(batch)
        out.pop("image_bytes", None)
        return out


class PredictActor:
    """GPU mode, GPU side: the predictor on ``cuda``."""

    def __init__(self, model: str, cfg: LabelConfig):
        import torch
        _set_tracking(cfg)
        self.predictor = load_predictor(model, "cuda" if torch.cuda.is_available() else "cpu")

    def __call__(self, batch):
        return label_batch(batch, self.predictor)


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

def generate_images(cfg: LabelConfig, out: Path) -> str:
    """Run the generator on Ray (GPU actors with --gpus) and return the folder of PNGs."""
    import ray
    if not cfg.num:
        raise ValueError("--generator needs --num N")
    if not Path(cfg.generator).is_file():
        raise FileNotFoundError(f"{cfg.generator}: generator file not found")
    folder = out.parent / f"{out.stem}_generated"
    ds = ray.data.range(cfg.num).map_batches(lambda b: {"id": b["id"] + cfg.seed}, batch_format="numpy")
    ds = ds.map_batches(GeneratorActor, fn_constructor_args=(cfg.generator, str(folder), cfg.z_dim, cfg.gpus > 0),
                        batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor,
                        num_gpus=cfg.gpus or None, compute=ray.data.ActorPoolStrategy(size=1))
    written = ds.count()
    print(f"generated {written} images (seeds {cfg.seed}..{cfg.seed + cfg.num - 1}) in {folder}", flush=True)
    return str(folder)


def run_pipeline(todo: pd.DataFrame, model: str, cfg: LabelConfig, part: Path) -> None:
    import ray
    rows_per_block = max(1, min(cfg.batch_size * 4, -(-len(todo) // (4 * max(cfg.num_actors, 1)))))
    bounds = np.arange(0, len(todo), rows_per_block)
    ds = ray.data.from_pandas([todo[["path", "size", "mtime_ns"]].iloc[b:b + rows_per_block].reset_index(drop=True) for b in bounds])
    if cfg.gpus > 0:
        ds = ds.map_batches(PreprocessForLabelActor, fn_constructor_args=(model, cfg), batch_format="numpy",
                            batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor,
                            compute=ray.data.ActorPoolStrategy(size=cfg.preprocess_actors))
        ds = ds.map_batches(PredictActor, fn_constructor_args=(model, cfg), batch_format="numpy",
                            batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus,
                            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors))
    else:
        ds = ds.map_batches(LabelActor, fn_constructor_args=(model, cfg), batch_format="numpy",
                            batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor,
                            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors))
    ds.write_parquet(str(part))


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

    def format(self) -> str:
        return (f"labelled {self.labelled} new image(s), reused {self.reused}, {self.inputs} rows in {self.out}\n"
                f"  model: {self.model}\n  faces found: {self.faces_found}/{self.inputs - self.errors}, "
                f"errors: {self.errors}, {self.seconds:.1f}s")


def label_images(cfg: LabelConfig) -> LabelSummary:
    """Label ``cfg.images`` (or generated images) with ``cfg.model`` into ``cfg.out``."""
    from facray.runtime import init_ray

    start = time.perf_counter()
    if cfg.format not in ("csv", "parquet"):
        raise ValueError(f"format must be csv or parquet, got {cfg.format!r}")
    out = Path(cfg.out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _set_tracking(cfg)
    predictor = load_predictor(cfg.model)  # fail fast: before any image is read
    model_uri = cfg.model if is_model_uri(cfg.model) else str(Path(cfg.model).resolve())
    if cfg.generator:
        init_ray()
        images = generate_images(cfg, out)
    else:
        if not cfg.images:
            raise ValueError("--images (or --generator) is required")
        images = cfg.images
    inputs = list_inputs(images)
    if cfg.overwrite:
        shutil.rmtree(parts_dir(out), ignore_errors=True)
        done = pd.DataFrame(columns=OUTPUT_COLUMNS + ["size", "mtime_ns"])
    else:
        done = previous_rows(out, cfg.format)
    merged = inputs.merge(done[["path", "size", "mtime_ns", "model"]], on="path", how="left", suffixes=("", "_done"))
    fresh = ((merged["size"] == merged["size_done"]) & (merged["mtime_ns"] == merged["mtime_ns_done"])
             & (merged["model"] == predictor.name))
    todo = inputs[~fresh.to_numpy()]
    print(f"{len(inputs)} input image(s): {int(fresh.sum())} already labelled, {len(todo)} to label "
          f"with {predictor.name} ({len(predictor.attributes)} attributes"
          f"{', sketches needed' if predictor.needs_sketch else ''})", flush=True)
    if len(todo):
        init_ray()
        part = parts_dir(out) / f"run-{int(time.time() * 1000)}"
        run_pipeline(todo, model_uri, cfg, part)
        new = pd.concat([pd.read_parquet(p) for p in sorted(part.glob("*.parquet"))], ignore_index=True)
    else:
        new = pd.DataFrame(columns=OUTPUT_COLUMNS + ["size", "mtime_ns"])
    kept = done[done.path.isin(set(inputs.path[fresh.to_numpy()]))]
    rows = pd.concat([kept, new], ignore_index=True).drop_duplicates("path", keep="last")
    rows = rows.sort_values("path", kind="stable").reset_index(drop=True)
    missing = set(inputs.path) - set(rows.path)
    if missing:
        raise RuntimeError(f"{len(missing)} input(s) have no output row (e.g. {sorted(missing)[:3]})")
    write_atomically(rows, out, cfg.format)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
    errors = int((rows.error.fillna("") != "").sum())
    return LabelSummary(len(rows), int(fresh.sum()), len(todo), int(rows.face_found.astype(bool).sum()),
                        errors, time.perf_counter() - start, str(out), predictor.name)


def smoke_model(folder: Path, crop_size: int = 48) -> Path:
    """An *untrained* (seeded random weights) 40-attribute predictor, for plumbing tests only:
    its predictions mean nothing. Named so in its manifest."""
    from facray.models.abm import init_model
    from facray.predictor import write_predictor
    weights, choices = {}, []
    for i, a in enumerate(ATTRIBUTES):
        m = "sketch" if i % 5 == 0 else "real"
        weights[f"{a}__{m}"] = init_model(i, 1 if m == "sketch" else 3, crop_size, 0.5).state_dict()
        choices.append({"attribute": a, "modality": m, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None})
    return write_predictor(folder, choices, weights, {"size": crop_size, "margin": 0.35}, crop_size, 1,
                           extra={"name": "smoke-untrained"})


__all__ = ["LabelConfig", "label_images", "list_inputs", "smoke_model", "PROB_COLUMNS"]
