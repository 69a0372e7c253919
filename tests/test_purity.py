"""Ray stays at the edges: the pure modules import without importing Ray."""
from __future__ import annotations

import subprocess
import sys

PURE_MODULES = [
    "facray.attributes", "facray.config", "facray.data.celeba", "facray.data.mtfl",
    "facray.data.synth", "facray.data.imageio", "facray.data.ops", "facray.data.check", "facray.cli",
    "facray.data.pipeline", "facray.data.prepared", "facray.models.abm", "facray.training.binary",
    "facray.training.ray_binary", "facray.predictor", "facray.labelling", "facray.labelling_ray",
]


def test_pure_modules_do_not_import_ray():
    code = "import sys\n" + "".join(f"import {m}\n" for m in PURE_MODULES) + "print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
