"""``facray demo`` / ``make demo``: the main pipeline end to end on generated data, locally.

Runs on the driver; starts a local Ray and a SQLite MLflow store under the output folder. Each
step is the same library function its subcommand calls (``prepare``, ``train-binary``,
``combine``, ``evaluate``, ``train``, ``label``), so the demo doubles as a smoke test of the whole
chain: the binary ABM-CNN chain, then a small multi-task model labelling the same folder.
Sizes are small so it finishes in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path

import pandas as pd

from facray.attributes import RENDERED_ATTRIBUTES
from facray.config import config_text
from facray.data.pipeline import PrepareConfig
from facray.data.prepared import read_prepare_config
from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces
from facray.labelling.config import LabelConfig
from facray.reports import evaluate_run
from facray.runners.label import label_images
from facray.runners.prepare import prepare
from facray.runners.train import train
from facray.runs import RunFolder
from facray.training.combine import combine
from facray.training.configs import BinaryConfig, CombineConfig, EvaluateConfig, MultitaskConfig

DEMO_ATTRIBUTES = ("Eyeglasses", "Smiling", "Wearing_Hat", "Bald")


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t: float) -> None:
    print(f"   ({time.perf_counter() - t:.0f}s)", flush=True)


def _prepared_with(cfg) -> bool:
    """Did a finished ``prepare`` write ``cfg.out`` with exactly ``cfg``'s settings?"""
    return read_prepare_config(cfg.out) == config_text(cfg)


def run_demo(out: str | Path, n: int = 600, seed: int = 0, epochs: int = 4) -> dict:
    """Generate data under ``out`` and run the whole chain on it; return where things are."""

    out = Path(out).resolve()
    assert set(DEMO_ATTRIBUTES) <= set(RENDERED_ATTRIBUTES)
    t = _step(f"1/7 generate {n} labelled faces (official CelebA layout) -> {out / 'celeba'}")
    data_root = write_synthetic_celeba(out / "celeba", n=n, seed=seed)
    _done(t)

    t = _step("2/7 prepare on Ray Data: crop, sketch, 3 augmentations per train image -> Parquet")
    prepare_cfg = PrepareConfig(root=str(data_root), out=str(out / "prepared"), size=48, augment=3, seed=seed)
    if _prepared_with(prepare_cfg):
        # Preparing again would make a new shard version, and the runs below (trained on the old
        # one) would rightly refuse it: an earlier demo's data with the same settings is reused.
        print(f"   reusing {prepare_cfg.out}: prepared by an earlier demo with the same settings "
              "(the runs below resume; delete the folder to start afresh)")
    else:
        print(prepare(prepare_cfg).format())
    _done(t)

    t = _step(f"3/7 train-binary on Ray Train: {len(DEMO_ATTRIBUTES)} attributes x real/sketch, fused, "
              f"{epochs} epochs")
    run = out / "abm"
    table = train(BinaryConfig(
        prepared=str(out / "prepared"), out=str(run), attributes=",".join(DEMO_ATTRIBUTES),
        epochs=epochs, image_size=48, batch_size=32, cpus_per_worker=1, seed=seed))
    print(table[["job", "best_epoch", "val_accuracy", "test_accuracy"]].round(3).to_string(index=False))
    _done(t)

    t = _step("4/7 combine: better modality per attribute; register in MLflow")
    predictor_dir, uri = combine(CombineConfig(run=str(run)))
    print(pd.read_csv(predictor_dir / "choices.csv")[["attribute", "modality", "val_accuracy"]]
          .round(3).to_string(index=False))
    print(f"   predictor: {predictor_dir}\n   registered: {uri}")
    _done(t)

    t = _step("5/7 evaluate: per-attribute report with the majority baseline and the paper's figures")
    report, report_dir = evaluate_run(EvaluateConfig(run=str(run)))
    cols = ["attribute", "real_test_accuracy", "sketch_test_accuracy", "chosen", "combined_test_accuracy",
            "majority_accuracy"]
    print(report[cols].round(3).to_string(index=False))
    _done(t)

    t = _step("6/7 label a folder of generated unlabelled faces (StyleGAN-like, 1024/256 px) into a CSV")
    images = out / "unlabelled"
    if not images.is_dir():
        write_unlabelled_faces(images, n=12, seed=seed + 1)
        (images / "broken.jpg").write_bytes(b"not a jpeg")  # shows an error row, not a crash
    labels = out / "labels.csv"
    result = label_images(LabelConfig(images=str(images), model=str(predictor_dir), out=str(labels),
                                      tracking_uri=None))
    print(result.format())
    head = pd.read_csv(labels, nrows=6, dtype={"n_faces": "Int16"})
    print(head[["image_id", "face_found", "n_faces", "error", *[f"{a}_prob" for a in DEMO_ATTRIBUTES]]]
          .round(3).to_string(index=False))
    _done(t)

    t = _step(f"7/7 train a multi-task abm-trunk (one network, 40 outputs) on Ray Train, {epochs + 2} epochs; "
              "label the same folder with it")
    mt_run = out / "multitask"
    record = train(MultitaskConfig(model="abm-trunk", prepared=str(out / "prepared"), out=str(mt_run),
                                         image_size=48, epochs=epochs + 2, batch_size=32, lr=2e-3,
                                         cpus_per_worker=1, seed=seed))
    shown = pd.DataFrame(record["attributes"]).set_index("attribute").loc[list(DEMO_ATTRIBUTES)]
    print(shown[["threshold", "test_accuracy", "test_accuracy_at_0.5"]].round(3).to_string())
    print(f"   mean test accuracy over {len(record['attributes'])} attributes: {record['mean_test_accuracy']:.3f} "
          f"(generated data: only {len(RENDERED_ATTRIBUTES)} attributes are drawn into the faces)")
    mt_labels = out / "labels_multitask.csv"
    print(label_images(LabelConfig(images=str(images), model=str(mt_run), out=str(mt_labels))).format())
    _done(t)

    where = {"labels_csv": str(labels), "labels_multitask_csv": str(mt_labels), "report": str(report_dir),
             "predictor": str(predictor_dir), "multitask_model": str(RunFolder(mt_run).model_dir),
             "mlflow": RunFolder(run).default_tracking_uri(),
             "mlflow_multitask": RunFolder(mt_run).default_tracking_uri()}
    print("\nDone. Outputs:")
    for k, v in where.items():
        print(f"  {k:<21} {v}")
    print(f"  view MLflow: mlflow ui --backend-store-uri {shlex.quote(where['mlflow'])}")
    return where
