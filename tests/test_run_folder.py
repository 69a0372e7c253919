"""The run folder (facray.runs): identity, the prepared data it trained on, jobs, predictor.
Pure Python; no Ray, no training (the folders are written by hand the way the trainers write them)."""
from __future__ import annotations

import json
import shutil

import pytest

from facray.run_data import split_settings, trained_on
from facray.runs import RunFolder, RunFolderError


def _prepared(path, shards="shards-a"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "prepared.json").write_text(json.dumps({"shards": shards, "size": 32}))
    return path


def _run(tmp_path, prepared, **settings):
    run = RunFolder(tmp_path / "run")
    settings = {"prepared": str(prepared), "prepared_version": "shards-a", "train_split": "train",
                "val_split": "holdout", "test_split": "val", "holdout": 0.1, "seed": 0, "epochs": 3, **settings}
    run.claim(settings, "hash-1")
    return run


def _job(run: RunFolder, key: str, settings_hash="hash-1", weights=True):
    d = run.job_dir(key)
    d.mkdir(parents=True)
    attribute, modality = key.split("__")
    RunFolder.job_metrics_file(d).write_text(json.dumps({"attribute": attribute, "modality": modality,
                                                         "status": "finished", "settings_hash": settings_hash}))
    if weights:
        RunFolder.job_weights_file(d).write_bytes(b"weights")


def test_claim_refuses_other_settings_naming_the_keys_and_overwrite_keeps_mlflow(tmp_path):
    run = _run(tmp_path, _prepared(tmp_path / "prep"))
    run.claim(run.settings(), "hash-1")  # the same settings: fine
    with pytest.raises(RunFolderError, match=r"epochs: 3 -> 5") as e:
        run.claim({**run.settings(), "epochs": 5}, "hash-2")
    assert "--overwrite" in str(e.value)
    _job(run, "Smiling__real")
    run.model_dir.mkdir()
    run.mlflow_db.write_text("store")
    run.set_mlflow_run_id("abc")
    run.claim({**run.settings(), "epochs": 5}, "hash-2", overwrite=True)
    assert not run.jobs_dir.exists() and not run.model_dir.exists() and run.mlflow_run_id() is None
    assert run.mlflow_db.read_text() == "store"  # MLflow history is never discarded
    assert run.settings()["epochs"] == 5 and run.settings_hash() == "hash-2"


def test_prepared_is_verified_against_the_version_the_run_trained_on(tmp_path):
    prepared = _prepared(tmp_path / "prep")
    run = _run(tmp_path, prepared)
    assert trained_on(run) == str(prepared)
    assert split_settings(run)["test_split"] == "val"
    _prepared(prepared, shards="shards-b")  # re-prepared since the run trained
    with pytest.raises(RunFolderError, match="re-prepared since"):
        trained_on(run)
    moved = _prepared(tmp_path / "elsewhere", shards="shards-a")  # the same data, moved
    assert split_settings(run, str(moved))["prepared"] == str(moved)
    shutil.rmtree(prepared)
    with pytest.raises(RunFolderError, match="--prepared"):
        trained_on(run)


def test_another_dataset_is_named_as_such_with_the_command_that_scores_on_it(tmp_path):
    """The issue's case: --prepared of MTFL for a run trained on CelebA is another dataset, not
    the same data re-prepared; the message says so and gives the cross-dataset command."""
    prepared = _prepared(tmp_path / "celeba_prep")
    meta = json.loads((prepared / "prepared.json").read_text())
    (prepared / "prepared.json").write_text(json.dumps({**meta, "dataset": "celeba", "root": "/data/celeba"}))
    run = _run(tmp_path, prepared)
    other = _prepared(tmp_path / "mtfl prep", shards="shards-m")
    (other / "prepared.json").write_text(json.dumps({"shards": "shards-m", "size": 32, "dataset": "mtfl",
                                                     "root": "/data/my mtfl"}))
    with pytest.raises(RunFolderError) as e:
        trained_on(run, str(other))
    message = str(e.value)
    assert "holds mtfl from /data/my mtfl, but" in message and "trained on celeba from /data/celeba" in message
    assert "another dataset" in message and "re-prepared" not in message
    assert f"facray evaluate --model {run.root} --dataset '/data/my mtfl'" in message


def test_a_folder_without_run_json_is_not_a_run(tmp_path):
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunFolder(tmp_path).settings()


def test_finished_jobs_count_only_under_the_same_settings_with_weights(tmp_path):
    run = _run(tmp_path, _prepared(tmp_path / "prep"))
    with pytest.raises(RunFolderError, match="no finished jobs"):
        run.job_records()
    _job(run, "Smiling__real")
    _job(run, "Smiling__sketch", settings_hash="older")
    _job(run, "Male__real", weights=False)
    assert run.finished_job_keys("hash-1") == {"Smiling__real"}
    assert [r["attribute"] + "__" + r["modality"] for r in run.job_records()] == \
        ["Male__real", "Smiling__real", "Smiling__sketch"]


def test_a_checkpoint_in_the_same_layout_is_taken_into_the_run(tmp_path):
    run = _run(tmp_path, _prepared(tmp_path / "prep"))
    _job(run, "Smiling__real", settings_hash="stale")
    checkpoint = RunFolder(tmp_path / "checkpoint")
    _job(checkpoint, "Smiling__real")
    _job(checkpoint, "Male__real")
    assert run.take_jobs_from(checkpoint) == ["Male__real", "Smiling__real"]
    assert run.finished_job_keys("hash-1") == {"Male__real", "Smiling__real"}  # replaced, not merged

    checkpoint.model_dir.mkdir()
    (checkpoint.model_dir / "manifest.json").write_text("{}")
    checkpoint.write_metrics({"model": "abm-trunk", "settings_hash": "hash-1"})
    assert not run.is_multitask
    record = run.take_model_from(checkpoint)
    assert record["model"] == "abm-trunk"
    assert not run.is_multitask  # not finished until its metrics are written, last
    run.write_metrics({**record, "registered": None})
    assert run.is_multitask and run.metrics()["model"] == "abm-trunk"
    assert not list(run.root.glob("*.tmp"))
    assert run.predictor_dir() == run.model_dir


def test_predictor_dir_of_a_binary_run_is_combined_once_combine_ran(tmp_path):
    run = _run(tmp_path, _prepared(tmp_path / "prep"))
    with pytest.raises(RunFolderError, match="facray combine"):
        run.predictor_dir()
    run.combined_dir.mkdir()
    (run.combined_dir / "manifest.json").write_text("{}")
    assert run.predictor_dir() == run.combined_dir
    assert run.default_tracking_uri() == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"


def test_the_mlflow_run_id_of_an_older_run_folder_is_still_read(tmp_path):
    """Run folders written before the file was renamed (``parent_run_id``) keep logging under
    their MLflow run; writing it again moves it to the new name."""
    run = RunFolder(tmp_path)
    (tmp_path / "parent_run_id").write_text("older\n")
    assert run.mlflow_run_id() == "older"
    run.set_mlflow_run_id("newer")
    assert run.mlflow_run_id() == "newer" and not (tmp_path / "parent_run_id").exists()
