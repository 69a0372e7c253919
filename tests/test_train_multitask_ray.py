"""facray train on Ray Train: DDP on CPU, checkpoint and resume, live MLflow metrics, thresholds
through the saved model, evaluate and label through models:/."""
from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from facray.cli import main
from facray.predictors.networks import load_predictor
from facray.training.configs import MultitaskConfig
from facray.runners.train import train

from conftest import forbid_ray_start, assert_cam_grid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]


def _cfg(prepared, out, **kw):
    base = dict(prepared=str(prepared), out=str(out), model="abm-trunk-tiny", image_size=32, epochs=3,
                batch_size=16, cpus_per_worker=0.5, num_workers=2, patience=5, lr=3e-3)
    return MultitaskConfig(**{**base, **kw})


def test_ddp_two_workers_interrupted_resumes_then_evaluates_and_labels(ray_session, prepared_small, tmp_path,
                                                                       learnable):
    out = tmp_path / "mt"
    record = train(_cfg(prepared_small, out, fail_at_epoch=2, max_failures=1))
    assert (out / ".injected_failure").read_text().startswith("failed at epoch 2")
    assert record["resumed_from_epoch"] == 1 and [h["epoch"] for h in record["history"]] == [1, 2, 3]
    assert [r["attribute"] for r in record["attributes"]] == learnable(prepared_small)
    assert 0 < record["mean_test_accuracy"] <= 1

    # Live metrics: the Train controller logged every epoch into the run the driver opened.
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text()
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_loss")
    assert sorted(m.step for m in history)[-3:] == [1, 2, 3]
    assert mlflow.get_run(run_id).info.status == "FINISHED"

    # Thresholds chosen on validation round-trip through the saved model.
    predictor = load_predictor(out)  # a run folder resolves to its model
    stored = {r["attribute"]: r["threshold"] for r in record["attributes"]}
    assert predictor.attributes == learnable(prepared_small)  # (thresholds are in the official order)
    assert predictor.thresholds[predictor.columns].tolist() == [stored[a] for a in predictor.attributes]
    assert record["registered"] == "models:/facray-abm-trunk-tiny@newest"

    assert main(["evaluate", "--run", str(out)]) == 0
    report = pd.read_csv(out / "report" / "report.csv")
    assert {"test_accuracy", "test_accuracy_at_0.5", "majority_accuracy", "one_class_only"} <= set(report.columns)
    assert "predict one class only" in (out / "report" / "report.md").read_text()
    assert_cam_grid(out / "report" / "cam_grid.png")

    from facray.data.synth import write_unlabelled_faces
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    write_unlabelled_faces(tmp_path / "faces", n=3, seed=4, sizes=(96,))
    store_files = {p for p in out.rglob("*") if p.is_file() and "mlflow.db" not in p.name}
    labelled = label_images(LabelConfig(images=str(tmp_path / "faces"), model=record["registered"],
                                        out=str(tmp_path / "l.csv"), tracking_uri=mlflow.get_tracking_uri(),
                                        num_actors=1, preprocess_actors=1, batch_size=2))
    rows = pd.read_csv(tmp_path / "l.csv", keep_default_na=False, na_values=[""])
    assert labelled.inputs == 3 and rows.Male_prob.between(0, 1).all()
    probs = rows[[f"{a}_prob" for a in predictor.attributes]].to_numpy()
    assert (rows[predictor.attributes].to_numpy() == (probs >= predictor.thresholds[predictor.columns])).all()
    # Reading a registered model writes nothing into the store (MLflow's registered_model_meta
    # went into the registry's own folder when it was fetched in place).
    assert {p for p in out.rglob("*") if p.is_file() and "mlflow.db" not in p.name} == store_files

    # A re-run with the same settings finds the trained model; other settings are refused.
    again = train(_cfg(prepared_small, out, fail_at_epoch=2, max_failures=1))
    assert again["settings_hash"] == record["settings_hash"]
    with pytest.raises(ValueError, match="lr: 0.003 -> 0.01"):
        train(_cfg(prepared_small, out, lr=1e-2))


