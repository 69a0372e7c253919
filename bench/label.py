"""Benchmark: ``facray label`` vs a plain PyTorch DataLoader loop, same images, same trained model.

The plain loop is what one writes without facray: a ``torch.utils.data.DataLoader`` whose worker
processes decode, detect + crop and sketch with facray's own ops, and the main process running the
predictor's models one by one (``ABMCNN`` modules as trained, eval mode, ``no_grad``, default
memory layout). ``--plain-forward facray`` swaps in facray's predictor object there instead, to
separate what the pipeline gains from what the forward pass gains. Both print per-stage seconds
(decode, detect, crop, sketch, predict; summed over the processes doing them) and the ratio;
facray's run also prints its memory growth (driver + Ray, peak RSS of the process tree).

The model: ``--model`` (a predictor folder or MLflow URI), else a real trained one built first and
kept in ``--work``: the ABM chain on generated faces at 64 px (prepare -> train-binary for all 40
attributes x photo/sketch, 2 epochs -> combine, so every attribute has its validated modality and
threshold). The input is ``../shared/data/stylegan_sample`` repeated (as symlinks) to ``--n``
images, else generated StyleGAN-like faces.

    python bench/label.py --n 3000
    python bench/label.py --n 20000 --skip-plain     # memory stays flat?
    python bench/label.py --n 3000 --layout fused     # every actor decodes and predicts
    python bench/label.py --n 3000 --cli              # the command as users run it, driver included
    python bench/label.py --n 3000 --crops auto,detect  # template crops vs detecting every face

The plain loop detects every face (YuNet); facray label runs once per ``--crops`` entry (default
``auto``: template crops where an image follows a known aligned layout), each against the plain
loop and against the first.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import SHARED_DATA, TreeMemory
from facray.labelling.batch import BatchLabeller, format_stage_seconds, label_batch, preprocessing_for, stage_seconds
from facray.models.abm import ABMCNN
from facray.predictors.networks import load_predictor, read_predictor


def trained_predictor(work: Path, size: int, epochs: int) -> Path:
    """A real combined predictor (40 attributes, chosen modality each) trained on generated faces."""
    combined = work / "abm" / "combined"
    if (combined / "manifest.json").is_file():
        return combined
    # All in subprocesses: this process later forks DataLoader workers, which must not inherit
    # OpenCV's or torch's thread pools (a fork after they ran can hang the workers).
    root = work / "celeba"
    facray = [sys.executable, "-m", "facray.cli"]
    for cmd in (["data", "synth", "--out", str(root), "--n", "400", "--seed", "0"],
                ["prepare", "--root", str(root), "--out", str(work / "prepared"), "--size", str(size), "--augment", "1"],
                ["train-binary", "--prepared", str(work / "prepared"), "--out", str(work / "abm"), "--epochs", str(epochs),
                 "--image-size", str(size), "--cpus-per-worker", "1", "--batch-size", "64", "--online-augment", "off"],
                ["combine", "--run", str(work / "abm"), "--no-register"]):
        print("training the benchmark's predictor:", " ".join(cmd[:1] + cmd[3:]), flush=True)
        subprocess.run(facray + cmd, check=True, stdout=subprocess.DEVNULL)
    return combined


def make_inputs(folder: Path, n: int, min_side: int = 0) -> Path:
    source = SHARED_DATA / "stylegan_sample"
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if min_side:  # e.g. 1024: only the full-size generated faces (what StyleGAN on FFHQ writes)
            import cv2
            files = [p for p in files if min(cv2.imread(str(p)).shape[:2]) >= min_side]
    else:  # in a subprocess, for the reason given in trained_predictor
        generated = folder.parent / "generated"
        subprocess.run([sys.executable, "-m", "facray.cli", "data", "synth", "--unlabelled", "--out", str(generated),
                        "--n", "40"], check=True, stdout=subprocess.DEVNULL)
        files = sorted(generated.glob("*.*"))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = files[i % len(files)]
        os.symlink(src, folder / f"{i:06d}{src.suffix}")
    return folder


class PlainModels:
    """The straightforward forward pass, as trained: each attribute's ``ABMCNN`` one after
    another (a combined predictor), or the multi-task network; default memory layout, no_grad."""

    def __init__(self, model: str):
        manifest, weights = read_predictor(model)
        self.predictor = load_predictor(model)  # thresholds and naming only
        self.image_size = manifest.image_size
        self.models, self.network = [], None
        if manifest.model:  # multi-task
            from facray.models.registry import build_model
            self.network = build_model(manifest.model, self.image_size, **manifest.model_kwargs)
            self.network.load_state_dict(weights)
            self.network.eval()
            return
        for c in manifest.attributes:
            key = f"{c['attribute']}__{c['modality']}"
            m = ABMCNN(weights[key]["features.0.weight"].shape[1], self.image_size)
            m.load_state_dict(weights[key])
            self.models.append((self.predictor.columns[len(self.models)], c["modality"], m.eval()))

    def predict_proba(self, images, sketches=None):
        from facray.models.inputs import to_input
        out = np.full((len(images), 40), np.nan, np.float32)
        inputs = {"real": to_input(images, self.image_size, torch.device("cpu"))}
        with torch.no_grad():
            if self.network is not None:
                columns = self.predictor.columns
                out[:, columns] = torch.sigmoid(self.network(inputs["real"])["attributes"]).numpy()[:, columns]
                return self.predictor.calibrate(out)
            if sketches is not None:
                inputs["sketch"] = to_input(sketches, self.image_size, torch.device("cpu"))
            for column, modality, m in self.models:
                out[:, column] = torch.softmax(m(inputs[modality]), -1)[:, 1].numpy()
        return self.predictor.calibrate(out)  # the thresholds decide calibrated probabilities

    def __getattr__(self, name):  # decide, name, needs_sketch, crop...
        return getattr(self.predictor, name)


class CropDataset(torch.utils.data.Dataset):
    """One image per item through facray's decode/crop/sketch chain, timed per stage."""

    def __init__(self, paths, predictor):
        self.paths, self.predictor, self.labeller = paths, predictor, None

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        if self.labeller is None:  # built in the worker process
            import cv2
            cv2.setNumThreads(1)
            # Detection on every image: what a loop written without facray does.
            self.labeller = BatchLabeller(self.predictor, preprocessing_for(self.predictor.manifest, "detect"))
        return self.labeller.preprocess({"path": np.array([self.paths[i]], dtype=object)})


