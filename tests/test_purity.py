"""Structure rules anyone can check: Ray stays at the edges (the pure modules import without
Ray), inference imports no training code, a run folder's layout lives in one module."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PURE_MODULES = [
    "facray.attributes", "facray.config", "facray.data.celeba", "facray.data.mtfl",
    "facray.data.synth", "facray.data.imageio", "facray.data.ops", "facray.data.check", "facray.cli",
    "facray.data.pipeline", "facray.data.prepared", "facray.models.abm", "facray.training.binary",
    "facray.training.ray_binary", "facray.predictors.networks", "facray.labelling", "facray.labelling_ray",
    "facray.storage", "facray.models.inputs", "facray.models.multitask", "facray.models.registry",
    "facray.training.multitask", "facray.training.metrics", "facray.training.splits", "facray.training.jobs",
    "facray.training.run_record", "facray.training.ray_multitask", "facray.reports", "facray.tracking",
    "facray.runs", "facray.training.configs", "facray.training.binary_worker",
    "facray.training.multitask_worker", "facray.training.stack_optim", "facray.training.combine", "facray.predictors.locate",
]


def test_pure_modules_do_not_import_ray():
    code = "import sys\n" + "".join(f"import {m}\n" for m in PURE_MODULES) + "print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_inference_does_not_import_training_code():
    """What labelling loads (predictors, labelling, the MLflow pyfunc) needs no trainer."""
    code = ("import sys; import facray.predictors.networks, facray.labelling, facray.labelling_ray, facray.predictors.pyfunc; "
            "print(sorted(m for m in sys.modules if m.startswith('facray.training')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_folder_paths_are_joined_in_one_module_only():
    """Nothing but facray/runs.py builds a path into a run folder (``x / "jobs"``)."""
    names = ("run.json", "config.yaml", "parent_run_id", "mlflow_logged.json", "mlflow.db", "ray_results", "jobs",
             "jobs_summary.csv", "combined", "model", "metrics.json", "model.pt", "report", ".injected_failure")
    join = re.compile(r"/\s*[\"'](" + "|".join(re.escape(n) for n in names) + r")[\"']")
    package = Path(__file__).resolve().parents[1] / "facray"
    offenders = [f"{f.relative_to(package)}:{i}: {line.strip()}"
                 for f in package.rglob("*.py") if f.name != "runs.py"
                 for i, line in enumerate(f.read_text().splitlines(), 1) if join.search(line)]
    assert offenders == []
