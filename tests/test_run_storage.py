"""Run folders on object storage (``--out s3://...``), without S3: ``file://`` URIs take the same
path through pyarrow (the S3 server and three nodes are in tests/test_multinode.py)."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pandas as pd
import pyarrow.fs as pafs
import pytest

from facray import storage
from facray.runs import RunFolder
from facray.staged_runs import run_folder


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_mirror_copies_what_changed_since_last_in_step_in_either_direction(tmp_path, monkeypatch):
    src, dst = tmp_path / "src", tmp_path / "dst"
    _write(src / "run.json", "{}")
    _write(src / "jobs/a/model.pt", "weights")
    _write(src / "jobs/a/ray_results/ckpt", "skipped at any depth")
    _write(dst / "stale.txt")
    _write(dst / "ray_results/keep", "not ours to delete")
    synced, skip = {}, frozenset({"ray_results"})
    order = []
    copy = storage.pafs.copy_files
    monkeypatch.setattr(storage.pafs, "copy_files", lambda a, b, **kw: (order.append(a), copy(a, b, **kw)))
    assert storage.mirror(str(src), f"file://{dst}", synced, skip=skip, last=("run.json",)) == 2
    assert order[-1].endswith("/run.json")  # a folder's marker goes last
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "jobs/a/model.pt", "ray_results/keep", "run.json"]
    assert storage.mirror(str(src), str(dst), synced, skip=skip) == 0  # nothing changed
    back = {rel: [b, a] for rel, (a, b) in synced.items()}
    assert storage.mirror(str(dst), str(src), back, skip=skip) == 0  # nor the other way: the copies are in step
    (src / "run.json").write_text("[]")  # the same size, rewritten
    assert storage.mirror(str(src), str(dst), synced, skip=skip) == 1 and (dst / "run.json").read_text() == "[]"
    assert storage.mirror(str(src), str(dst), skip=skip) == 2  # with nothing recorded, everything is copied
    assert storage.mirror(str(tmp_path / "missing"), str(dst), synced, skip=skip) == 0
    assert [p.name for p in dst.rglob("*") if p.is_file()] == ["keep"] and synced == {}


def test_a_uri_run_folder_is_a_local_copy_with_shared_parts_on_the_storage(tmp_path, monkeypatch):
    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "staging"))
    remote = tmp_path / "bucket/runs/x"
    run = run_folder(f"file://{remote}")
    assert run.location == f"file://{remote}" and run.root == tmp_path / "staging" / "file" / "_" / str(remote)[1:]
    assert type(run_folder(str(tmp_path / "plain"))) is RunFolder

    path, fs = run.ray_storage()  # Ray Train's storage is on the bucket, never in the local copy
    assert path == f"{remote}/ray_results" and isinstance(fs, pafs.LocalFileSystem)
    assert run.ray_storage("tune")[0] == f"{remote}/tune"
    trial = run.trial("t1")
    assert trial.location == f"file://{remote}/trials/t1" and trial.root == run.trials_dir / "t1"

    # A worker on any node writes its failure note where the driver reads it: on the storage.
    run.write_failure("ValueError: bad", "train-x")
    assert (remote / "failure-train-x.txt").read_text() == "ValueError: bad" and not run.root.exists()
    assert run.failure("train-x") == "ValueError: bad"
    run.clear_failure("train-x")
    assert run.failure("train-x") is None

    run.claim({"a": 1}, "h1")
    _write(run.jobs_dir / "Smiling__real/metrics.json", "{}")
    run.write_failure("a worker's note", "train-y")
    run.push()
    assert json.loads((remote / "run.json").read_text())["settings"] == {"a": 1}
    assert run.failure("train-y") == "a worker's note"  # a push leaves what only the bucket holds
    copied = (run.jobs_dir / "Smiling__real/metrics.json").stat().st_mtime_ns
    run.pull()  # in step: nothing comes back down
    assert (run.jobs_dir / "Smiling__real/metrics.json").stat().st_mtime_ns == copied
    _write(remote / "ray_results/train-x/checkpoint", "on the storage only")
    _write(remote / "trials/t1/run.json", "a trial pushes its own")

    # Another driver (or this one after its copy was lost) sees the same run; a re-claim with
    # other settings is refused, --overwrite clears everything of the old run on the storage.
    other = run_folder(f"file://{remote}/")
    other.root.joinpath("leftover.txt").write_text("not on the storage")
    other.pull()
    assert (other.jobs_dir / "Smiling__real/metrics.json").is_file() and not other.ray_results_dir.exists()
    assert not (other.root / "leftover.txt").exists() and not (other.root / "trials").exists()
    with pytest.raises(ValueError, match=f"file://{remote} holds a run trained with other settings"):
        other.claim({"a": 2}, "h2")
    other.claim({"a": 2}, "h2", overwrite=True)
    assert not (remote / "ray_results").exists() and not (remote / "trials").exists()
    assert not [p for p in (remote / "jobs").rglob("*") if p.is_file()] and other.failure("train-y") is None
    other.push()
    assert json.loads((remote / "run.json").read_text())["settings"] == {"a": 2}

    # Its MLflow store must be one every machine reaches: the default SQLite file would be one copy's.
    with pytest.raises(ValueError, match="pass --tracking-uri"):
        other.default_tracking_uri()
    with pytest.raises(ValueError, match=r"takes no \?options"):
        run_folder("s3://bucket/runs/x?endpoint_override=localhost:9000")


def test_staging_name_is_readable_and_stays_inside_the_staging_root():
    assert storage.staging_name("s3://bucket/runs/x/") == os.path.join("s3", "bucket", "runs", "x")
    assert ".." not in storage.staging_name("s3://bucket/../../etc")


@pytest.mark.integration
@pytest.mark.timeout(420)
def test_train_binary_combine_and_label_a_run_on_object_storage(ray_session, prepared_small, tmp_path,
                                                                monkeypatch):
    """train-binary into a URI, then combine, evaluate and locate the predictor from it, each from a
    fresh local copy (as on another machine): nothing is read from the first driver's copy."""
    from facray.predictors.locate import locate_predictor
    from facray.reports import evaluate_run
    from facray.runners.train import train
    from facray.training.combine import combine
    from facray.training.configs import BinaryConfig, CombineConfig, EvaluateConfig

    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "driver1"))
    remote = tmp_path / "bucket/runs/abm"
    uri, tracking = f"file://{remote}", f"sqlite:///{tmp_path / 'mlflow.db'}"  # a store every "machine" reaches
    cfg = BinaryConfig(prepared=str(prepared_small), out=uri, attributes="Smiling", modalities=("real",), epochs=2,
                       batch_size=16, image_size=32, cpus_per_worker=0.5, num_workers=1, tracking_uri=tracking)
    with pytest.raises(ValueError, match="pass --tracking-uri"):  # before anything is written
        train(replace(cfg, tracking_uri=None))
    assert not remote.exists()
    table = train(cfg)
    assert list(table.job) == ["Smiling__real"]
    weights = remote / "jobs/Smiling__real/model.pt"
    assert (remote / "run.json").is_file() and weights.is_file() and (remote / "mlflow_run_id").is_file()
    checkpoints = [p for p in (remote / "ray_results").rglob("checkpoint_*") if p.is_dir()]
    assert checkpoints, "Ray Train's checkpoints are on the storage"
    assert not any((tmp_path / "driver1").rglob("checkpoint_*"))

    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "driver2"))
    trained = weights.stat().st_mtime_ns
    assert train(cfg).equals(table) and weights.stat().st_mtime_ns == trained  # found there, nothing retrained
    dest, _ = combine(CombineConfig(run=uri, register=False))
    assert (remote / "combined/manifest.json").is_file() and dest.is_relative_to(tmp_path / "driver2")
    report, _ = evaluate_run(EvaluateConfig(run=uri, tracking_uri=tracking))
    assert (remote / "report/report.csv").is_file() and report.attribute.iloc[0] == "Smiling"

    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "labeller"))
    path, manifest = locate_predictor(uri)  # the predictor alone, in a private folder
    assert path.name.startswith("facray-model-") and manifest.attribute_names == ["Smiling"]
    assert not (tmp_path / "labeller").exists()
    with pytest.raises(ValueError, match="other settings"):
        train(replace(cfg, epochs=3))

    # --mode separate: each job a Tune trial on any node, which sends its job folder to the bucket.
    separate = replace(cfg, out=f"file://{tmp_path}/bucket/runs/separate", mode="separate", epochs=1)
    assert list(train(separate).job) == ["Smiling__real"]
    assert (tmp_path / "bucket/runs/separate/jobs/Smiling__real/model.pt").is_file()


