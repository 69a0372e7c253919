"""Cross-dataset labelling: a facray model trained on CelebA labels MTFL photos it never saw, and
its Male / Smiling / Eyeglasses columns are scored against MTFL's own labels.

    python bench/cross_dataset.py --model RUN_OR_MODEL_URI [--mtfl ../shared/data/mtfl_train]
                                  [--split test] [--seed 0] [--out /tmp/cross.csv]

The MTFL rows are those ``facray prepare --dataset mtfl --split abm --seed SEED`` puts in
``--split`` (so the figures sit beside the MTFL models' own test figures); the photos go through
``facray label`` exactly as a user's would (face detection, the model's own crop), then accuracy,
precision and recall per attribute are printed, with the majority baseline.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from common import SHARED_DATA
from facray.data.pipeline import PrepareConfig, read_table
from facray.labelling.config import LabelConfig
from facray.runners.label import label_images
from facray.training.metrics import confusion_metrics

ATTRIBUTES = ("Male", "Smiling", "Eyeglasses")  # what MTFL labels


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a facray run folder, model folder or models:/ URI")
    p.add_argument("--mtfl", default=str(SHARED_DATA / "mtfl_train"))
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args()

    table = read_table(PrepareConfig(dataset="mtfl", root=args.mtfl, split="abm", seed=args.seed))
    table = table[table.split == args.split].reset_index(drop=True)
    work = Path(tempfile.mkdtemp(prefix="facray-cross-"))
    listing = work / "images.txt"
    listing.write_text("\n".join(table.path) + "\n")
    out = Path(args.out) if args.out else work / "labels.csv"
    summary = label_images(LabelConfig(images=str(listing), model=args.model, out=str(out)))
    rows = pd.read_csv(out, keep_default_na=False, na_values=[""]).set_index("path")
    rows = rows.loc[table.path]
    found = rows.face_found.astype(str).str.lower().isin(["true", "1"]).mean()
    print(f"\n{len(table)} MTFL {args.split} photos ({args.mtfl}, abm split seed {args.seed}); model {args.model}; "
          f"faces found {found:.1%}; errors {rows.error.notna().sum()}; "
          f"{summary.inputs / max(summary.seconds, 1e-9):.1f} img/s")
    print(f"{'attribute':12s} {'accuracy':>9s} {'precision':>9s} {'recall':>7s} {'majority':>8s} {'n':>5s}")
    for a in ATTRIBUTES:
        if rows[a].isna().all():
            print(f"{a:12s} (not predicted by this model)")
            continue
        ok = rows[a].notna().to_numpy()
        truth = table[a].to_numpy()[ok] == 1
        pred = rows[a].to_numpy()[ok] == 1
        m = confusion_metrics((pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(), (~pred & ~truth).sum())
        majority = max(truth.mean(), 1 - truth.mean())
        print(f"{a:12s} {float(m['accuracy']):9.3f} {float(m['precision']):9.3f} {float(m['recall']):7.3f} "
              f"{majority:8.3f} {int(ok.sum()):5d}")
    print(f"labels: {out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
