"""``facray demo`` / ``make demo``: the main pipeline end to end on generated data, locally.

Runs on the driver; starts a local Ray. Each step is the same library function its subcommand
calls, so the demo doubles as a smoke test of the whole chain.
"""
from __future__ import annotations

import time
from pathlib import Path

from facray.data.celeba import read_celeba
from facray.data.synth import write_synthetic_celeba


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run_demo(out: str | Path, n: int = 600, seed: int = 0) -> dict:
    """Generate a dataset under ``out`` and run the pipeline on it; return a summary dict."""
    out = Path(out).resolve()
    summary: dict = {}
    t = _step(f"1. generate {n} labelled faces (official CelebA layout) in {out / 'celeba'}")
    data_root = write_synthetic_celeba(out / "celeba", n=n, seed=seed)
    print(f"   done in {time.perf_counter() - t:.1f}s")

    t = _step("2. read the list files and stream images through Ray Data")
    from facray.data.datasets import build_image_dataset
    from facray.runtime import init_ray

    table = read_celeba(data_root)
    init_ray()
    ds = build_image_dataset(table)
    stats = ds.map_batches(_byte_stats, batch_format="numpy").to_pandas()
    per_split = stats.groupby("split").agg(images=("bytes", "size"), mean_kb=("bytes", "mean"))
    per_split["mean_kb"] = per_split["mean_kb"] / 1024
    print(per_split.round(1).to_string())
    summary["images"] = int(len(stats))
    print(f"   {len(stats)} images read through Ray Data in {time.perf_counter() - t:.1f}s")
    return summary


def _byte_stats(batch):
    import numpy as np
    return {"split": batch["split"], "bytes": np.array([len(b) for b in batch["image_bytes"]])}