def collate(items):
    return {k: np.concatenate([it[k] for it in items]) for k in items[0]}


def plain_loop(paths, predictor, forward, batch_size: int, workers: int) -> tuple[float, dict]:
    """``predictor`` says what preprocessing is needed; ``forward`` predicts."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(CropDataset(paths, predictor), batch_size=batch_size,
                                         num_workers=workers, collate_fn=collate)
    frames = []
    for batch in loader:
        t = time.perf_counter()
        rows = label_batch(batch, forward)
        rows["seconds_predict"] = np.full(len(rows["path"]), (time.perf_counter() - t) / len(rows["path"]))
        frames.append(pd.DataFrame(rows))
    seconds = time.perf_counter() - start
    table = pd.concat(frames)
    assert len(table) == len(paths)
    return len(paths) / seconds, stage_seconds(table)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--model", default=None, help="predictor folder or MLflow URI (default: train one, see above)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "facray-bench-label"),
                   help="where the trained predictor is kept between runs")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-actors", type=int, default=0, help="facray label --num-actors (0: sized to the machine)")
    p.add_argument("--layout", choices=("split", "fused"), default="split", help="facray label --layout")
    p.add_argument("--preprocess-actors", type=int, default=0, help="facray label --preprocess-actors (0: sized to the machine)")
    p.add_argument("--torch-threads", type=int, default=0, help="facray label --torch-threads (0: sized to the machine)")
    p.add_argument("--cli", action="store_true",
                   help="run `facray label` as a command (its driver a fresh process, counted whole) instead of in this one")
    p.add_argument("--min-side", type=int, default=0, help="only input images at least this large (1024: full-size faces)")
    p.add_argument("--plain-forward", choices=("models", "facray"), default="models")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--crops", default="auto", help="facray label --crop values to run, comma-separated (e.g. auto,detect)")
    args = p.parse_args()

    model = args.model or str(trained_predictor(Path(args.work), args.size, args.epochs))
    predictor = load_predictor(model)
    tmp = Path(tempfile.mkdtemp(prefix="facray-bench-label-"))
    folder = make_inputs(tmp / "images", args.n, args.min_side)
    paths = sorted(str(q) for q in folder.iterdir())
    sketched = sum(c["modality"] == "sketch" for c in predictor.choices) if hasattr(predictor, "stacks") else 0
    print(f"{len(paths)} images ({'stylegan_sample' if (SHARED_DATA / 'stylegan_sample').is_dir() else 'generated'}"
          f" repeated), predictor {predictor.name}: {len(predictor.attributes)} attributes ({sketched} on sketches) at "
          f"{predictor.image_size}px, batch {args.batch_size}, {os.cpu_count()} cores, torch {torch.__version__}")

    if not args.skip_plain:
        forward = PlainModels(model) if args.plain_forward == "models" else predictor
        plain, plain_stages = plain_loop(paths, predictor, forward, args.batch_size, workers=2)
        print(f"plain DataLoader (2 workers) + {args.plain_forward} forward: {plain:8.1f} img/s")
        print(f"  stages: {format_stage_seconds(plain_stages)}")
    runs = {}
    for crop in args.crops.split(","):
        runs[crop] = run_facray(args, model, folder, tmp / f"labels-{crop}.csv", crop, len(paths))
        if not args.skip_plain:
            print(f"ratio facray (--crop {crop}) / plain = {runs[crop] / plain:.2f}x")
    first = next(iter(runs))
    for crop, speed in list(runs.items())[1:]:
        print(f"ratio --crop {first} / --crop {crop} = {runs[first] / speed:.2f}x")


def run_facray(args, model: str, folder: Path, out: Path, crop: str, n: int) -> float:
    """One facray label run; prints its speed, memory and stages; returns img/s."""
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images  # Ray only here: the plain loop runs without it
    options = dict(batch_size=args.batch_size, layout=args.layout, num_actors=args.num_actors,
                   preprocess_actors=args.preprocess_actors, torch_threads=args.torch_threads, crop=crop)
    with TreeMemory() as mem:
        start = time.perf_counter()
        if args.cli:  # the command a user runs, its driver a fresh process: all its memory counts
            command = [sys.executable, "-m", "facray.cli", "label", "--images", str(folder), "--model", model,
                       "--out", str(out), *[f"--{k.replace('_', '-')}={v}" for k, v in options.items()]]
            printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        else:
            summary = label_images(LabelConfig(images=str(folder), model=model, out=str(out), **options))
        seconds = time.perf_counter() - start
    facray = n / seconds
    print(f"facray label --crop {crop} ({'the command, ' if args.cli else ''}Ray Data, start-up incl.): "
          f"{facray:8.1f} img/s")
    print(f"  {mem.format()}")
    print(f"  {mem.format_by_name()}")
    if args.cli:
        print("  " + "\n  ".join(line for line in printed.splitlines() if line.lstrip().startswith(("wall", "in the"))))
    else:
        methods = pd.read_csv(out, usecols=["crop_method"], keep_default_na=False).crop_method.value_counts()
        print(f"  faces found {summary.faces_found}/{summary.inputs}; crop methods {methods.to_dict()}")
        print("  wall clock: " + ", ".join(f"{k} {v:.1f}s" for k, v in summary.phases.items()))
        if summary.phases.get("pipeline"):
            print(f"  steady: {n / summary.phases['pipeline']:.1f} img/s once started (start-up "
                  f"{summary.phases.get('start-up', 0):.1f}s)")
        print(f"  stages: {format_stage_seconds(summary.stages)}")
    return facray


if __name__ == "__main__":
    main()
