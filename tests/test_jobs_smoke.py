"""Every ``jobs/*.py`` entry point with ``--smoke-test``, as ``ray job submit -- python jobs/X.py``
would run it: a fresh process in a fresh folder, its own local Ray, generated inputs, exit 0 and
the command's summary. Slow (a Ray start each): ``make test-slow`` and CI run them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py"))
# What each job prints when it worked (its summary's first words).
EXPECTED = {"data_check": "images (labelled): 20", "data_synth": "wrote 8 generated CelebA faces",
            "prepare": "prepared 40 images", "train_binary": "Eyeglasses__real", "train": "mean test accuracy",
            "sweep": "best trial", "combine": "combined predictor:", "evaluate": "report:",
            "label": "labelled 8 new image(s)", "ensemble": "ensemble predictor:", "distill": "mean test accuracy",
            "check_nodes": "node(s) checked: all ok"}

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]


def test_every_job_has_a_smoke_test_here():
    assert set(JOBS) == set(EXPECTED)


@pytest.mark.parametrize("job", JOBS)
def test_job_smoke_test(job, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    done = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--smoke-test"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stderr[-3000:]
    assert EXPECTED[job] in done.stdout, done.stdout[-3000:]
