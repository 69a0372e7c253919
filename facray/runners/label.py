"""``facray label`` on Ray Data: label images in bulk into one CSV, Parquet file or CelebA-style
list. Runs on the driver; decoding, cropping, sketching and prediction run in Ray actors. The rules
(inputs, what to reuse, the output format, pool sizes) are :mod:`facray.labelling`'s; this module
runs them.

Flow: check the settings -> lock the output -> load and verify the model (fails before any image is
read; no torch in the driver) -> list the inputs and skip those already labelled (same path, size,
mtime, model, faces and crop modes) -> Ray Data: decode -> detect + crop -> sketch if needed -> predict
(GPU or CPU actors), in input order -> Parquet parts as rows arrive -> the earlier index and the
new parts merged a chunk at a time into the new output (:mod:`facray.labelling.write`), replaced
atomically. An interrupted run leaves the old output untouched and its finished parts behind,
which the next run reuses.

The weights are checked three times on purpose: their SHA-256 in the driver (a replaced file),
their tensors once in a throw-away task (:func:`put_verified_weights`: a bad file fails before any
image is read) and in each actor as it builds its predictor (what it loads is what was checked).

Memory stays bounded by Ray Data's streaming (blocks in flight), not by the number of images; the
driver holds the inputs' names and keys (under 1 GB at a million inputs), not the rows (but for an
output an older facray wrote, read whole once: it was written whole).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from facray import storage
from facray.config import absolute_paths
from facray.data.errors import OutputError
from facray.labelling.batch import BatchLabeller, label_batch, preprocessing_for, stage_seconds
from facray.labelling.config import LabelConfig, check_before_start
from facray.labelling.inputs import list_inputs
from facray.labelling.lock import output_lock
from facray.labelling.merge import Source, earlier_sources, previous_rows
from facray.labelling.write import write_output
from facray.labelling.output import PartWriter, errors_path, parts_dir
from facray.labelling.plan import LabelSummary, choose_sources, reusable
from facray.labelling.pools import pool_sizes
from facray.predictors.format import Manifest, PredictorError, read_weights_file
from facray.predictors.locate import locate_predictor
from facray.predictors.thresholds import PredictorInfo
from facray.progress import every_seconds, format_seconds
from facray.runners.datasets import metadata_dataset, rows_per_block
from facray.runners.runtime import describe_nodes, init_ray, stop_if_stalled


def label_images(cfg: LabelConfig) -> LabelSummary:
    """Label ``cfg.images`` (or generated images) with ``cfg.model`` into ``cfg.out`` (a path or
    URI), holding a lock on ``cfg.out`` for the whole run. Every input gets a row (one per face
    with ``--faces all``): labelled, or with its error."""
    cfg = absolute_paths(cfg)
    out = cfg.out if storage.is_uri(cfg.out) else str(Path(cfg.out).expanduser().resolve())
    check_before_start(cfg, out)  # creates the output's folder, where the lock goes
    with output_lock(out):
        return _label_locked(cfg, out)


def _label_locked(cfg: LabelConfig, out: str) -> LabelSummary:
    start = time.perf_counter()
    if cfg.tracking_uri:
        import mlflow  # lazy: only an MLflow model URI needs it
        mlflow.set_tracking_uri(cfg.tracking_uri)
    # Resolve and check once, before any image is read; the actors get these verified parts.
    path, manifest = locate_predictor(cfg.model)
    blob = read_weights_file(path, manifest)
    predictor = PredictorInfo(manifest)
    weights_ref = None
    if cfg.generator:
        init_ray(dashboard=False)
        weights_ref = put_verified_weights(blob, manifest, path)
        images = generate_images(cfg, out)
    else:
        images = cfg.images
    inputs = list_inputs(images).sort_values("path", ignore_index=True)  # the output's order
    if cfg.overwrite:
        storage.delete_dir(parts_dir(out))
    sources = [] if cfg.overwrite else earlier_sources(out, cfg.format)
    done = previous_rows(out, cfg.format, sources)  # keys only: what to reuse is decided on them
    predictor.min_confidence = cfg.min_confidence
    reused = reusable(inputs, done, predictor.name, cfg.faces, cfg.crop, cfg.min_confidence)
    todo = inputs[~reused]
    print(f"{len(inputs)} input image(s): {int(reused.sum())} already labelled, {len(todo)} to label "
          f"with {predictor.name} ({len(predictor.attributes)} attributes"
          f"{', sketches needed' if predictor.needs_sketch else ''})", flush=True)
    unnamable = todo[todo.error != ""]  # error rows straight away: their names cannot travel
    todo = todo[todo.error == ""]
    new = []  # this run's sources: the error rows above, then the pipeline's parts
    if len(unnamable):
        rows = pd.DataFrame(label_batch({k: unnamable[k].to_numpy() for k in ("path", "error", "size", "mtime_ns")},
                                        predictor)).assign(**_modes(cfg))
        new.append(Source(len(sources), frame=rows.sort_values("path", kind="stable")))
    phases, stages = {}, {}
    if len(todo):
        init_ray(dashboard=False)
        weights_ref = weights_ref or put_verified_weights(blob, manifest, path)
        del blob  # in the object store now
        phases["start-up"] = time.perf_counter() - start
        part = storage.join(parts_dir(out), f"run-{int(time.time() * 1000)}")
        stages = run_pipeline(todo, manifest, weights_ref, cfg, part)
        new.append(Source(len(sources) + len(new), files=storage.list_files(part, (".parquet",))))
        phases["pipeline"] = time.perf_counter() - start - phases["start-up"]
    written_at = time.perf_counter()
    chosen = choose_sources(inputs, done, reused, pd.concat([s.keys() for s in new]) if new else done.iloc[:0])
    del done  # the keys: only where each input's rows come from is needed now
    try:
        written = write_output(sources + new, inputs, chosen, out, cfg.format)
    except OutputError as e:
        raise OutputError(f"{e}; the labelled rows are kept in {parts_dir(out)}: free space (or fix access) "
                          "and re-run the same command to write them") from None
    storage.delete_dir(parts_dir(out))
    phases["write"] = time.perf_counter() - written_at
    return LabelSummary.of(written, inputs, reused, len(todo) + len(unnamable), seconds=time.perf_counter() - start,
                           out=out, model=predictor.name, phases=phases, stages=stages,
                           errors_file=errors_path(out) if cfg.format == "celeba" and storage.is_file(errors_path(out))
                           else "", faces=cfg.faces, min_confidence=cfg.min_confidence)


def _modes(cfg: LabelConfig) -> dict:
    """The run's settings each row records beside its resume keys (:data:`KEY_COLUMNS`)."""
    return {"faces": cfg.faces, "crop": cfg.crop, "min_confidence": cfg.min_confidence}


