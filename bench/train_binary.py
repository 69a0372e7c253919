"""Benchmark: K binary ABM-CNN jobs trained fused vs separately, in one run.

Two sections, each printing model-images/s (one image seen by one model = 1) and the ratio:

1. ``pure``: no Ray. The pure-torch fused trainer (one pass over the data for all K models) vs the
   same K models trained one after another, each with its own pass. Runs anywhere torch runs,
   including a GPU box without Ray (``--pure-only --device cuda --size 180 --k 80``).
2. ``ray`` (unless ``--pure-only``): ``facray train-binary`` end to end, start-up included, in
   ``fused`` mode (one Ray Train run) vs ``separate`` mode (one Ray Train run per job as Tune
   trials), same jobs, same data, same epochs, early stopping off so both do the same work.

    python bench/train_binary.py                 # 8 jobs at 64x64 on generated data
    python bench/train_binary.py --pure-only --device cuda --size 180 --k 80 --batch-size 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facray.attributes import ATTRIBUTES
from facray.training.binary import FusedBinaryTrainer, TrainerConfig
from facray.training.binary_jobs import BinaryJob
from facray.training.splits import array_batches


def make_jobs(k: int, modalities=("real", "sketch")) -> list[BinaryJob]:
    per = -(-k // len(modalities))
    return [BinaryJob(a, m, 10 ** 6) for a in ATTRIBUTES[:per] for m in modalities][:k]


def random_data(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
            "sketch": rng.integers(0, 255, (n, size, size), dtype=np.uint8),
            "labels": rng.integers(0, 2, (n, 40)).astype(np.int8)}


def pure_section(args) -> None:
    device = torch.device(args.device)
    jobs = make_jobs(args.k)
    data = random_data(args.n, args.size)
    cfg = TrainerConfig(batch_size=args.batch_size, image_size=args.size, patience=10 ** 6, stack=args.stack)
    if device.type == "cuda":
        data = {k: torch.as_tensor(v, device=device) for k, v in data.items()}  # decoded once, kept close

    def timed(job_list) -> float:
        t = FusedBinaryTrainer(job_list, cfg, device)
        t.run_pass(array_batches(data, args.batch_size, True, 0, 0), train=True)  # warm-up pass
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        t.run_pass(array_batches(data, args.batch_size, True, 0, 1), train=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    fused = timed(jobs)
    separate = sum(timed([j]) for j in jobs)
    work = args.n * len(jobs)
    print(f"[pure] {len(jobs)} jobs, {args.size}px, batch {args.batch_size}, {args.n} images, {device}, "
          f"stack {FusedBinaryTrainer(jobs[:1], cfg, device).kind}")
    print(f"[pure] fused:    {work / fused:9.0f} model-img/s  ({fused:.1f}s)")
    print(f"[pure] separate: {work / separate:9.0f} model-img/s  ({separate:.1f}s)")
    print(f"[pure] fused / separate = {separate / fused:.2f}x")


def ray_section(args) -> None:
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.data.synth import write_synthetic_celeba
    from facray.training.configs import BinaryConfig
    from facray.runners.train import train

    tmp = Path(tempfile.mkdtemp(prefix="facray-bench-train-"))
    root = write_synthetic_celeba(tmp / "data", n=args.ray_images, seed=0)
    prepare(PrepareConfig(root=str(root), out=str(tmp / "prepared"), size=args.size, augment=1))
    attrs = ",".join(ATTRIBUTES[: -(-args.k // 2)])
    results = {}
    for mode in ("fused", "separate"):
        cfg = BinaryConfig(prepared=str(tmp / "prepared"), out=str(tmp / mode), attributes=attrs,
                                epochs=args.epochs, patience=10 ** 6, batch_size=args.batch_size,
                                online_augment="off",  # one pass per epoch: the work counted below
                                image_size=args.size, mode=mode, num_workers=1, max_concurrent=2,
                                cpus_per_worker=1.0 if mode == "fused" else 0.5,
                                torch_threads=2 if mode == "fused" else 1)
        start = time.perf_counter()
        train(cfg)
        results[mode] = time.perf_counter() - start
    import pandas as pd
    import pyarrow.dataset as pads
    splits = pads.dataset(str(tmp / "prepared" / "shards")).to_table(columns=["split"]).to_pandas().split
    n_train = int((splits == "train").sum())
    work = n_train * args.k * args.epochs
    print(f"[ray] {args.k} jobs, {args.size}px, batch {args.batch_size}, {n_train} train images, "
          f"{args.epochs} epochs, end to end with start-up ({pd.Timestamp.now():%H:%M})")
    for mode, seconds in results.items():
        print(f"[ray] {mode:<9} {work / seconds:8.0f} model-img/s  ({seconds:.1f}s)")
    print(f"[ray] fused / separate = {results['separate'] / results['fused']:.2f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--k", type=int, default=8, help="number of binary jobs")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n", type=int, default=512, help="images per pass in the pure section")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stack", default="auto", help="auto | loop | grouped")
    p.add_argument("--pure-only", action="store_true")
    p.add_argument("--ray-images", type=int, default=600, help="generated images for the Ray section")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)
    pure_section(args)
    if not args.pure_only:
        ray_section(args)


if __name__ == "__main__":
    main()
