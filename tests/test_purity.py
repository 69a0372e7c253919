"""Ray stays at the edges: the pure modules import without importing Ray."""
from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "facray.attributes", "facray.config", "facray.data.celeba", "facray.data.mtfl",
    "facray.data.synth", "facray.data.imageio", "facray.data.ops", "facray.data.check", "facray.cli",
    "facray.data.pipeline", "facray.data.prepared", "facray.models.abm", "facray.training.binary",
    "facray.training.ray_binary", "facray.predictor", "facray.labelling", "facray.labelling_ray",
    "facray.storage", "facray.models.inputs", "facray.models.multitask", "facray.models.registry",
    "facray.training.multitask", "facray.training.metrics", "facray.training.splits", "facray.training.jobs",
    "facray.training.run_record", "facray.training.ray_multitask", "facray.reports", "facray.tracking",
]


def test_pure_modules_do_not_import_ray():
    code = "import sys\n" + "".join(f"import {m}\n" for m in PURE_MODULES) + "print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inference_does_not_import_training_code():
    """What labelling loads (predictors, labelling, the MLflow pyfunc) needs no trainer."""
    code = ("import sys; import facray.predictor, facray.labelling, facray.labelling_ray, facray.predictor_mlflow; "
            "print(sorted(m for m in sys.modules if m.startswith('facray.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