def _predictor_from(manifest: Manifest, weights_ref, cfg: LabelConfig, device: str = "cpu"):
    """Build the predictor from the verified parts the driver gave: the manifest, and the weights
    file's bytes in the object store. Actors never open the tracking store (a cluster's workers
    may not reach it)."""
    from facray.predictors.networks import build_predictor, load_weights  # lazy: torch in actors only
    weights = load_weights(ray.get(weights_ref[0]), manifest, Path(cfg.model))
    predictor = build_predictor(manifest, weights, device, cfg.compile)
    predictor.min_confidence = cfg.min_confidence
    return predictor


def _check_weights(manifest: Manifest, weights_ref, path: str) -> None:
    from facray.predictors.networks import load_weights  # lazy: torch in this task only
    load_weights(ray.get(weights_ref[0]), manifest, Path(path))


def put_verified_weights(blob: bytes, manifest: Manifest, path: Path):
    """The weights file's bytes into the object store, loaded and checked once (tensors only, the
    models the manifest names, their shapes) in a worker that exits afterwards: the driver never
    imports torch (about 0.5 GB a process), and a bad weights file fails before any image is read."""
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


def generate_images(cfg: LabelConfig, out: str) -> str:
    """Run the generator on Ray (GPU actors with --gpus) and return the folder of PNGs: beside a
    local output, in the temporary folder for a URI output."""
    name = out.rsplit("/", 1)[-1].rsplit(".", 1)[0] + "_generated"
    folder = Path(tempfile.gettempdir()) / name if storage.is_uri(out) else Path(out).parent / name
    ds = ray.data.range(cfg.num).map_batches(lambda b: {"id": b["id"] + cfg.seed}, batch_format="numpy")
    ds = ds.map_batches(GeneratorActor, fn_constructor_args=(cfg.generator, str(folder), cfg.z_dim, cfg.gpus > 0),
                        batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor,
                        num_gpus=cfg.gpus or None, compute=ray.data.ActorPoolStrategy(size=1))
    written = ds.count()
    print(f"generated {written} images (seeds {cfg.seed}..{cfg.seed + cfg.num - 1}) in {folder}", flush=True)
    return str(folder)