def test_a_sweep_on_object_storage_needs_a_tracking_server_and_says_so_before_ray_starts(tmp_path, monkeypatch):
    """Its trials log to MLflow from any node: the default SQLite store in the driver's local copy
    is not reachable from them."""
    from conftest import forbid_ray_start
    from facray.runners.sweep import run_sweep
    from facray.training.configs import SweepConfig

    forbid_ray_start(monkeypatch)
    monkeypatch.setattr("facray.tracking._USER_TRACKING_URI", None)
    cfg = SweepConfig(space="tune_spaces.smoke_multitask", out=f"file://{tmp_path}/runs/sweep")
    with pytest.raises(ValueError, match=r"^file://.*/runs/sweep: a run on object storage .* --tracking-uri"):
        run_sweep(cfg, {"prepared": str(tmp_path)})
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # ~2 min: a 4-trial Tune sweep, then the same command again
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_a_sweep_on_object_storage_keeps_its_trials_there_and_resumes_from_there(ray_session, prepared_small,
                                                                                 tmp_path, monkeypatch, capsys):
    """The Tune experiment (restored through a pyarrow filesystem) and every trial's run folder are
    on the storage; the same command from a fresh local copy restores the experiment, runs no trial
    again and registers the same best trial."""
    from facray.runners.sweep import run_sweep
    from facray.training.configs import SweepConfig

    remote = tmp_path / "bucket/runs/sweep"
    cfg = SweepConfig(space="tune_spaces.smoke_multitask", out=f"file://{remote}", cpus_per_trial=0.5,
                      max_concurrent=2, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    trial_keys = {"prepared": str(prepared_small), "model": "abm-trunk-tiny", "image_size": 32, "batch_size": 16}
    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "driver1"))
    first = run_sweep(cfg, trial_keys)
    results = pd.read_csv(remote / "sweep_results.csv")
    assert len(results) == 4 and (results.status == "finished").all()
    assert results.run_folder.str.startswith(f"file://{remote}/trials/").all()
    assert all((remote / "trials" / f.rsplit("/", 1)[1] / "model/manifest.json").is_file() for f in results.run_folder)
    assert list((remote / "tune").rglob("experiment_state*.json")) and first["run_folder"] in set(results.run_folder)
    weights = sorted(remote.glob("trials/*/model/*.pt")) or sorted(remote.glob("trials/*/model/*"))
    stamps = {p: p.stat().st_mtime_ns for p in weights}

    monkeypatch.setenv("FACRAY_STAGING", str(tmp_path / "driver2"))
    capsys.readouterr()
    again = run_sweep(cfg, trial_keys)
    assert f"resuming the sweep in file://{remote}/tune/sweep" in capsys.readouterr().out
    assert again["best_trial"] == first["best_trial"] and again["run_folder"] == first["run_folder"]
    assert {p: p.stat().st_mtime_ns for p in weights} == stamps  # no trial trained again
