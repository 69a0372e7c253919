"""Benchmark: what a ``--data memory`` worker really holds, against the estimate ``--data auto``
decides by (:mod:`facray.training.data_mode`): the decoded arrays (``bytes_per_worker``) and the
peak while loading them, whose ratio is ``DECODE_HEADROOM``. Side by side: facray's batch-by-batch
reader (:func:`facray.data.prepared.read_prepared`) and the plain way (the whole Arrow table,
its bytes as Python objects, then decode), which facray used before.

Each load runs in a fresh process (its peak RSS is its own); the ratios are to the estimate.

    python bench/data_mode.py --prepared PREP [--columns image,sketch] [--columns image]
    python bench/data_mode.py --prepared PREP --throughput [--attributes Smiling] [--epochs 1]

``--throughput``: ``facray train-binary`` end to end on Ray, ``--data memory`` vs ``--data
stream``, same jobs and epochs: the epochs' seconds (as the run logged them to MLflow) and the
wall time, start-up and loading included, as ratios.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from facray.data.prepared import read_metadata
from facray.training.data_mode import DECODE_HEADROOM, bytes_per_worker
from facray.training.splits import SplitSpec, check_splits

CHILD = """
import json, resource, sys, time
from facray.training.splits import SplitSpec, load_split_arrays
import numpy as np, pyarrow, cv2  # the worker's imports, before the baseline
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096
base = rss()
start = time.perf_counter()
columns = tuple(sys.argv[2].split(','))
if sys.argv[3] == "facray":
    data = load_split_arrays(SplitSpec(sys.argv[1]), columns)
else:  # the plain way: one Arrow table with the pixels, sorted, decoded from Python byte strings
    from facray.data.prepared import decode_column, read_metadata, shard_dataset
    import pyarrow.dataset as pads
    meta = read_metadata(sys.argv[1])
    size, data = meta["size"], {}
    for split in ("train", "val", "test"):
        filt = (pads.field("split") == split) & (pads.field("error") == "")
        if split != "train":
            filt = filt & (pads.field("variant") == "original")
        table = shard_dataset(sys.argv[1]).to_table(columns=["image_id", "variant", *columns], filter=filt)
        table = table.sort_by([("image_id", "ascending"), ("variant", "ascending")])
        shapes = {"image": (size, size, 3), "sketch": (size, size) if meta["sketch_channels"] == 1 else (size, size, 3)}
        data[split] = {c: decode_column(table[c].to_pylist(), shapes[c], meta["image_format"]) for c in columns}
seconds = time.perf_counter() - start
held = sum(v.nbytes for part in data.values() for v in part.values() if hasattr(v, 'nbytes'))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"base": base, "peak": peak, "after": rss(), "held": held, "seconds": seconds}))
"""


def throughput(prepared: str, attributes: str, epochs: int, image_size: int, batch_size: int) -> None:
    import tempfile
    import time

    import mlflow

    from facray.runners.train import train
    from facray.runs import RunFolder
    from facray.training.configs import BinaryConfig

    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("memory", "stream"):
            cfg = BinaryConfig(prepared=prepared, out=f"{work}/{mode}", attributes=attributes, modalities=("real",),
                               online_augment="off",  # one pass per epoch: the rows counted below
                               epochs=epochs, image_size=image_size, batch_size=batch_size, patience=epochs + 1,
                               data=mode, cpus_per_worker=1, torch_threads=2)  # a CPU left for Ray Data
            start = time.perf_counter()
            train(cfg)
            wall = time.perf_counter() - start
            run = RunFolder(cfg.out)
            client = mlflow.MlflowClient(run.default_tracking_uri())
            seconds = [m.value for m in client.get_metric_history(run.mlflow_run_id(), "epoch_seconds")]
            figures[mode] = (sum(seconds), wall)
    rows = check_splits(SplitSpec(prepared))["train"] * epochs
    print(f"{'data':8} {'epoch s':>8} {'img/s':>7} {'wall s':>7}   ({rows:,} training images seen, {attributes}, real)")
    for mode, (seconds, wall) in figures.items():
        print(f"{mode:8} {seconds:8.1f} {rows / seconds:7.0f} {wall:7.1f}")
    (m_s, m_w), (s_s, s_w) = figures["memory"], figures["stream"]
    print(f"stream / memory: {m_s / s_s:.2f}x the epoch throughput, {m_w / s_w:.2f}x end to end")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--columns", action="append", help="pixel columns, comma-separated (repeatable)")
    ap.add_argument("--throughput", action="store_true", help="train-binary memory vs stream instead")
    ap.add_argument("--attributes", default="Smiling")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    if args.throughput:
        throughput(args.prepared, args.attributes, args.epochs, args.image_size, args.batch_size)
        return
    meta, rows = read_metadata(args.prepared), check_splits(SplitSpec(args.prepared))
    print(f"prepared: {args.prepared} ({meta['size']} px, sketch channels {meta.get('sketch_channels')}); rows "
          + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    print(f"{'columns, reader':20} {'estimate GB':>11} {'held GB':>8} {'peak-base GB':>12} {'after-base GB':>13} "
          f"{'held/est':>8} {'peak/est':>8}  (auto assumes peak/est <= {DECODE_HEADROOM:g})")
    for columns in args.columns or ["image,sketch", "image"]:
        estimate = bytes_per_worker(meta, rows, tuple(columns.split(",")))
        for reader in ("facray", "plain"):
            out = subprocess.run([sys.executable, "-c", CHILD, args.prepared, columns, reader], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            peak, after = r["peak"] - r["base"], r["after"] - r["base"]
            print(f"{columns + ' ' + reader:20} {estimate / 1e9:11.3f} {r['held'] / 1e9:8.3f} {peak / 1e9:12.3f} "
                  f"{after / 1e9:13.3f} {r['held'] / estimate:8.2f} {peak / estimate:8.2f}  "
                  f"({r['seconds']:.1f} s to load)")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
