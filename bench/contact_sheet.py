"""Contact sheet of a prepared folder: crops over their sketches (and weak masks over the crop when present), as one PNG.

    python bench/contact_sheet.py PREPARED --out sheet.png [--n 24] [--split train] [--errors]
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from facray.data.prepared import read_prepared


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prepared")
    p.add_argument("--out", default="contact_sheet.png")
    p.add_argument("--n", type=int, default=24)
    p.add_argument("--split", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = read_prepared(args.prepared, (args.split,) if args.split else None, ("image", "sketch", "masks"),
                         variants=("original",))
    pick = np.random.default_rng(args.seed).choice(len(rows["image"]), min(args.n, len(rows["image"])), replace=False)
    tiles = []
    for i in sorted(pick):
        img = rows["image"][i].copy()
        if not rows["face_found"][i]:
            cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (0, 0, 255), 3)  # red: no face
        sk = rows["sketch"][i]
        sk = cv2.cvtColor(sk, cv2.COLOR_GRAY2BGR) if sk.ndim == 2 else sk
        column = [img, sk]
        if "masks" in rows:  # the union of the 40 weak masks, tinted over the crop, landmarks in red
            m = cv2.resize(rows["masks"][i].max(0), img.shape[:2][::-1], interpolation=cv2.INTER_NEAREST) > 0
            tinted = rows["image"][i].copy()
            tinted[m] = (0.5 * tinted[m] + 0.5 * np.array([0, 200, 0])).astype(np.uint8)
            for x, y in rows["landmarks"][i].reshape(5, 2):
                if np.isfinite(x):
                    cv2.circle(tinted, (int(round(x)), int(round(y))), 1, (0, 0, 255), -1)
            column.append(tinted)
        tiles.append(np.vstack(column))
    per_row = 12
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % per_row)
    sheet = np.vstack([np.hstack(tiles[r:r + per_row]) for r in range(0, len(tiles), per_row)])
    cv2.imwrite(args.out, sheet)
    found = rows["face_found"].mean()
    print(f"{args.out}: {len(pick)} of {len(rows['image'])} images; face_found {found:.1%} "
          f"(red frame: no face, centre crop)")


if __name__ == "__main__":
    main()
