"""``facray label``'s settings, and what can be checked about them before Ray starts."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from facray import storage
from facray.config import check_node_wait, node_wait_option, option
from facray.preflight import PreflightError, check_generator_file, check_tracking_store, check_writable


@dataclass
class LabelConfig:
    # --smoke-test: 8 generated files (2 broken) and an untrained predictor (facray.testing), one actor each.
    SMOKE: ClassVar[dict] = {"batch_size": 4, "num_actors": 1, "preprocess_actors": 1}

    images: str = option("", "folder (recursive), glob, .txt list of paths, or URI", path=True)
    model: str = option("", "predictor, run or ensemble folder, or MLflow URI (models:/name@alias, runs:/...)",
                        path=True)
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
    crop: Literal["auto", "detect", "full"] = option(
        "auto", "auto: crop by a known aligned layout (FFHQ/StyleGAN, aligned CelebA) where a quick check on "
                "a 96 px copy finds the image's one face where the layout puts it, else detect (--faces all "
                "always detects) | detect: always detect | full: no face search, the centre square. Each row's "
                "crop_method says how it was cropped (template, detect, centre, full); a re-run with another "
                "--crop labels again")
    faces: Literal["largest", "all"] = option("largest", "largest: one row per image, its largest face "
                                                        "(n_faces says how many were found) | all: one row per "
                                                        "face (face_index 0 = the largest), for group photos")
    detector: str = option("auto", "face detector: auto (YuNet if yuface is installed, else Haar) | yunet | "
                                   "haar | a YuNet .onnx file")
    min_confidence: float = option(0.0, "leave a decision empty (abstain) where the calibrated probability of the "
                                        "decided class is below this (e.g. 0.9); the summary prints the share of "
                                        "decisions kept. 0 = decide every cell")
    max_pixels: int = option(50_000_000, "refuse larger images")
    generator: str | None = option(None, "TorchScript generator file: z -> image", path=True)
    num: int = option(0, "with --generator: images to generate")
    seed: int = option(0, "with --generator: first seed (one seed per image)")
    z_dim: int = option(0, "with --generator: latent size (0 = the module's z_dim)")
    tracking_uri: str | None = option(None, "MLflow URI for models:/ and runs:/ models", path=True)
    node_wait: float = node_wait_option()
    torch_threads: int = option(0, "torch threads per actor that predicts; 0 = fused 1, split on CPU "
                                   "the predict actor's share of the CPUs (at most 4)")
    compile: bool = option(False, "torch.compile the predictor's networks (one H100: 2.8-3x the forward; "
                                  "the first batches wait for the compiler)")


def check_before_start(cfg: LabelConfig, out: str) -> None:
    """What ``label`` depends on, checked before Ray starts (see :mod:`facray.preflight`): the
    generator file, the output's folder (a probe write: a full disk or an unreachable store fails
    here, not after the run), the tracking store an MLflow model URI needs. The model itself is
    checked by :func:`facray.predictors.locate.locate_predictor` and
    :func:`facray.runners.label.put_verified_weights`."""
    check_node_wait(cfg.node_wait)
    if cfg.layout == "fused" and cfg.gpus > 0:
        raise ValueError("--layout fused runs on CPU; with --gpus preprocess actors feed the GPU actors (split)")
    if not 0 <= cfg.min_confidence <= 1:
        raise ValueError(f"--min-confidence {cfg.min_confidence}: expected a probability in [0, 1] (e.g. 0.9)")
    if cfg.min_confidence > 0 and cfg.format == "celeba":
        raise ValueError("--min-confidence leaves decisions empty; a CelebA-style list has no empty cell (-1 means "
                         "'no'): use --format csv or parquet")
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
