"""A learnable generated CelebA: procedurally drawn faces whose attributes drive the picture.

Runs on the driver (or anywhere); pure numpy/OpenCV. ``write_synthetic_celeba`` writes the official
CelebA layout (``img_align_celeba/`` + every list file, CRLF like the real ones) so every reader and
pipeline can run on it without real data. The attributes in ``RENDERED_ATTRIBUTES`` are drawn
(hair colour, bald, bangs, hat, glasses, smile, open mouth, moustache, goatee/beard, pale skin,
make-up, lipstick, blur); the other attributes are random labels with no visual cue, like label
noise. Landmarks and bbox are where the drawing put the eyes, nose, mouth and face.

``write_unlabelled_faces`` imitates a folder of StyleGAN output (square 1024/256 px, PNG and JPEG,
face filling the frame, no labels) for the labelling job.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facray.attributes import ATTRIBUTES, RENDERED_ATTRIBUTES

# Everything is drawn in a 256x256 "design" frame, then warped to the output by a similarity
# transform; landmarks go through the same transform, so they match the drawing exactly.
DESIGN = 256
EYES = np.array([[104.0, 124.0], [152.0, 124.0]])
NOSE = np.array([128.0, 152.0])
MOUTH = np.array([[108.0, 180.0], [148.0, 180.0]])
FACE_CENTER, FACE_AXES = (128.0, 142.0), (62.0, 82.0)

HAIR_COLOURS = {  # BGR
    "Black_Hair": (25, 22, 20), "Blond_Hair": (110, 205, 235), "Brown_Hair": (35, 65, 115),
    "Gray_Hair": (175, 175, 170), None: (40, 55, 150),  # auburn when no named colour
}
HAIR_PRIOR = {"Black_Hair": 0.25, "Blond_Hair": 0.18, "Brown_Hair": 0.22, "Gray_Hair": 0.08, None: 0.27}
UNRENDERED_RATE = 0.3


@dataclass
class Identity:
    """Traits fixed for one synthetic person across their photos."""
    male: int
    pale: int
    skin: tuple[int, int, int]
    hair: str | None
    bald: int
    face_axes: tuple[float, float]
    eye_shift: float


def sample_identity(rng: np.random.Generator) -> Identity:
    male = int(rng.random() < 0.45)
    pale = int(rng.random() < 0.2)
    if pale:
        skin = tuple(int(v) for v in rng.integers([225, 228, 235], [240, 242, 252]))
    else:
        base = rng.uniform(0.35, 0.85)
        skin = (int(60 + 110 * base), int(90 + 110 * base), int(130 + 95 * base))
    names = list(HAIR_PRIOR)
    hair = names[rng.choice(len(names), p=list(HAIR_PRIOR.values()))]
    bald = int(rng.random() < (0.3 if male else 0.03))
    return Identity(male, pale, skin, None if bald else hair, bald,
                    (float(rng.uniform(56, 68)), float(rng.uniform(76, 88))), float(rng.uniform(-3, 3)))


def sample_attributes(identity: Identity, rng: np.random.Generator) -> dict[str, int]:
    """Per-photo labels: identity traits plus per-photo rendered ones; the rest random."""
    a = {name: int(rng.random() < UNRENDERED_RATE) for name in ATTRIBUTES}
    a["Male"] = identity.male
    a["Pale_Skin"] = identity.pale
    a["Bald"] = identity.bald
    for name in ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"):
        a[name] = int(identity.hair == name)
    a["Bangs"] = int(not identity.bald and rng.random() < 0.3)
    a["Wearing_Hat"] = int(rng.random() < 0.2)
    a["Eyeglasses"] = int(rng.random() < 0.3)
    a["Smiling"] = int(rng.random() < 0.5)
    a["Mouth_Slightly_Open"] = int(rng.random() < (0.7 if a["Smiling"] else 0.25))
    beard = rng.choice(["none", "goatee", "full"], p=[0.4, 0.3, 0.3]) if identity.male else "none"
    a["Goatee"] = int(beard == "goatee")
    a["No_Beard"] = int(beard == "none")
    a["Mustache"] = int(identity.male and rng.random() < 0.4)
    a["Heavy_Makeup"] = int(not identity.male and rng.random() < 0.55)
    a["Wearing_Lipstick"] = int(not identity.male and rng.random() < (0.85 if a["Heavy_Makeup"] else 0.3))
    a["Blurry"] = int(rng.random() < 0.15)
    return a


def _draw_design(a: dict[str, int], ident: Identity, rng: np.random.Generator, q: float) -> np.ndarray:
    """Draw the face in the design frame, supersampled by ``q``."""
    size = int(round(DESIGN * q))
    S = 4  # cv2 shift bits: sub-pixel coordinates

    def P(xy):
        return tuple(int(round(v * q * (1 << S))) for v in xy)

    def L(v):
        return int(round(v * q * (1 << S)))

    def T(v):
        return max(1, int(round(v * q)))

    img = np.empty((size, size, 3), np.uint8)
    top, bottom = rng.integers(60, 230, 3), rng.integers(60, 230, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    img[:] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)
    cx, cy = FACE_CENTER
    ax, ay = ident.face_axes
    hair = HAIR_COLOURS[ident.hair]
    lines = dict(lineType=cv2.LINE_AA, shift=S)
    if not a["Bald"]:
        cv2.ellipse(img, P((cx, cy - 22)), (L(ax + 14), L(ay + 6)), 0, 0, 360, hair, -1, **lines)
    cv2.rectangle(img, P((cx - 24, cy + ay - 20)), P((cx + 24, DESIGN)), ident.skin, -1, **lines)  # neck
    cv2.ellipse(img, P((cx, cy)), (L(ax), L(ay)), 0, 0, 360, ident.skin, -1, **lines)
    if a["Bald"]:
        shine = tuple(min(255, c + 25) for c in ident.skin)
        cv2.ellipse(img, P((cx - 12, cy - ay + 24)), (L(16), L(9)), -20, 0, 360, shine, -1, **lines)
    if a["Bangs"]:
        pts = np.array([P((cx - ax + 2, cy - 48)), P((cx - ax + 10, cy - ay + 8)),
                        P((cx + ax - 10, cy - ay + 8)), P((cx + ax - 2, cy - 48)),
                        P((cx + 20, cy - 36)), P((cx - 20, cy - 38))], np.int32)
        cv2.fillPoly(img, [pts], hair, **lines)
    if a["Heavy_Makeup"]:
        shadow = (150, 60, 120) if rng.random() < 0.5 else (170, 110, 40)
        for ex, ey in EYES:
            cv2.ellipse(img, P((ex, ey - 7)), (L(14), L(7)), 0, 180, 360, shadow, -1, **lines)
        blush = (120, 120, 225)
        for dx in (-34, 34):
            cv2.circle(img, P((cx + dx, cy + 22)), L(11), blush, -1, **lines)
    for ex, ey in EYES:
        ey += ident.eye_shift
        cv2.ellipse(img, P((ex, ey)), (L(10), L(5)), 0, 0, 360, (245, 245, 245), -1, **lines)
        cv2.circle(img, P((ex, ey)), L(4), (50, 40, 30), -1, **lines)
        cv2.line(img, P((ex - 11, ey - 12)), P((ex + 11, ey - 13)), (30, 30, 40), T(3), **lines)  # brow
    cv2.line(img, P((NOSE[0], NOSE[1] - 24)), P((NOSE[0] - 5, NOSE[1])), (70, 80, 100), T(2), **lines)
    cv2.line(img, P((NOSE[0] - 5, NOSE[1])), P((NOSE[0] + 6, NOSE[1])), (70, 80, 100), T(2), **lines)
    if a["Eyeglasses"]:
        frame = (20, 20, 20)
        for ex, ey in EYES:
            cv2.circle(img, P((ex, ey + ident.eye_shift)), L(17), frame, T(3), **lines)
        cv2.line(img, P((EYES[0][0] + 17, EYES[0][1])), P((EYES[1][0] - 17, EYES[1][1])), frame, T(3), **lines)
        cv2.line(img, P((EYES[0][0] - 17, EYES[0][1])), P((cx - ax, EYES[0][1] - 4)), frame, T(3), **lines)
        cv2.line(img, P((EYES[1][0] + 17, EYES[1][1])), P((cx + ax, EYES[1][1] - 4)), frame, T(3), **lines)
    beard = (30, 30, 35) if ident.hair != "Gray_Hair" else (150, 150, 150)
    if not a["No_Beard"] and not a["Goatee"]:
        cv2.ellipse(img, P((cx, cy + 6)), (L(ax - 2), L(ay - 4)), 0, 20, 160, beard, T(16), **lines)
    if a["Goatee"]:
        cv2.ellipse(img, P((cx, cy + ay - 18)), (L(15), L(14)), 0, 0, 360, beard, -1, **lines)
    if a["Mustache"]:
        pts = np.array([P((MOUTH[0][0] - 4, MOUTH[0][1] - 4)), P((cx, MOUTH[0][1] - 14)),
                        P((MOUTH[1][0] + 4, MOUTH[1][1] - 4)), P((cx, MOUTH[0][1] - 8))], np.int32)
        cv2.fillPoly(img, [pts], beard, **lines)
    lip = (50, 30, 200) if a["Wearing_Lipstick"] else (90, 100, 160)
    (lx, ly), (rx, ry) = MOUTH
    if a["Smiling"]:
        # A wide upturned mouth showing teeth: big enough to survive downscaling to 48 px.
        cv2.ellipse(img, P((cx, ly - 4)), (L((rx - lx) / 2 + 2), L(13)), 0, 10, 170, (235, 235, 240), -1, **lines)
    if a["Mouth_Slightly_Open"]:
        cv2.ellipse(img, P((cx, ly + (5 if a["Smiling"] else 1))), (L((rx - lx) / 2 - 4), L(6)),
                    0, 0, 360, (40, 20, 60), -1, **lines)
    if a["Smiling"]:
        cv2.ellipse(img, P((cx, ly - 6)), (L((rx - lx) / 2 + 4), L(15)), 0, 10, 170, lip, T(4), **lines)
    else:
        cv2.line(img, P((lx + 2, ly)), P((rx - 2, ry)), lip, T(4), **lines)
    if a["Wearing_Hat"]:
        hat = tuple(int(v) for v in rng.integers(0, 200, 3))
        cv2.rectangle(img, P((cx - ax - 26, cy - ay + 10)), P((cx + ax + 26, cy - ay + 22)), hat, -1, **lines)
        cv2.rectangle(img, P((cx - ax + 2, cy - ay - 44)), P((cx + ax - 2, cy - ay + 12)), hat, -1, **lines)
    return img


def render_face(a: dict[str, int], identity: Identity, rng: np.random.Generator,
                out_size: tuple[int, int] = (178, 218), eye_distance: float | None = None,
                eye_center: tuple[float, float] | None = None, jitter: float = 1.0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one face for labels ``a``.

    Args:
        out_size: (width, height) in pixels.
        eye_distance / eye_center: where the eyes land in the output, in pixels (defaults mimic
            CelebA's aligned crops: eyes about 22% of the width apart, 51% down).
        jitter: scale of the random rotation (deg 10), scale (10%) and shift (5%) applied.

    Returns:
        (BGR uint8 image, landmarks (5, 2) float32 in CelebA order, bbox (x, y, w, h) float32).
    """
    w, h = out_size
    eye_distance = eye_distance or 0.22 * w
    ex, ey = eye_center or (0.5 * w, 0.51 * h)
    scale = eye_distance / (EYES[1][0] - EYES[0][0]) * (1 + jitter * rng.uniform(-0.1, 0.1))
    angle = jitter * rng.uniform(-10, 10)
    shift = jitter * rng.uniform(-0.05, 0.05, 2) * (w, h)
    q = min(4.0, max(1.0, scale * 1.5))  # draw at (at least) output resolution
    design = _draw_design(a, identity, rng, q)
    mid = EYES.mean(axis=0)
    M = cv2.getRotationMatrix2D((float(mid[0]), float(mid[1])), angle, scale)
    M[:, 2] += (ex, ey) - mid + shift
    Mq = M.copy()
    Mq[:, :2] /= q  # design pixels at resolution q
    img = cv2.warpAffine(design, Mq, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if a["Blurry"]:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=max(1.5, 0.012 * w))
    noise = rng.normal(0, 5, img.shape)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    points = np.vstack([EYES, NOSE[None], MOUTH])
    landmarks = (points @ M[:, :2].T + M[:, 2]).astype(np.float32)
    t = np.linspace(0, 2 * np.pi, 64)
    outline = np.stack([FACE_CENTER[0] + identity.face_axes[0] * np.cos(t),
                        FACE_CENTER[1] + identity.face_axes[1] * np.sin(t)], 1) @ M[:, :2].T + M[:, 2]
    x0, y0 = np.clip(outline.min(0), 0, (w - 1, h - 1))
    x1, y1 = np.clip(outline.max(0), 0, (w - 1, h - 1))
    bbox = np.array([x0, y0, x1 - x0, y1 - y0], np.float32)
    return img, landmarks, bbox