def run_pipeline(todo: pd.DataFrame, manifest: Manifest, weights_ref, cfg: LabelConfig, part: str) -> dict:
    """Label ``todo``'s images on Ray Data (actor pools sized by :func:`facray.labelling.pools.pool_sizes`)
    into Parquet parts under ``part``, written by the driver as rows arrive, with a progress line
    every 10 s; returns the actors' seconds per stage."""
    num_actors, preprocess_actors, threads = pool_sizes(cfg, ray.cluster_resources())
    cfg = replace(cfg, num_actors=num_actors, preprocess_actors=preprocess_actors, torch_threads=threads)
    split = cfg.layout == "split"
    print(f"labelling with {num_actors} {'predict' if split else 'CPU'} actor(s) of {threads} torch thread(s)"
          + (f" fed by {preprocess_actors} preprocess actor(s)" if split else ""), flush=True)
    block = rows_per_block(len(todo), max(cfg.num_actors, cfg.preprocess_actors), most=cfg.batch_size * 4)
    # In input order (path order): each run's parts are then sorted as the output is, so the
    # output is a streamed merge (facray.labelling.merge), never all rows in the driver at once.
    context = ray.data.DataContext.get_current()
    keep, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        ds = metadata_dataset(todo[["path", "size", "mtime_ns"]], block)
        # The weights in a list: the actors that predict fetch them themselves with ray.get.
        actors = dict(fn_constructor_args=(manifest, [weights_ref], cfg), batch_format="numpy",
                      batch_size=cfg.batch_size, num_cpus=cfg.cpus_per_actor)
        if split:
            ds = ds.map_batches(PreprocessForLabelActor, compute=ray.data.ActorPoolStrategy(size=cfg.preprocess_actors),
                                **actors)
            ds = ds.map_batches(PredictActor, num_gpus=cfg.gpus or None,
                                compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), **actors)
        else:
            ds = ds.map_batches(LabelActor, compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), **actors)
        progress, stages = Progress(len(todo)), {}
        with PartWriter(part, flush_rows=4 * cfg.batch_size, flush_seconds=5.0) as writer:
            blocks = stop_if_stalled(ds.iter_batches(batch_size=None, batch_format="pandas"), cfg.node_wait,
                                     lambda: _stalled(cfg, progress))
            for block in blocks:
                writer.add(block.assign(**_modes(cfg)))
                for stage, secs in stage_seconds(block).items():
                    stages[stage] = stages.get(stage, 0.0) + secs
                progress.update(block["path"].nunique())
    finally:
        context.execution_options.preserve_order = keep
    progress.finish()
    return stages


def _stalled(cfg: LabelConfig, progress: "Progress") -> str:
    """What a labelling run that got no rows for ``--node-wait`` seconds needs and the cluster has."""
    pools = (f"{cfg.num_actors} predict actor(s) of {cfg.cpus_per_actor:g} CPU" + (f" + {cfg.gpus:g} GPU" if cfg.gpus else "")
             + (f" and {cfg.preprocess_actors} preprocess actor(s) of {cfg.cpus_per_actor:g} CPU"
                if cfg.layout == "split" else ""))
    return (f"no labelled images for {cfg.node_wait:g} s (--node-wait) after {progress.done}/{progress.total}: "
            f"the pools want {pools}; {describe_nodes()}. A lost node, or too few CPUs/GPUs: add a node (or let "
            f"the autoscaler), then re-run the same command: the labelled rows are kept and reused")


class Progress:
    """A progress line at most every ``every`` seconds (default 10, ``FACRAY_PROGRESS_SECONDS``
    as for training), as rows arrive: images done, img/s since the start, ETA."""

    def __init__(self, total: int, every: float | None = None):
        every = every_seconds(10.0) if every is None else every
        self.total, self.every, self.done = total, every, 0
        self.start = self.last = time.monotonic()

    def update(self, images: int) -> None:
        self.done += images
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(self.line(now), flush=True)

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        return (f"  {self.done}/{self.total} images ({100 * self.done / max(self.total, 1):.0f}%), {rate:.1f} img/s, "
                f"ETA {format_seconds(eta)}")

    def finish(self) -> None:
        print(self.line(time.monotonic()).replace("ETA 0s", "done"), flush=True)
