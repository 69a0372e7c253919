"""Benchmark: the labelling predictor's forward pass, and the whole labelling pipeline without Ray, on a GPU.

The device machine has torch and OpenCV but no Ray, so this runs the pure parts ``facray label``'s
actors run (:mod:`facray.labelling.batch`, :class:`facray.predictors.networks.CombinedPredictor`).

1. Forward alone, on batches already on the GPU: K ABM-CNNs (random weights: their speed does
   not depend on them) per ``--size``, run (a) the plain way, each model in turn, fp32, default
   layout, ``no_grad``; (b) as facray's predictor does, its stack on the device's default kind,
   bf16 autocast, channels_last, ``inference_mode``; (c) variants of (b) (the other stack kind,
   contiguous layout, ``torch.compile``), to show what each choice buys. img/s and model-img/s.
2. ``predict_proba`` from host uint8 crops, the predictor's whole call (copy in, forward for both
   modalities, probabilities back).
3. The whole pipeline: a DataLoader whose ``--workers`` processes decode, detect (YuNet) + crop and
   sketch with facray's ops, feeding facray's predictor on the GPU in the main process, over
   ``--images`` repeated to ``--n``; img/s, per-stage seconds, and which stage bounds it.

    python bench/label_gpu.py --sizes 64 180 --images ../shared/data/stylegan_sample --n 20000
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from facray.attributes import ATTRIBUTES
from facray.models.abm import ABMCNN, build_stack
from facray.models.inputs import to_channels_last
from facray.predictors.format import FORMAT, Manifest
from facray.predictors.networks import CombinedPredictor


def random_predictor(size: int, k: int, sketched: int, device: torch.device) -> CombinedPredictor:
    """A combined predictor of ``k`` attributes, the first ``sketched`` of them on sketches."""
    choices, weights = [], {}
    for j, attribute in enumerate(ATTRIBUTES[:k]):
        modality = "sketch" if j < sketched else "real"
        torch.manual_seed(j)
        weights[f"{attribute}__{modality}"] = ABMCNN(1 if modality == "sketch" else 3, size).state_dict()
        choices.append({"attribute": attribute, "modality": modality, "threshold": 0.5})
    manifest = Manifest(format=FORMAT, attributes=choices, image_size=size, crop={"size": size, "margin": 0.35},
                        sketch_channels=1, weights_sha256="", tensor_shapes={}, name=f"random-abm-{k}x{size}px")
    return CombinedPredictor(manifest, weights, device)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rate(fn, batch: int, seconds: float = 2.0) -> float:
    """Images per second of ``fn()`` (one batch per call), after warm-up, synchronised."""
    for _ in range(3):
        fn()
    synchronize()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
        if calls % 5 == 0:
            synchronize()
    synchronize()
    return calls * batch / (time.perf_counter() - start)


def forward_rates(size: int, k: int, batch: int, device: torch.device, compile_too: bool) -> None:
    x = torch.rand(batch, 3, size, size, device=device)
    plain = [ABMCNN(3, size).to(device).eval() for _ in range(k)]

    def run_plain():
        with torch.no_grad():
            for m in plain:
                m(x)

    results = {"plain: each model in turn, fp32": rate(run_plain, batch)}
    del plain
    seeds = list(range(k))
    for kind in ("grouped", "loop"):
        for layout in (torch.channels_last, torch.contiguous_format):
            stack = build_stack(kind, seeds, 3, size, 0.0).to(device).eval()
            if layout is torch.channels_last:
                to_channels_last(stack)
            xs = x.contiguous(memory_format=layout)

            def run(stack=stack, xs=xs):
                with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=xs.is_cuda):
                    stack(xs)

            tag = "channels_last" if layout is torch.channels_last else "contiguous"
            results[f"{kind} stack, bf16, {tag}"] = rate(run, batch)
            if compile_too and layout is torch.channels_last:
                compiled = torch.compile(stack)

                def run_compiled(compiled=compiled, xs=xs):
                    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=xs.is_cuda):
                        compiled(xs)
                try:
                    results[f"{kind} stack, bf16, {tag}, torch.compile"] = rate(run_compiled, batch)
                except Exception as e:  # noqa: BLE001 - a compiler failure is a result to print
                    print(f"    torch.compile failed for {kind}: {type(e).__name__}: {str(e)[:200]}")
            del stack
    base = results["plain: each model in turn, fp32"]
    print(f"forward alone, {k} ABM-CNNs at {size} px, batch {batch}:")
    for name, r in results.items():
        print(f"  {name:48s} {r:10.0f} img/s {r * k:12.0f} model-img/s  {r / base:5.2f}x plain")


def predictor_rate(size: int, k: int, sketched: int, batch: int, device: torch.device) -> None:
    predictor = random_predictor(size, k, sketched, device)
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)
    sketches = images[..., 0].copy()
    r = rate(lambda: predictor.predict_proba(images, sketches), batch)
    print(f"predict_proba from host uint8 crops, {k} ABM-CNNs ({sketched} on sketches) at {size} px, "
          f"batch {batch}: {r:.0f} img/s", flush=True)


def pipeline_rate(images: Path, n: int, size: int, k: int, sketched: int, batch: int, workers: int,
                  device: torch.device) -> None:
    from label import CropDataset, collate  # bench/label.py's plain DataLoader pieces

    from facray.labelling.batch import format_stage_seconds, label_batch, stage_seconds
    import pandas as pd

    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    folder = Path(tempfile.mkdtemp(prefix="facray-label-gpu-"))
    for i in range(n):
        os.symlink(files[i % len(files)].resolve(), folder / f"{i:06d}{files[i % len(files)].suffix}")
    paths = sorted(str(q) for q in folder.iterdir())
    predictor = random_predictor(size, k, sketched, device)
    # The workers need only what preprocessing needs (crop, sketch), not the models.
    needs = SimpleNamespace(crop=predictor.crop, needs_sketch=predictor.needs_sketch,
                            sketch_channels=predictor.sketch_channels)
    loader = torch.utils.data.DataLoader(CropDataset(paths, needs), batch_size=batch, num_workers=workers,
                                         collate_fn=collate, prefetch_factor=4, persistent_workers=False)
    frames, start, predict_seconds = [], time.perf_counter(), 0.0
    for b in loader:
        t = time.perf_counter()
        rows = label_batch(b, predictor)
        spent = time.perf_counter() - t
        predict_seconds += spent
        rows["seconds_predict"] = np.full(len(rows["path"]), spent / len(rows["path"]))
        frames.append(pd.DataFrame(rows))
    seconds = time.perf_counter() - start
    table = pd.concat(frames)
    assert len(table) == len(paths)
    stages = stage_seconds(table)
    cpu_wall = sum(v for s, v in stages.items() if s != "predict") / workers
    bound = "the CPU stages (decode/detect/crop/sketch)" if cpu_wall > predict_seconds else "the GPU forward"
    print(f"whole pipeline without Ray: {n} images ({len(files)} StyleGAN files repeated), {k} ABM-CNNs "
          f"({sketched} on sketches) at {size} px, batch {batch}, {workers} CPU workers of {os.cpu_count()} cores "
          f"feeding 1 GPU: {n / seconds:.0f} img/s, faces found {int(table.face_found.sum())}/{n}")
    print(f"  stages (busy seconds over all processes): {format_stage_seconds(stages)}")
    print(f"  CPU stages per worker {cpu_wall:.1f} s vs GPU predict {predict_seconds:.1f} s of {seconds:.1f} s: "
          f"bounded by {bound}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 180])
    p.add_argument("--k", type=int, default=40, help="ABM-CNNs in the predictor (one per attribute)")
    p.add_argument("--sketched", type=int, default=10, help="of which on sketches")
    p.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--images", default=None, help="folder of images for the whole pipeline (skipped without)")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    p.add_argument("--pipeline-size", type=int, default=64)
    p.add_argument("--pipeline-batch", type=int, default=512)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # cpu: a smoke test only
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, {os.cpu_count()} CPU cores", flush=True)
    for size in args.sizes:
        for batch in args.batch:
            forward_rates(size, args.k, batch, device, args.compile)
            predictor_rate(size, args.k, args.sketched, batch, device)
    if args.images:
        pipeline_rate(Path(args.images), args.n, args.pipeline_size, args.k, args.sketched, args.pipeline_batch,
                      args.workers, device)


if __name__ == "__main__":
    main()
