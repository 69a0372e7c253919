"""Benchmark: template crops (``--crop auto``) against full detection (``--crop detect``), same
images, same predictor, in one process (no Ray: the two preprocessing chains facray label's actors
run, timed stage by stage).

For each folder it prints how many images were cropped by a template, how far the template's
face box sits from the full-size detection's (centre distance in box sizes, size ratio), the seconds per stage both
ways, and how well the two paths' decisions agree (cells of image x attribute with the same
decision, and mean |probability difference|). Where the folder is a CelebA layout with labels
(``celebahq_dev``, ``celeba_sample``), the accuracy of both paths on its ``--split`` too.

    python bench/template_crop.py --model runs/hq64/model            # stylegan_sample + celebahq_dev val
    python bench/template_crop.py --model M --images DIR [--images DIR2 ...]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from common import SHARED_DATA
from facray.attributes import ATTRIBUTES
from facray.data.celeba import labels_matrix, read_celeba
from facray.data.folder import list_source
from facray.data.imageio import read_image
from facray.data.transforms.detect import FaceDetector
from facray.data.transforms.templates import template_for_shape
from facray.labelling.batch import BatchLabeller, format_stage_seconds, preprocessing_for, stage_seconds
from facray.predictors.networks import load_predictor


def label_all(paths: list[str], predictor, crop: str, batch_size: int = 64):
    import pandas as pd
    labeller = BatchLabeller(predictor, preprocessing_for(predictor.manifest, crop))
    parts, start = [], time.perf_counter()
    for i in range(0, len(paths), batch_size):
        parts.append(pd.DataFrame(labeller({"path": np.array(paths[i:i + batch_size], dtype=object)})))
    return pd.concat(parts, ignore_index=True), time.perf_counter() - start


def compare(name: str, paths: list[str], predictor, truth: np.ndarray | None) -> None:
    auto, t_auto = label_all(paths, predictor, "auto")
    detect, t_detect = label_all(paths, predictor, "detect")
    templated = (auto.crop_method == "template").to_numpy()
    # The template's face box against the detector's (both from 5 landmarks, as the crops are):
    # the images are read again and detected at full size here.
    detector, centre, size = FaceDetector("yunet"), [], []
    for path in np.asarray(paths, dtype=object)[templated]:
        image = read_image(str(path))
        h, w = image.shape[:2]
        expected, found = template_for_shape(w, h).box_for(w, h), detector.detect(image)
        if found is not None:
            centre.append(np.hypot(found.box.cx - expected.cx, found.box.cy - expected.cy) / found.box.size)
            size.append(abs(np.log(found.box.size / expected.size)))
    probs = [f"{x}_prob" for x in ATTRIBUTES]
    agree = (auto[list(ATTRIBUTES)].to_numpy() == detect[list(ATTRIBUTES)].to_numpy()).mean()
    print(f"\n{name}: {len(paths)} images, {templated.sum()} cropped by a template "
          f"({100 * templated.mean():.1f}%), crop methods with auto: {auto.crop_method.value_counts().to_dict()}")
    if centre:
        print(f"  template box vs detector box: centre distance in box sizes median {np.median(centre):.3f}, "
              f"p95 {np.percentile(centre, 95):.3f}, max {np.max(centre):.3f}; |log size ratio| median "
              f"{np.median(size):.3f}, max {np.max(size):.3f}")
    print(f"  decisions agreeing (image x attribute): {100 * agree:.2f}%; mean |p_auto - p_detect| "
          f"{np.nanmean(np.abs(auto[probs].to_numpy() - detect[probs].to_numpy())):.4f}")
    for label, rows, secs in (("auto", auto, t_auto), ("detect", detect, t_detect)):
        line = f"  {label:6s}: {len(paths) / secs:6.1f} img/s ({format_stage_seconds(stage_seconds(rows))})"
        if truth is not None:
            pred = rows[list(ATTRIBUTES)].to_numpy(np.float64)
            ok = np.isfinite(pred) & (truth >= 0)
            line += f"; mean accuracy {100 * ((pred == truth) & ok).sum(0).astype(float).sum() / ok.sum():.2f}%"
        print(line)
    print(f"  speed: auto {t_detect / t_auto:.2f}x detect")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="predictor folder or MLflow URI")
    ap.add_argument("--images", action="append", help="folders to compare (default: the shared data)")
    ap.add_argument("--split", default="val", help="CelebA split to score where labels exist")
    ap.add_argument("--limit", type=int, default=1000)
    args = ap.parse_args()
    predictor = load_predictor(args.model)
    import torch
    torch.set_num_threads(2)
    if args.images:
        for folder in args.images:
            compare(folder, list_source(folder).paths[:args.limit], predictor, None)
        return
    compare("stylegan_sample", list_source(str(SHARED_DATA / "stylegan_sample")).paths, predictor, None)
    for name in ("celebahq_dev", "celeba_sample"):
        root = SHARED_DATA / name
        if not root.is_dir():
            continue
        table = read_celeba(root)
        table = table[table.split == args.split].iloc[:args.limit]
        compare(f"{name} ({args.split})", table.path.tolist(), predictor, labels_matrix(table))


if __name__ == "__main__":
    main()
