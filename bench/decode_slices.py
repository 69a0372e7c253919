"""Benchmark: memory of one labelling process on full-size generated faces, decoding the whole
batch before cropping vs decoding and cropping in slices (what ``facray label`` does).

Each variant runs in its own fresh process (one thread, like a labelling actor, glibc arenas as
the actors get them) on the same images: decode -> detect + crop -> sketch -> predict with the
same predictor, batch 64. Printed: the process's peak PSS (sampled every 20 ms), its PSS after
the predictor was built (the fixed part) and img/s. Input: the 1024 px faces of
``../shared/data/stylegan_sample`` (StyleGAN on FFHQ writes 1024 px), else generated 512 px faces.

    python bench/decode_slices.py --model RUN/combined --n 640
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import SHARED_DATA


def pss_mb() -> float:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:")) / 1024


def large_faces(n: int) -> list[str]:
    import cv2
    source = SHARED_DATA / "stylegan_sample"
    files = [str(p) for p in sorted(source.glob("*")) if source.is_dir()
             and p.suffix.lower() in (".png", ".jpg") and min(cv2.imread(str(p)).shape[:2]) >= 1024]
    if not files:
        from facray.data.synth import write_unlabelled_faces
        files = [str(p) for p in write_unlabelled_faces(Path(tempfile.mkdtemp()) / "faces", n=16, seed=0, sizes=(512,))]
    return (files * (n // len(files) + 1))[:n]


def worker(model: str, rows: int, n: int, batch_size: int) -> dict:
    """One labelling process: the chain decodes ``rows`` rows at a time."""
    import cv2
    import torch

    import facray.labelling.batch as labelling
    from facray.labelling.batch import BatchLabeller, preprocessing_for
    from facray.predictors.networks import load_predictor
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    labelling.DECODE_SLICE = rows
    predictor = load_predictor(model)
    labeller = BatchLabeller(predictor, preprocessing_for(predictor.manifest))
    paths = large_faces(n)
    fixed, peak, done = pss_mb(), [0.0], threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], pss_mb())
    threading.Thread(target=sample, daemon=True).start()
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        labeller({"path": np.array(paths[i:i + batch_size], dtype=object)})
    seconds = time.perf_counter() - start
    done.set()
    return {"rows": rows, "fixed_mb": fixed, "peak_mb": max(peak[0], pss_mb()), "img_s": len(paths) / seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="predictor folder (e.g. bench/label.py's trained one)")
    p.add_argument("--n", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.model, args.worker, args.n, args.batch_size)))
        return
    from facray.labelling.batch import DECODE_SLICE
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}  # as the labelling actors run
    results = {}
    for rows in (args.batch_size, DECODE_SLICE):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--n", str(args.n),
                              "--batch-size", str(args.batch_size), "--worker", str(rows)],
                             check=True, capture_output=True, text=True, env=env).stdout
        results[rows] = r = json.loads(out.strip().splitlines()[-1])
        print(f"decode {rows:3d} rows at a time: peak pss {r['peak_mb']:6.0f} MB (after building the predictor "
              f"{r['fixed_mb']:.0f} MB, batch work {r['peak_mb'] - r['fixed_mb']:.0f} MB), {r['img_s']:.1f} img/s")
    whole, sliced = results[args.batch_size], results[DECODE_SLICE]
    source = "stylegan_sample's 1024 px" if (SHARED_DATA / "stylegan_sample").is_dir() else "generated 512 px"
    print(f"{args.n} of {source} faces, batch {args.batch_size}: in slices "
          f"the batch work takes {(sliced['peak_mb'] - sliced['fixed_mb']) / (whole['peak_mb'] - whole['fixed_mb']):.2f}x "
          f"the memory at {sliced['img_s'] / whole['img_s']:.2f}x the speed")


if __name__ == "__main__":
    main()
