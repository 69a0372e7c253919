"""Benchmark: ABM-CNN's 9 variants written by ``prepare --augment 9`` (offline) against the same
variants drawn while training (``train-binary --online-augment on`` on ``--augment 1`` data), and
no augmentation, in one run: test accuracy per attribute, disk, what a memory-mode worker holds,
training seconds.

The same settings for both augmentations: ``E`` epochs, patience ``P`` (an online epoch is 9
passes over the 1x rows, as many images as an epoch of the 9x rows). No augmentation: the same
image budget, up to ``9E`` epochs over the 1x rows, patience ``P`` (it stops when it stops
improving). Validation: a holdout of the train images (all their variants), early stopping and
nothing else; test: ``--test-split``.

    facray prepare --root ../shared/data/celebahq_dev --out /tmp/aug/p1 --size 64 --augment 1
    facray prepare --root ../shared/data/celebahq_dev --out /tmp/aug/p9 --size 64 --augment 9
    python bench/online_augment.py --prepared-1x /tmp/aug/p1 --prepared-9x /tmp/aug/p9 --work /tmp/aug

``--work``: where the three runs go; a run already finished there with the same settings is
reported, not trained again (facray's own resume), so an interrupted benchmark goes on.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from facray.data.prepared import read_metadata, shard_dir
from facray.runners.train import train
from facray.runs import RunFolder
from facray.training.augment import PASSES_PER_EPOCH
from facray.training.configs import BinaryConfig
from facray.training.data_mode import bytes_per_worker
from facray.training.splits import SplitSpec, check_splits


def disk_bytes(prepared: str) -> int:
    return sum(f.stat().st_size for f in Path(shard_dir(prepared)).rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared-1x", required=True, help="prepared with --augment 1")
    ap.add_argument("--prepared-9x", required=True, help="the same images prepared with --augment 9")
    ap.add_argument("--attributes", default="Smiling,Male,Bangs,Young")
    ap.add_argument("--epochs", type=int, default=4, help="offline epochs over the 9x rows (E)")
    ap.add_argument("--patience", type=int, default=2, help="offline patience (P)")
    ap.add_argument("--test-split", default="val")
    ap.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="facray-online-augment-")
    common = dict(attributes=args.attributes, modalities=("real",), val_split="holdout", test_split=args.test_split,
                  data="memory", cpus_per_worker=1, torch_threads=2)
    e, p = args.epochs, args.patience
    runs = {"none (1x)": (args.prepared_1x, "off", 9 * e, p, "A"),
            "offline (9x rows)": (args.prepared_9x, "off", e, p, "C"),
            "online (1x rows)": (args.prepared_1x, "on", e, p, "B")}
    rows, accuracy = [], {}
    for name, (prepared, online, epochs, patience, folder) in runs.items():
        cfg = BinaryConfig(prepared=prepared, out=f"{work}/{folder}", online_augment=online, epochs=epochs,
                           patience=patience, **common)
        train(cfg)
        run = RunFolder(cfg.out)
        client = mlflow.MlflowClient(run.default_tracking_uri())
        seconds = sum(m.value for m in client.get_metric_history(run.mlflow_run_id(), "epoch_seconds"))
        epochs_run = [len(r["history"]) for r in run.job_records()]
        # rows trained on per epoch: an online epoch is PASSES_PER_EPOCH passes over the 1x rows
        train_rows = check_splits(SplitSpec.of(cfg))["train"] * (PASSES_PER_EPOCH if online == "on" else 1)
        table = pd.read_csv(run.jobs_summary_file).set_index("attribute")
        accuracy[name] = table["test_accuracy"]
        rows.append({"augmentation": name, "disk MB": disk_bytes(prepared) / 1e6,
                     "worker arrays MB": bytes_per_worker(read_metadata(prepared), check_splits(SplitSpec.of(cfg)),
                                                          ("image",)) / 1e6,
                     "epochs (budget)": f"{min(epochs_run)}-{max(epochs_run)} ({epochs})",
                     # epoch seconds include each epoch's validation pass
                     "epoch s (sum)": seconds, "trained img/s": train_rows * max(epochs_run) / seconds,
                     "mean test acc": table["test_accuracy"].mean()})
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\ntest accuracy per attribute")
    print(pd.DataFrame(accuracy).to_string(float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
