"""Benchmark: facray's Ray Data preprocessing vs a plain single-process OpenCV loop.

Both run the same decode + face crop (+ detection where the dataset needs it) + sketch + resize on
the same images, in one run, and report images/s, the ratio per CPU core, and the memory growth
of the driver and every Ray worker (sampled RSS of the whole process tree).

    python bench/prepare.py                         # ../shared/data/celebahq_dev, else generated
    python bench/prepare.py --root DIR --n 5000 --repeat 1
    python bench/prepare.py --scale 5000,50000      # written Parquet only: memory flat, time linear?

``--scale``: the write path alone (what ``facray prepare`` runs) at each size, in one run: img/s,
seconds and the memory growth of the process tree, with each size's ratio to the first.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


from common import SHARED_DATA, TreeMemory
from facray.data.pipeline import PrepareConfig, preprocessing_chain, read_table

SHARED = SHARED_DATA / "celebahq_dev"


def plain_loop(table, cfg: PrepareConfig, image_kind: str, batch_size: int = 128) -> float:
    """The alternative: one process, the same pure ops, no Ray. Returns images/s."""
    import cv2
    cv2.setNumThreads(1)
    chain = preprocessing_chain(cfg, image_kind)
    cols = {c: table[c].to_numpy() for c in table.columns}
    start = time.perf_counter()
    for i in range(0, len(table), batch_size):
        chain({c: v[i:i + batch_size] for c, v in cols.items()})
    return len(table) / (time.perf_counter() - start)


def ray_pipeline(table, cfg: PrepareConfig, write_to: str | None) -> float:
    """facray's pipeline on Ray Data (start-up of the actors included): the dataset ``facray
    prepare`` builds. Returns images/s."""
    from facray.runners.prepare import build_prepare_dataset, write_shards

    start = time.perf_counter()
    ds = build_prepare_dataset(cfg, table)
    if write_to:
        write_shards(ds, write_to)
    else:
        for _ in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            pass
    return len(table) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=SHARED if SHARED.is_dir() else None)
    p.add_argument("--n", type=int, default=5000, help="images (the dataset is repeated to reach it)")
    p.add_argument("--size", type=int, default=180)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-actors", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=0.5)
    p.add_argument("--scale", default="", help="comma-separated image counts: the write path at each size only")
    args = p.parse_args()
    sizes = [int(n) for n in args.scale.split(",") if n]
    args.n = max(sizes, default=args.n)

    tmp = Path(tempfile.mkdtemp(prefix="facray-bench-"))
    if args.root is None:
        from facray.data.synth import write_synthetic_celeba
        args.root = write_synthetic_celeba(tmp / "synth", n=2000, seed=0)
        print(f"../shared/data/celebahq_dev not found: using {args.root} (generated)")
    cfg = PrepareConfig(root=str(args.root), size=args.size, augment=1, batch_size=args.batch_size,
                        num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor)
    table = read_table(cfg)
    image_kind = table.attrs["image_kind"]
    reps = -(-args.n // len(table))
    import pandas as pd
    table = pd.concat([table] * reps, ignore_index=True).iloc[:args.n]
    table["image_id"] = [f"{i:07d}_{x}" for i, x in enumerate(table.image_id)]
    table.attrs["image_kind"] = image_kind
    cores = os.cpu_count()
    if sizes:
        scale(table, cfg, sizes, tmp)
        return
    print(f"{len(table)} images from {args.root} ({image_kind}), crop {args.size}px, "
          f"batch {args.batch_size}, {args.num_actors} actors x {args.cpus_per_actor} CPU, {cores} cores")

    plain = plain_loop(table, cfg, image_kind)
    print(f"plain loop (1 process, cv2 1 thread):  {plain:8.1f} img/s")

    from facray.runners.runtime import init_ray
    init_ray()
    ray_pipeline(table.iloc[:256], cfg, None)  # warm the workers' imports once
    with TreeMemory() as mem:
        ray_iter = ray_pipeline(table, cfg, None)
    print(f"facray Ray Data (iterate):             {ray_iter:8.1f} img/s   memory growth {mem.growth_gb:.2f} GB")
    with TreeMemory() as mem_w:
        ray_write = ray_pipeline(table, cfg, str(tmp / "shards"))
    print(f"facray Ray Data (write Parquet):       {ray_write:8.1f} img/s   memory growth {mem_w.growth_gb:.2f} GB")
    for name, v in (("iterate", ray_iter), ("write", ray_write)):
        print(f"ratio {name}: {v / plain:.2f}x the plain loop overall, "
              f"{v / cores / plain:.2f}x per core ({cores} cores vs 1)")


def scale(table, cfg: PrepareConfig, sizes: list[int], tmp: Path) -> None:
    """The write path at each size: does prepare's memory stay flat and its time grow linearly?"""
    import shutil

    from facray.runners.runtime import init_ray
    init_ray()
    ray_pipeline(table.iloc[:256], cfg, None)  # warm the workers' imports once
    print(f"{'images':>8} {'seconds':>8} {'img/s':>7} {'peak growth GB (pss / rss)':>27} {'time / first':>12} "
          f"{'images / first':>14}")
    first = None
    for n in sizes:
        out = tmp / f"shards-{n}"
        with TreeMemory() as mem:
            rate = ray_pipeline(table.iloc[:n], cfg, str(out))
        shutil.rmtree(out)
        seconds = n / rate
        first = first or (n, seconds)
        growth = f"{mem.growth('pss'):.2f} / {mem.growth('rss'):.2f}"
        print(f"{n:8d} {seconds:8.1f} {rate:7.1f} {growth:>27} {seconds / first[1]:12.2f} {n / first[0]:14.2f}")


if __name__ == "__main__":
    main()
