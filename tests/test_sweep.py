"""facray sweep on Ray Tune: spaces checked before Ray starts; a 4-trial sweep killed part-way
resumes without re-running finished trials, then writes the table and plot, nests one MLflow child
run per trial under the sweep's run and registers the best trial's model."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from facray.training.sweep_space import load_space

pytestmark = pytest.mark.timeout(900)

JOB = Path(__file__).resolve().parents[1] / "jobs" / "sweep.py"  # what `ray job submit` runs


def _space(tmp_path, body: str) -> Path:
    path = tmp_path / "space.py"
    path.write_text("from ray import tune\nfrom facray.training.configs import MultitaskConfig\nCONFIG = MultitaskConfig\n"
                    "METRIC = 'val_accuracy'\nMODE = 'max'\n" + body)
    return path


@pytest.mark.parametrize("body, message", [
    ("SPACE = {'learning_rate': tune.grid_search([1e-3])}", "'learning_rate' is not a MultitaskConfig field"),
    ("SPACE = {'out': tune.grid_search(['a', 'b'])}", "'out' is set by the sweep itself"),
    ("SPACE = {'epochs': tune.grid_search([2, 2.5])}", "epochs: expected int"),
    ("SPACE = {'lr': tune.grid_search([1e-3])}\nMETRIC = 'test_accuracy'", "METRIC 'test_accuracy' is not reported"),
    ("SPACE = {'lr': tune.grid_search(['fast'])}", "lr: expected float"),
    ("SPACE = {'num_workers': tune.grid_search([1, 2])}", "'num_workers' is set by the sweep itself"),
    ("SPACE = {'lr': tune.grid_search([1e-3])}\nMETRIC = 'mean_val_accuracy'", "METRIC 'mean_val_accuracy' is not reported"),
])
def test_a_bad_space_is_refused_before_ray_starts(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        load_space(str(_space(tmp_path, body)))
    code = ("import sys, ray; from facray.cli import main; "
            f"rc = main(['sweep', '--space', {str(_space(tmp_path, body))!r}, '--out', {str(tmp_path / 's')!r}]); "
            "print('rc', rc, 'ray started', ray.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "rc 2 ray started False" in out.stdout and message.split()[0] in out.stderr


@pytest.mark.slow  # ~170 s: a 4-trial Ray Tune sweep, interrupted and resumed in two processes
def test_an_interrupted_sweep_resumes_only_its_unfinished_trials_then_registers_the_best(tmp_path):
    """The issue's case: Ctrl-C (SIGINT to the command's process group, as a terminal sends it)
    after the first trial finished: one line and exit 130 (the pending trial with no config used
    to crash the results table); the re-run resumes."""
    out = tmp_path / "sweep"
    args = [sys.executable, str(JOB), "--smoke-test", "--out", str(out)]
    err = (tmp_path / "first.err").open("w")
    # SIGINT back to its default in the child: pytest's runner may have it ignored, and a child
    # inherits an ignored signal.
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 480
    while time.time() < deadline and not list(out.glob("trials/*/metrics.json")):
        assert first.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(2)
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("trials/*/metrics.json")}
    assert finished_before, "no trial finished within the deadline"
    time.sleep(2)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C, mid-sweep
    assert first.wait(timeout=120) == 130
    err.close()
    lines = [line for line in (tmp_path / "first.err").read_text().splitlines() if line.startswith("facray:")]
    assert lines == ["facray: interrupted; finished work is kept: re-run the same command to resume"]
    assert "TypeError" not in (tmp_path / "first.err").read_text()
    assert not out.joinpath("sweep_results.csv").exists()

    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the sweep" in again.stdout
    trials = sorted(p.name for p in out.glob("trials/*"))
    assert len(trials) == 4  # the same four trials, none started twice under a new name
    for name, mtime in finished_before.items():  # finished trials were not trained again
        assert (out / "trials" / name / "metrics.json").stat().st_mtime_ns == mtime

    table = pd.read_csv(out / "sweep_results.csv")
    assert len(table) == 4 and (table.status == "finished").all()
    assert sorted(zip(table.lr, table.epochs)) == [(3e-3, 1), (3e-3, 2), (1e-2, 1), (1e-2, 2)]
    for _, row in table.iterrows():  # the table's metric is the trial's best epoch
        record = json.loads((Path(row.run_folder) / "metrics.json").read_text())
        assert row.val_accuracy == pytest.approx(record["history"][record["best_epoch"] - 1]["val_accuracy"])
        assert row.epochs_run == len(record["history"]) == row.epochs
    assert out.joinpath("sweep_metric.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "sweep_summary.json").read_text())
    best = table.iloc[table.val_accuracy.idxmax()]
    assert summary["val_accuracy"] == pytest.approx(best.val_accuracy) and summary["run_folder"] == best.run_folder

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parent = (out / "mlflow_run_id").read_text()
    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    assert len(children) == 4  # one per trial, also across the interruption
    assert all(len(client.get_metric_history(c.info.run_id, "val_accuracy")) >= 1 for c in children)
    assert {a.path for a in client.list_artifacts(parent)} >= {"sweep_results.csv", "sweep_metric.png"}
    version = client.get_model_version_by_alias("facray-sweep-smoke-multitask", "newest")
    assert version.run_id == parent
    from facray.predictors.networks import read_predictor
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")  # models:/ resolves in the sweep's store
    registered, _ = read_predictor(summary["registered"])
    trained, _ = read_predictor(Path(best.run_folder) / "model")
    assert registered.weights_sha256 == trained.weights_sha256  # the best trial's model


def test_the_plot_covers_one_two_or_more_swept_keys_and_the_grid_keeps_each_cells_best(tmp_path):
    from facray.training.sweep_report import metric_grid, plot_metric
    space = load_space("tune_spaces/abm_lr_epochs.py")
    table = pd.DataFrame({"lr": [1e-3, 1e-3, 1e-4, 1e-4, 1e-3], "epochs": [25, 63, 25, 63, 25],
                          "mean_val_accuracy": [0.80, 0.82, 0.78, 0.79, 0.81],
                          "status": ["finished", "finished", "stopped early", "finished", "finished"]})
    grid = metric_grid(table, "lr", "epochs", "mean_val_accuracy", "max")
    assert grid.loc[1e-3, 25] == 0.81 and grid.loc[1e-4, 63] == 0.79  # repeated samples: the best
    assert space.grid_values("dropout") is None and space.grid_values("lr") == [1e-3, 1e-4, 1e-5]
    for columns in (["lr", "epochs"], ["lr"]):
        path = plot_metric(table[[*columns, "mean_val_accuracy", "status"]].assign(
            **{k: 1 for k in ("lr", "epochs") if k not in columns}), space, tmp_path / f"{len(columns)}.png")
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_asha_comes_from_the_flag_or_the_space():
    from ray.tune.schedulers import ASHAScheduler

    from facray.training.configs import SweepConfig
    from facray.runners.sweep import _scheduler
    space = load_space("tune_spaces/multitask_lr_wd.py")
    own = _scheduler(space, SweepConfig(scheduler="space"), max_t=13)
    assert isinstance(own, ASHAScheduler) and own._max_t == 13 and own._metric == "val_accuracy"
    assert _scheduler(space, SweepConfig(scheduler="fifo"), 13) is None
    plain = load_space("tune_spaces/abm_lr_epochs.py")
    assert _scheduler(plain, SweepConfig(scheduler="space"), 13) is None
    flag = _scheduler(plain, SweepConfig(scheduler="asha", grace_period=4), 26)
    assert isinstance(flag, ASHAScheduler) and flag._max_t == 26 and flag._mode == "max"