@pytest.mark.slow  # ~50 s: two training runs
def test_one_worker_and_two_workers_learn_alike(ray_session, prepared_small, tmp_path):
    """DDP splits each step's batch between workers (batch_size is per worker), so two workers at
    half the batch take the same steps on the same global batch as one worker: the curves should
    match within noise (batch norm sees half-batches; the shards shuffle differently)."""
    records = {n: train(_cfg(prepared_small, tmp_path / f"w{n}", num_workers=n, epochs=4, seed=1,
                                       batch_size=16 // n)) for n in (1, 2)}
    val_losses = {n: [h["val_loss"] for h in r["history"]] for n, r in records.items()}
    for n in (1, 2):
        assert val_losses[n][-1] < val_losses[n][0], val_losses  # both learn
    assert abs(val_losses[1][-1] - val_losses[2][-1]) < 0.02, val_losses
    accs = {n: r["mean_test_accuracy"] for n, r in records.items()}
    assert abs(accs[1] - accs[2]) < 0.05, accs



def test_unknown_model_fails_before_ray_with_the_known_names(tmp_path, capsys, monkeypatch):
    forbid_ray_start(monkeypatch)
    assert main(["train", "--model", "resnet81", "--prepared", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet81'" in err and "resnet18" in err and "abm-trunk" in err


def test_list_models(capsys):
    assert main(["train", "--list-models"]) == 0
    names = capsys.readouterr().out.split()
    assert {"abm-trunk", "resnet18", "resnet50", "vgg19-transfer", "inception-v3"} <= set(names)


@pytest.mark.slow  # ~65 s (binary stream mode runs in make test)
def test_stream_mode_feeds_two_ddp_workers_from_ray_data(ray_session, prepared_small, tmp_path, learnable):
    record = train(_cfg(prepared_small, tmp_path / "stream", data="stream", epochs=2, class_balance=True))
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert [r["attribute"] for r in record["attributes"]] == learnable(prepared_small)
    assert len(record["attributes"]) < 40, "the tiny data has an attribute with one class in train: left out"
    assert all(0 <= r["test_accuracy"] <= 1 for r in record["attributes"])
    with pytest.raises(ValueError, match="holdout needs --data memory"):
        train(_cfg(prepared_small, tmp_path / "h", data="stream", val_split="holdout"))


def test_a_diverging_run_fails_once_and_registers_nothing(ray_session, prepared_small, tmp_path, capsys):
    """lr 1e20: the first non-finite epoch ends the run in one line, without Ray Train's retries,
    with no model written and no version registered (the issue's abm-trunk-tiny --lr 1e5 case)."""
    out = tmp_path / "diverged"
    code = main(["train", "--prepared", str(prepared_small), "--out", str(out), "--model", "abm-trunk-tiny",
                 "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--cpus-per-worker", "0.5",
                 "--lr", "1e20", "--max-failures", "3"])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("facray:")]
    assert code == 2 and len(ours) == 1 and "training diverged at epoch" in ours[0] and "1e+20" in ours[0]
    assert not (out / "model").exists() and not (out / "metrics.json").exists()
    client = mlflow.MlflowClient(f"sqlite:///{out}/mlflow.db")
    assert not client.search_registered_models(), "nothing registered"
    assert "Traceback" not in err


def test_a_setup_error_in_the_workers_fails_at_once_not_retried(ray_session, prepared_small, tmp_path, capsys):
    """A --weights file that fits no backbone fails in the Train workers' setup: an error a retry
    would repeat, so it ends the run at once (no Ray Train retry, no traceback) in one line that
    names the file; the same for both workers, neither waits for the other."""
    import torch
    weights = tmp_path / "unrelated.pt"
    torch.save({"foo": torch.zeros(3)}, weights)
    out = tmp_path / "setup"
    code = main(["train", "--prepared", str(prepared_small), "--out", str(out), "--model", "abm-trunk-tiny",
                 "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--cpus-per-worker", "0.5",
                 "--num-workers", "2", "--weights", str(weights), "--max-failures", "3"])
    captured = capsys.readouterr()
    ours = [line for line in captured.err.splitlines() if line.startswith("facray:")]
    assert code == 2 and len(ours) == 1 and f"ValueError: {weights}: only 0 of" in ours[0]
    assert "Traceback" not in captured.err and "RETRY" not in captured.err + captured.out
    assert not (out / "model").exists()
    code = main(["train", "--prepared", str(prepared_small), "--out", str(tmp_path / "missing"),
                 "--model", "abm-trunk-tiny", "--weights", str(tmp_path / "nope.pt")])
    assert code == 2 and f"{tmp_path / 'nope.pt'}: --weights file not found" in capsys.readouterr().err


@pytest.mark.slow  # ~1 min: a teacher run, an ensemble, a student run on Ray Train, a labelling run
def test_ensemble_then_distill_then_label_with_abstention(ray_session, prepared_small, tmp_path):
    import numpy as np

    from facray.data.pipeline import PrepareConfig
    from facray.data.synth import write_unlabelled_faces
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    from facray.runners.prepare import prepare
    from facray.training.configs import DistillConfig

    teacher = train(_cfg(prepared_small, tmp_path / "t", num_workers=1, epochs=2))
    assert "test_ece" in teacher["attributes"][0] and teacher["mean_test_ece"] >= 0
    assert main(["ensemble", str(tmp_path / "t"), str(tmp_path / "t"), "--out", str(tmp_path / "e"),
                 "--no-register", "--test-split", "test"]) == 0
    write_unlabelled_faces(tmp_path / "gen", n=6, seed=1, sizes=(96,))
    prepare(PrepareConfig(root=str(tmp_path / "gen"), dataset="folder", out=str(tmp_path / "gen_prepared"), size=32,
                          augment=1, num_actors=1, batch_size=8))
    base = {k: v for k, v in vars(_cfg(prepared_small, tmp_path / "s", num_workers=1, epochs=2)).items()}
    student = train(DistillConfig(**{**base, "teacher": str(tmp_path / "e"), "unlabelled": str(tmp_path / "gen_prepared")}))
    assert student["registered"] == "models:/facray-distill-abm-trunk-tiny@newest" and student["teacher"]
    assert load_predictor(tmp_path / "s").manifest.calibration["method"] == "temperature"

    write_unlabelled_faces(tmp_path / "faces", n=4, seed=4, sizes=(96,))
    summary = label_images(LabelConfig(images=str(tmp_path / "faces"), model=str(tmp_path / "s"),
                                       out=str(tmp_path / "l.csv"), min_confidence=0.6, num_actors=1,
                                       preprocess_actors=1, batch_size=2))
    rows = pd.read_csv(tmp_path / "l.csv", keep_default_na=False, na_values=[""])
    predictor = load_predictor(tmp_path / "s")
    probs = rows[[f"{a}_prob" for a in predictor.attributes]].to_numpy()
    thresholds = predictor.thresholds[predictor.columns]
    sure = np.where(probs >= thresholds, probs, 1 - probs) >= 0.6
    assert (rows[predictor.attributes].notna().to_numpy() == sure).all()
    assert summary.decided == int(sure.sum()) and "decisions kept at confidence >= 0.6" in summary.format()
