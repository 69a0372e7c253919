"""Benchmark: does a stream-mode Ray Train worker's memory depend on the dataset's size, and does it
grow over the run? (issue 24: "memory flat over the epoch, worker memory independent of the
dataset size").

For each prepared folder, ``facray train-binary --data stream`` (Smiling, real, one worker of 1 CPU
with 2 torch threads, online augmentation off, no early stop) runs in a subprocess with its own
local Ray, while this script samples every second the anonymous resident memory (``RssAnon``: no
shared libraries, no object-store pages) of the Ray Train worker and of every other ``ray::``
process. Printed per run: the worker's peak in each sixth of its life, its overall peak, the other
Ray processes' largest and summed peaks; then each run's peak over the first run's, beside its rows
over the first run's.

``--malloc-arena-max N`` runs with N glibc malloc arenas per Ray worker instead of facray's 2
(:data:`facray.runners.runtime.ALLOCATOR_ENV`; the driver's value is passed on): glibc's own limit
is 8 per core, so 16 on 2 cores is the same as not setting it.

    python bench/stream_worker_memory.py --prepared SMALL --prepared LARGE [--epochs 3] [--image-size 64]
        [--malloc-arena-max 16]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import resident_memory
from facray.training.splits import SplitSpec, check_splits

BIN = Path(sys.executable).parent


def run(prepared: str, epochs: int, image_size: int, work: str, arena_max: int | None) -> dict:
    cmd = [str(BIN / "facray"), "train-binary", "--prepared", prepared, "--out", f"{work}/run",
           "--attributes", "Smiling", "--modalities", "real", "--data", "stream", "--epochs", str(epochs),
           "--patience", str(epochs + 1), "--image-size", str(image_size), "--online-augment", "off",
           "--cpus-per-worker", "1", "--torch-threads", "2"]
    samples: list[tuple[int, int, int]] = []  # (worker, largest other, sum of others) per second
    with open(f"{work}/log", "w") as log:
        env = {**os.environ, **({"MALLOC_ARENA_MAX": str(arena_max)} if arena_max else {})}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        start = time.perf_counter()
        while proc.poll() is None:
            now = [(title, anon) for title, anon in resident_memory().values() if title.startswith("ray::")]
            worker = max((anon for title, anon in now if "RayTrainWorker" in title), default=0)
            others = [anon for title, anon in now if "RayTrainWorker" not in title]
            if worker:
                samples.append((worker, max(others, default=0), sum(others)))
            time.sleep(1)
        seconds = time.perf_counter() - start
    if proc.returncode or not samples:
        tail = Path(f"{work}/log").read_text().splitlines()[-20:]  # the folder goes with the run
        raise SystemExit("\n".join([f"{prepared}: train-binary failed (rc {proc.returncode}) or no Ray Train "
                                     "worker was seen; the end of its log:", *tail]))
    n = len(samples)
    sixths = [max(s[0] for s in samples[i * n // 6:(i + 1) * n // 6] or [(0,)]) for i in range(6)]
    return {"rows": check_splits(SplitSpec(prepared))["train"], "seconds": seconds,
            "sixths": sixths, "peak": max(sixths), "other_largest": max(s[1] for s in samples),
            "other_sum": max(s[2] for s in samples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", action="append", required=True, help="prepared folder (repeat: smallest first)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--malloc-arena-max", type=int, help="glibc malloc arenas per worker (default: facray's 2)")
    args = ap.parse_args()
    figures = {}
    for prepared in args.prepared:
        with tempfile.TemporaryDirectory() as work:
            figures[prepared] = run(prepared, args.epochs, args.image_size, work, args.malloc_arena_max)
    gb = 1e9
    first = figures[args.prepared[0]]
    arenas = args.malloc_arena_max or int(os.environ.get("MALLOC_ARENA_MAX", 0)) or "2 (facray's)"
    print(f"train-binary --data stream, {args.epochs} epochs at {args.image_size} px, MALLOC_ARENA_MAX {arenas}; "
          "RssAnon in GB")
    for prepared, f in figures.items():
        print(f"{prepared}: {f['rows']:,} train rows, {f['seconds']:.0f} s; Train worker by sixth of its life "
              f"{' '.join(f'{s / gb:.2f}' for s in f['sixths'])}, peak {f['peak'] / gb:.2f}; other ray:: "
              f"largest {f['other_largest'] / gb:.2f}, sum {f['other_sum'] / gb:.2f}")
        print(f"  vs the first: {f['peak'] / first['peak']:.2f}x the worker's peak for "
              f"{f['rows'] / first['rows']:.2f}x the rows")


if __name__ == "__main__":
    main()