def _write_list(path: Path, lines: list[str]) -> None:
    # The real list files are CRLF; writing the same keeps the reader honest.
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())


def write_synthetic_celeba(out: str | Path, n: int = 1000, seed: int = 0,
                           size: tuple[int, int] = (178, 218), photos_per_identity: int = 8,
                           partition_fractions: tuple[float, float] = (0.8, 0.1)) -> Path:
    """Write ``n`` generated faces in the official CelebA layout under ``out``; return ``out``.

    Identities are split across partitions (like CelebA, no person in two partitions).
    """
    out = Path(out)
    img_dir = out / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_ids = max(1, -(-n // photos_per_identity))
    identities = [sample_identity(rng) for _ in range(n_ids)]
    # Exact partition sizes by identity, at least one identity each once there are three.
    n_val = max(int(n_ids >= 3), int(round(partition_fractions[1] * n_ids)))
    n_train = max(1, int(round(partition_fractions[0] * n_ids)) - (n_val if n_ids < 10 else 0))
    id_partition = rng.permutation(np.repeat([0, 1, 2], [n_train, n_val, max(0, n_ids - n_train - n_val)]))
    attr_rows, part_rows, id_rows, bbox_rows, lm_rows = [], [], [], [], []
    for i in range(n):
        k = i % n_ids
        name = f"{i + 1:06d}.jpg"
        a = sample_attributes(identities[k], rng)
        img, lm, bbox = render_face(a, identities[k], rng, size)
        cv2.imwrite(str(img_dir / name), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
        attr_rows.append(name + " " + " ".join(f"{1 if a[x] else -1:2d}" for x in ATTRIBUTES))
        part_rows.append(f"{name} {int(id_partition[k])}")
        id_rows.append(f"{name} {k + 1}")
        bbox_rows.append(f"{name} " + " ".join(f"{int(round(v))}" for v in bbox))
        lm_rows.append(f"{name} " + " ".join(f"{int(round(v))}" for v in lm.reshape(-1)))
    _write_list(out / "list_attr_celeba.txt", [str(n), " ".join(ATTRIBUTES) + " "] + attr_rows)
    _write_list(out / "list_eval_partition.txt", part_rows)
    _write_list(out / "identity_CelebA.txt", id_rows)
    _write_list(out / "list_bbox_celeba.txt", [str(n), "image_id x_1 y_1 width height"] + bbox_rows)
    _write_list(out / "list_landmarks_align_celeba.txt",
                [str(n), "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                 "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"] + lm_rows)
    return out


def write_unlabelled_faces(out: str | Path, n: int = 20, seed: int = 0,
                           sizes: tuple[int, ...] = (1024, 256), formats: tuple[str, ...] = ("png", "jpg"),
                           truth_csv: str | Path | None = None) -> list[Path]:
    """Write ``n`` square generated faces imitating StyleGAN/FFHQ output (no labels).

    Sizes and formats alternate. The hidden labels go to ``truth_csv`` when given (outside the
    folder, so the folder itself stays unlabelled).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, truth = [], []
    for i in range(n):
        s = sizes[i % len(sizes)]
        fmt = formats[(i // len(sizes)) % len(formats)]
        ident = sample_identity(rng)
        a = sample_attributes(ident, rng)
        # FFHQ alignment: eyes ~25% of the width apart, ~47% down: the face fills the frame.
        img, _, _ = render_face(a, ident, rng, (s, s), eye_distance=0.25 * s,
                                eye_center=(0.5 * s, 0.47 * s), jitter=0.3)
        path = out / f"seed{seed + i:06d}.{fmt}"
        cv2.imwrite(str(path), img)
        paths.append(path)
        truth.append((path.name, a))
    if truth_csv is not None:
        import pandas as pd
        pd.DataFrame([{"file": f, **a} for f, a in truth]).to_csv(truth_csv, index=False)
    return paths


__all__ = ["RENDERED_ATTRIBUTES", "render_face", "sample_attributes", "sample_identity",
           "write_synthetic_celeba", "write_unlabelled_faces"]
