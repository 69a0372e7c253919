"""Benchmark: ``facray label`` vs a plain PyTorch DataLoader loop, same images, same model.

Both decode, detect + crop (and sketch when the predictor needs it) and predict with the same
predictor, batch for batch; the plain loop uses a ``torch.utils.data.DataLoader`` with worker
processes for decoding and runs the model in the main process. Prints images/s, the ratio, and the
memory growth of facray's run (driver + Ray workers). The input is ``../shared/data/stylegan_sample``
repeated (as symlinks) to ``--n`` images, else generated StyleGAN-like faces.

    python bench/label.py --n 2000
    python bench/label.py --model runs/abm/combined --n 20000     # memory stays flat?
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import SHARED_DATA, TreeMemory
from facray.labelling import label_batch, preprocessing_for
from facray.labelling_ray import LabelConfig, label_images, smoke_model
from facray.predictor import load_predictor


def make_inputs(folder: Path, n: int) -> Path:
    source = SHARED_DATA / "stylegan_sample"
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    else:
        from facray.data.synth import write_unlabelled_faces
        files = write_unlabelled_faces(folder.parent / "generated", n=40, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = files[i % len(files)]
        os.symlink(src, folder / f"{i:06d}{src.suffix}")
    return folder


class CropDataset(torch.utils.data.Dataset):
    """One image per item through the same decode/crop/sketch chain facray uses."""

    def __init__(self, paths, predictor):
        self.paths, self.predictor, self.chain = paths, predictor, None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.chain is None:  # built in the worker process
            import cv2
            cv2.setNumThreads(1)
            self.chain = preprocessing_for(self.predictor)
        return self.chain({"path": np.array([self.paths[i]], dtype=object)})


def collate(items):
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}


def plain_loop(paths, predictor, batch_size: int, workers: int) -> float:
    torch.set_num_threads(2)
    loader = torch.utils.data.DataLoader(CropDataset(paths, predictor), batch_size=batch_size,
                                         num_workers=workers, collate_fn=collate)
    start = time.perf_counter()
    rows = 0
    for batch in loader:
        rows += len(label_batch(batch, predictor)["path"])
    assert rows == len(paths)
    return len(paths) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--model", default=None, help="predictor folder or MLflow URI (default: an "
                   "untrained 40-attribute predictor at --size: speed does not depend on weights)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--skip-plain", action="store_true")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="facray-bench-label-"))
    model = args.model or str(smoke_model(tmp / "predictor", crop_size=args.size))
    predictor = load_predictor(model)
    folder = make_inputs(tmp / "images", args.n)
    paths = sorted(str(q) for q in folder.iterdir())
    print(f"{len(paths)} images ({'stylegan_sample' if (SHARED_DATA / 'stylegan_sample').is_dir() else 'generated'}"
          f" repeated), predictor {predictor.name}: {len(predictor.attributes)} attributes at "
          f"{predictor.image_size}px, sketch {'yes' if predictor.needs_sketch else 'no'}, batch {args.batch_size}, "
          f"{os.cpu_count()} cores")

    if not args.skip_plain:
        plain = plain_loop(paths, predictor, args.batch_size, workers=2)
        print(f"plain DataLoader (2 workers) + model: {plain:8.1f} img/s")
    with TreeMemory() as mem:
        start = time.perf_counter()
        summary = label_images(LabelConfig(images=str(folder), model=model, out=str(tmp / "labels.csv"),
                                           batch_size=args.batch_size, num_actors=2, cpus_per_actor=0.5))
        seconds = time.perf_counter() - start
    facray = summary.inputs / seconds
    print(f"facray label (Ray Data, start-up incl.): {facray:8.1f} img/s   memory growth {mem.growth_gb:.2f} GB "
          f"(peak {mem.peak / 1e9:.2f} GB)   faces found {summary.faces_found}/{summary.inputs}")
    if not args.skip_plain:
        print(f"ratio facray / plain = {facray / plain:.2f}x")


if __name__ == "__main__":
    main()
