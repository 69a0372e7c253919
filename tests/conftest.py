"""Shared fixtures: a tiny generated CelebA and one session-scoped local Ray."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import facray.tracking  # noqa: F401 - reads the user's MLFLOW_TRACKING_URI once, before any test sets it
from facray.data import synth
from facray.data.synth import write_synthetic_celeba

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _no_tracking_uri_leaks():
    """``mlflow.set_tracking_uri`` (tests use it to inspect a store) also sets
    MLFLOW_TRACKING_URI in this process; restore it so no later test sends its runs there."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """120 generated faces in the official CelebA layout (read-only: copy before editing)."""
    return write_synthetic_celeba(tmp_path_factory.mktemp("synth") / "celeba", n=120, seed=1)


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of ``synth_root`` a test may break."""
    dst = tmp_path / "celeba"
    shutil.copytree(synth_root, dst)
    return dst


PARTIAL_ATTRIBUTES = ("Eyeglasses", "Male", "Smiling")  # what MTFL labels


@pytest.fixture
def synth_partial(synth_copy) -> Path:
    """``synth_copy`` whose list_attr_celeba.txt names only :data:`PARTIAL_ATTRIBUTES` (a
    dataset labelled for a few attributes, or facray's labels of a partial model)."""
    p = synth_copy / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    header = lines[1].split()
    keep = [header.index(a) for a in PARTIAL_ATTRIBUTES]
    body = [" ".join([parts[0]] + [parts[1 + j] for j in keep]) for parts in map(str.split, lines[2:])]
    p.write_text("\n".join([lines[0], " ".join(PARTIAL_ATTRIBUTES), *body]) + "\n")
    return synth_copy


@pytest.fixture
def synth_women_only(synth_copy) -> Path:
    """``synth_copy`` with Male -1 in every row (the issue's women-only subset)."""
    p = synth_copy / "list_attr_celeba.txt"
    lines = p.read_text().splitlines()
    male = lines[1].split().index("Male")
    rows = []
    for line in lines[2:]:
        parts = line.split()
        parts[1 + male] = "-1"
        rows.append(" ".join(parts))
    p.write_text("\n".join(lines[:2] + rows) + "\n")
    return synth_copy


@pytest.fixture(scope="session")
def learnable():
    """``learnable(prepared, **split)``: the attributes a multi-task run on ``prepared`` trains,
    in the official order: those whose training rows hold both classes (tiny generated data has
    a one-sided attribute or two, which the trainers leave out)."""
    def attributes(prepared, **split) -> list[str]:
        from facray.attributes import ATTRIBUTES
        from facray.training.metrics import one_sided_attributes
        from facray.training.splits import SplitSpec, train_labels
        labels = train_labels(SplitSpec(str(prepared), **split))
        one_sided = one_sided_attributes(labels, ATTRIBUTES)
        return [a for j, a in enumerate(ATTRIBUTES) if (labels[:, j] >= 0).any() and a not in one_sided]
    return attributes


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session: 2 CPUs, no dashboard (tests ask for fractions),
    and one declared GPU that does not exist, so the GPU-mode labelling pipeline runs here with
    its predict actor on the CPU (nothing else asks for GPUs). The job's runtime env is facray's
    own (:func:`facray.runners.runtime.job_runtime_env`), so the workers run as in a facray command."""
    ray = pytest.importorskip("ray")
    from facray.runners.runtime import job_runtime_env
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, runtime_env=job_runtime_env())
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def prepared_small(ray_session, tmp_path_factory) -> Path:
    """80 generated faces prepared at 32 px (no augmentation): input to the training tests."""
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    root = write_synthetic_celeba(tmp_path_factory.mktemp("prep") / "celeba", n=80, seed=2)
    out = tmp_path_factory.mktemp("prepared") / "p"
    prepare(PrepareConfig(root=str(root), out=str(out), size=32, augment=1, num_actors=2, batch_size=16))
    return out


def read_png(path: Path):
    """A report's figure, decoded: a real image with something drawn on it (not one flat colour)."""
    import cv2
    import numpy as np
    image = cv2.imread(str(path))
    assert image is not None, f"{path}: not a readable image"
    assert image.std() > 0, f"{path}: a blank image"
    return np.asarray(image)


def assert_cam_grid(path: Path, tile: int = 128) -> None:
    """A class activation map grid (:func:`facray.models.cam.cam_grid`): a title row of 18 px, then
    one row of ``tile`` px per test crop, and one column per panel (the crop, then each attribute)."""
    height, width, _ = read_png(path).shape
    rows, panels = (height - 18) / tile, width / tile
    assert rows >= 1 and rows == int(rows) and panels >= 2 and panels == int(panels), (height, width)


def forbid_ray_start(monkeypatch) -> None:
    """Fail the test if any facray runner starts Ray: ``init_ray`` replaced in every runner module
    that calls it (each holds its own binding of the name)."""
    import importlib
    for name in ("runtime", "prepare", "label", "train", "sweep", "nodes"):
        module = importlib.import_module(f"facray.runners.{name}")
        monkeypatch.setattr(module, "init_ray", lambda *a, **k: pytest.fail("Ray started"))


def mixed_faces(n: int = 12, size: int = 256, seed: int = 0):
    """``n`` square generated faces, alternately unaligned (small, off-centre: the first one) and
    laid out as StyleGAN/FFHQ does; returns (BGR images, aligned flags)."""
    rng = np.random.default_rng(seed)
    images, aligned = [], []
    for i in range(n):
        ident = synth.sample_identity(rng)
        a = synth.sample_attributes(ident, rng)
        on_template = i % 2 == 1
        eyes = dict(eye_distance=0.246 * size, eye_center=(0.5 * size, 0.463 * size)) if on_template else \
            dict(eye_distance=0.12 * size, eye_center=(0.32 * size, 0.35 * size))
        images.append(synth.render_face(a, ident, rng, (size, size), jitter=0.3, **eyes)[0])
        aligned.append(on_template)
    return images, np.array(aligned)
