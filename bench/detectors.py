"""Face detectors side by side on real photos: faces found, landmark accuracy, speed.

    python bench/detectors.py [--data ../shared/data] [--hq-limit 1000] [--sheet wild_yunet.png]

For each detector (YuNet via yuface, OpenCV's Haar cascade), on in-the-wild CelebA, CelebA-HQ and
MTFL (whose landmark file gives ground truth): the share of images with a face found, and ms per
image on this machine (one thread). On MTFL a face counts as *correct* when the detected face box's
centre lies within 0.25 of the true face box's size of the true centre (boxes from the 5 landmarks
for both, the same formula facray crops with); for detectors that give landmarks, the mean eye
error relative to the true eye distance is printed too. ``--sheet`` writes the in-the-wild crops
of the first detector as one PNG to check by eye (real faces: keep it out of the repository).
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from common import SHARED_DATA
from facray.data.celeba import LANDMARK_COLUMNS, read_celeba
from facray.data.imageio import read_image
from facray.data.mtfl import read_mtfl
from facray.data.transforms.detect import FaceDetector
from facray.data.transforms.face import crop_square, face_box_from_landmarks


def run(detector: FaceDetector, paths: list[str]):
    found, seconds = [], 0.0
    for p in paths:
        image = read_image(p)
        start = time.perf_counter()
        found.append((image, detector.detect(image)))
        seconds += time.perf_counter() - start
    return found, 1000 * seconds / max(len(paths), 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_DATA))
    ap.add_argument("--hq-limit", type=int, default=1000)
    ap.add_argument("--detectors", default="yunet,haar")
    ap.add_argument("--sheet", default="")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    sets = {
        "inthewild_sample": read_celeba(f"{args.data}/inthewild_sample").path.tolist(),
        f"celebahq_dev[:{args.hq_limit}]": read_celeba(f"{args.data}/celebahq_dev").path.tolist()[:args.hq_limit],
    }
    mtfl = read_mtfl(f"{args.data}/mtfl_sample")
    print(f"{'detector':<8} {'data':<24} {'images':>6} {'found':>7} {'ms/img':>7}  notes")
    for name in args.detectors.split(","):
        det = FaceDetector(name)
        for data, paths in sets.items():
            found, ms = run(det, paths)
            hits = sum(f is not None for _, f in found)
            print(f"{det.name:<8} {data:<24} {len(paths):>6} {hits / len(paths):>7.1%} {ms:>7.1f}", flush=True)
            if args.sheet and data == "inthewild_sample" and name == args.detectors.split(",")[0]:
                tiles = []
                for image, f in found:
                    if f is None:
                        tile = cv2.resize(image, (96, 96))
                        cv2.rectangle(tile, (0, 0), (95, 95), (0, 0, 255), 3)
                    else:
                        tile, _ = crop_square(image, f.box, 96)
                    tiles.append(tile)
                tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % 15)
                sheet = np.vstack([np.hstack(tiles[r:r + 15]) for r in range(0, len(tiles), 15)])
                cv2.imwrite(args.sheet, sheet)
        found, ms = run(det, mtfl.path.tolist())
        correct, eye_err = 0, []
        for (image, f), lm in zip(found, mtfl_landmarks(mtfl)):
            if f is None:
                continue
            true_box = face_box_from_landmarks(lm)
            if np.hypot(f.box.cx - true_box.cx, f.box.cy - true_box.cy) <= 0.25 * true_box.size:
                correct += 1
                if f.landmarks is not None:
                    eye_dist = np.linalg.norm(lm[1] - lm[0])
                    eye_err.append(np.linalg.norm(f.landmarks[:2] - lm[:2], axis=1).mean() / eye_dist)
        hits = sum(f is not None for _, f in found)
        note = f"correct {correct / len(found):.1%}" + (f", eye error {np.mean(eye_err):.1%} of eye distance"
                                                       if eye_err else "")
        print(f"{det.name:<8} {'mtfl_sample':<24} {len(found):>6} {hits / len(found):>7.1%} {ms:>7.1f}  {note}",
              flush=True)


def mtfl_landmarks(table):
    xy = table[list(LANDMARK_COLUMNS)].to_numpy(np.float32)
    return xy.reshape(-1, 5, 2)


if __name__ == "__main__":
    main()
