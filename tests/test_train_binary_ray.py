"""train-binary on Ray Train (fused and separate), fault tolerance, MLflow, combine, evaluate."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import pytest

from facray.predictors.format import PredictorError

from facray.predictors.networks import load_predictor
from facray.training.combine import choose_modalities, combine
from facray.training.configs import CombineConfig, EvaluateConfig
from facray.training.configs import BinaryConfig
from facray.runners.train import train

from conftest import read_png

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def _cfg(prepared, out, **kw):
    base = BinaryConfig(prepared=str(prepared), out=str(out), attributes="Eyeglasses,Smiling",
                             epochs=2, batch_size=16, image_size=32, cpus_per_worker=0.5, num_workers=2)
    return replace(base, **kw)


def _runs(out):
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["facray-abm"])


def test_fused_two_workers_mlflow_rerun_combine_evaluate(ray_session, prepared_small, tmp_path):
    out = tmp_path / "run"
    table = train(_cfg(prepared_small, out))
    assert sorted(table.job) == ["Eyeglasses__real", "Eyeglasses__sketch", "Smiling__real", "Smiling__sketch"]
    assert table.test_accuracy.between(0, 1).all()
    rec = json.loads((out / "jobs/Smiling__sketch/metrics.json").read_text())
    assert [h["epoch"] for h in rec["history"]] == [1, 2] and rec["status"] == "finished"
    assert {"accuracy", "loss", "val_accuracy", "val_loss", "precision", "recall", "f1"} <= set(rec["history"][0])
    assert len(rec["test"]["confusion"]) == 2 and (out / "config.yaml").is_file()

    runs = _runs(out)
    parent = runs[runs["tags.mlflow.runName"] == "train-binary-fused"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id.iloc[0]]
    assert len(parent) == 1 and sorted(children["tags.mlflow.runName"]) == sorted(table.job)
    assert parent["params.epochs"].iloc[0] == "2"
    history = mlflow.tracking.MlflowClient().get_metric_history(children.run_id.iloc[0], "val_loss")
    assert [m.step for m in history] == [1, 2]
    # The run's own epochs arrived while it trained: both workers' jobs in each figure.
    live = mlflow.tracking.MlflowClient().get_metric_history(parent.run_id.iloc[0], "jobs_trained")
    assert [(m.step, m.value) for m in live] == [(1, 4), (2, 4)]
    assert parent["status"].iloc[0] == "FINISHED"

    # An interrupted or repeated run skips finished jobs and adds only what is missing.
    (out / "jobs/Smiling__sketch/metrics.json").unlink()
    again = train(_cfg(prepared_small, out))
    assert len(again) == 4 and (out / "jobs/Smiling__sketch/metrics.json").is_file()

    dest, uri = combine(CombineConfig(run=str(out)))
    assert uri == "models:/facray-abm-combined@newest"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["thresholds"] == "validation" and all(0 <= c["threshold"] <= 1 for c in manifest["attributes"])
    predictor = load_predictor(uri)
    assert predictor.attributes == ["Eyeglasses", "Smiling"] and predictor.crop["size"] == 32
    local = load_predictor(dest)
    assert local.manifest.weights_sha256 == predictor.manifest.weights_sha256

    import numpy as np
    from facray.data.prepared import read_prepared
    test = read_prepared(prepared_small, ("test",))
    probs = predictor.predict_proba(test["image"], test["sketch"])
    assert probs.shape == (len(test["image"]), 40)
    covered = [i for i in range(40) if not np.isnan(probs[0, i])]
    assert len(covered) == 2 and ((probs[:, covered] >= 0) & (probs[:, covered] <= 1)).all()

    # The registered model labels images through its registry URI (actors resolve it too).
    from facray.data.synth import write_unlabelled_faces
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    write_unlabelled_faces(tmp_path / "faces", n=2, seed=3, sizes=(96,))
    labelled = label_images(LabelConfig(images=str(tmp_path / "faces"), model=uri, out=str(tmp_path / "l.csv"),
                                        tracking_uri=mlflow.get_tracking_uri(), num_actors=1, preprocess_actors=1, batch_size=2))
    assert labelled.inputs == 2 and labelled.model == predictor.name

    from facray.reports import evaluate_run
    report, folder = evaluate_run(EvaluateConfig(run=str(out)))
    assert min(read_png(folder / "accuracy_per_attribute.png").shape[:2]) >= 200
    row = report.set_index("attribute").loc["Eyeglasses"]
    assert row.combined_test_accuracy == row[f"{row.chosen}_test_accuracy"]
    assert 0 < row.majority_accuracy <= 1 and row.paper_table2_accuracy == pytest.approx(0.996)
    assert "evaluate" in set(_runs(out)["tags.mlflow.runName"])


def test_injected_failure_resumes_from_the_last_checkpoint(ray_session, prepared_small, tmp_path):
    out = tmp_path / "ft"
    train(_cfg(prepared_small, out, attributes="Eyeglasses", modalities=("real",),
                             epochs=3, num_workers=1, fail_at_epoch=2, max_failures=1))
    assert (out / ".injected_failure").read_text().startswith("failed at epoch 2")
    rec = json.loads((out / "jobs/Eyeglasses__real/metrics.json").read_text())
    assert rec["resumed_from_epoch"] == 1  # restarted after epoch 1's checkpoint, not from 0
    assert [h["epoch"] for h in rec["history"]] == [1, 2, 3]


def test_separate_mode_runs_one_trainer_per_job(ray_session, prepared_small, tmp_path):
    out = tmp_path / "sep"
    table = train(_cfg(prepared_small, out, mode="separate", modalities=("real",),
                                     epochs=1, num_workers=1, max_concurrent=2))
    assert sorted(table.job) == ["Eyeglasses__real", "Smiling__real"]
    assert len(list((out / "ray_results").glob("job-*"))) == 2


def test_auto_streams_data_too_large_for_the_node_and_memory_is_refused(ray_session, prepared_small, tmp_path,
                                                                         monkeypatch, capsys):
    """The node's memory is faked (a 100 kB node), never allocated: --data auto streams from Ray
    Data and trains; --data memory is refused with the sizes before any worker starts."""
    import facray.runners.train as runner
    from facray.training.data_mode import Node
    monkeypatch.setattr(runner, "ray_nodes", lambda: [Node(memory=1e5, cpus=2)])
    with pytest.raises(ValueError, match=r"--data memory does not fit: each worker loads 0\.\d\d MB .* use --data "
                                         r"stream"):
        train(_cfg(prepared_small, tmp_path / "memory", data="memory", attributes="Smiling", num_workers=1))
    assert not (tmp_path / "memory" / "ray_results").exists()

    table = train(_cfg(prepared_small, tmp_path / "stream", attributes="Smiling", epochs=1, num_workers=1))
    assert "data: stream, since the arrays do not fit in memory" in capsys.readouterr().out
    assert list(table.job) == ["Smiling__real", "Smiling__sketch"] and table.test_accuracy.notna().all()


def test_stream_reads_are_sized_by_facrays_block_target_and_leave_the_drivers_alone(ray_session, prepared_small):
    """Ray 2.60's Parquet reader sizes its read batches and file buckets from the driver's global
    DataContext when read_parquet is called, and the Dataset keeps a copy for its blocks: both
    must be STREAM_BLOCK_BYTES (and no per-execution log lines), and the driver's own settings must be back afterwards."""
    import ray

    from facray.runners.streaming import STREAM_BLOCK_BYTES, split_datasets
    from facray.training.splits import SplitSpec, check_splits
    context = ray.data.DataContext.get_current()
    before = context.target_max_block_size
    datasets = split_datasets(SplitSpec(str(prepared_small)), ("image",))
    assert context.target_max_block_size == before != STREAM_BLOCK_BYTES
    assert {d.context.target_max_block_size for d in datasets.values()} == {STREAM_BLOCK_BYTES}
    assert context.print_on_execution_start and not any(d.context.print_on_execution_start for d in datasets.values())
    assert datasets["train"].count() == check_splits(SplitSpec(str(prepared_small)))["train"]


def test_facrays_ray_runs_the_allocator_settings_unless_the_job_or_driver_sets_them(monkeypatch):
    """init_ray gives ray.init ALLOCATOR_ENV as the job's runtime env (bench/stream_read.py: the
    read process's memory; bench/stream_worker_memory.py: the Train worker's), once per job rather
    than per read task (a fresh worker for each pass); a variable the submitted job sets itself is
    left to it (Ray refuses it from both), and one the driver's environment sets keeps its value."""
    import ray

    from facray.runners import runtime
    asked = {}

    def init(**kwargs):
        asked.update(kwargs)
        raise KeyboardInterrupt  # stop before anything starts

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(runtime, "_started_here", False)  # restored: a later stop_ray leaves the session's Ray
    from ray._private import auto_init_hook
    monkeypatch.setattr(auto_init_hook, "enable_auto_connect", auto_init_hook.enable_auto_connect)
    for name in ("RAY_JOB_CONFIG_JSON_ENV_VAR", *runtime.ALLOCATOR_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(KeyboardInterrupt):
        runtime.init_ray(address="ray://cluster:10001")
    assert asked["address"] == "ray://cluster:10001"
    assert asked["runtime_env"] == {"env_vars": {"MIMALLOC_PURGE_DELAY": "0", "MALLOC_ARENA_MAX": "2"}}
    assert asked["runtime_env"] == {"env_vars": runtime.ALLOCATOR_ENV}

    submitted = {"runtime_env": {"working_dir": "s3://b/code.zip", "env_vars": {"MIMALLOC_PURGE_DELAY": "10"}}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(submitted))
    assert runtime.job_runtime_env() == {"env_vars": {"MALLOC_ARENA_MAX": "2"}}
    submitted["runtime_env"]["env_vars"]["MALLOC_ARENA_MAX"] = "8"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(submitted))
    assert runtime.job_runtime_env() == {}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"pip": ["timm"]}}))
    assert runtime.job_runtime_env() == {"env_vars": runtime.ALLOCATOR_ENV}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "16")  # the driver's own value goes to the workers instead
    assert runtime.job_runtime_env() == {"env_vars": {"MIMALLOC_PURGE_DELAY": "0", "MALLOC_ARENA_MAX": "16"}}


def test_stream_train_reads_its_files_in_a_new_seeded_order_each_pass(ray_session, prepared_small, tmp_path):
    """Stream mode's ``train`` reads its Parquet files in a seeded order, a new one each execution
    (each pass), the same sequence for the same seed; validation keeps file order."""
    import shutil

    import pyarrow.parquet as pq

    from facray.data.prepared import shard_dir
    from facray.runners.streaming import split_datasets, stream_data_config
    from facray.training.splits import SplitSpec
    prepared = tmp_path / "p"
    shutil.copytree(prepared_small, prepared)
    shards = Path(shard_dir(prepared))
    table = pq.read_table(shards)
    for f in shards.glob("*.parquet"):
        f.unlink()
    for i in range(8):  # 8 files of 10 rows: enough orders to tell apart
        pq.write_table(table.slice(10 * i, 10), shards / f"part-{i}.parquet")

    def passes(seed, split, n=3):
        ds = split_datasets(SplitSpec(str(prepared)), ("image",), shuffle_seed=seed)[split]
        ds.context.execution_options = stream_data_config(False)._resolve_execution_options(split)
        return [[i for b in ds.iter_batches(batch_format="numpy") for i in b["image_id"]] for _ in range(n)]

    first = passes(3, "train")
    assert sorted(first[0]) == sorted(first[1]) == sorted(first[2]) and len(first[0]) > 10
    assert first[0] != first[1] and first[1] != first[2] and first[0] != first[2]  # a new file order every pass
    assert passes(3, "train", 2) == first[:2]  # seeded: a re-run repeats the sequence
    assert passes(4, "train", 1)[0] != first[0]
    val = passes(3, "val", 2)
    file_order = [i for i in table["image_id"].to_pylist() if i in set(val[0])]
    assert val[0] == val[1] == file_order


def test_stream_ingest_runs_in_order_and_splits_train_only_for_data_parallel_tasks():
    """Ray Train applies its DataConfig's execution options to every stream dataset (they replace
    the Dataset's own): in order, so a read task reads its Parquet fragments one at a time
    (bench/stream_read.py), whatever the driver's context says; ``train`` split between the
    workers only when they train one model (multi-task), whole for the binary jobs."""
    import ray

    from facray.runners.streaming import stream_data_config
    assert not ray.data.DataContext.get_current().execution_options.preserve_order
    for split_train in (True, False):
        config = stream_data_config(split_train)
        assert all(config._resolve_execution_options(name).preserve_order for name in ("train", "val", "test"))
        assert config._datasets_to_split == (["train"] if split_train else [])


def test_choose_modalities_prefers_better_validation_then_real():
    def rec(a, m, val):
        return {"attribute": a, "modality": m, "best": {"val_accuracy": val}, "test": {"test_accuracy": 0.5}, "dir": ""}
    table = choose_modalities([rec("Bald", "real", 0.90), rec("Bald", "sketch", 0.95),
                               rec("Male", "real", 0.80), rec("Male", "sketch", 0.80),
                               rec("Young", "sketch", 0.7)])
    assert dict(zip(table.attribute, table.modality)) == {"Bald": "sketch", "Male": "real", "Young": "sketch"}


def test_tampered_or_incomplete_predictor_fails_before_any_image(tmp_path):
    import torch
    from facray.models.abm import ABMCNN
    from facray.predictors.networks import write_predictor
    sd = ABMCNN(3, 32).state_dict()
    dest = write_predictor(tmp_path / "p", [{"attribute": "Male", "modality": "real", "threshold": 0.5,
                                             "val_accuracy": 0.9, "test_accuracy": 0.9}],
                           {"Male__real": sd}, {"size": 32, "margin": 0.35}, 32, 1)
    assert load_predictor(dest).attributes == ["Male"]
    torch.save({"Male__real": ABMCNN(3, 40).state_dict()}, dest / "weights.pt")
    with pytest.raises(PredictorError, match="does not match the manifest"):
        load_predictor(dest)
    with pytest.raises(PredictorError, match="no manifest.json"):
        load_predictor(tmp_path)


def test_run_ends_when_every_job_has_stopped(ray_session, prepared_small, tmp_path):
    out = tmp_path / "early"
    train(_cfg(prepared_small, out, attributes="Eyeglasses", modalities=("real",),
                             epochs=30, patience=1, num_workers=1))
    rec = json.loads((out / "jobs/Eyeglasses__real/metrics.json").read_text())
    assert rec["stopped"] == "early_stopping" and rec["epochs"] < 30
    checkpoints = sorted(p for p in (out / "ray_results").glob("fused-*/checkpoint_*") if p.is_dir())
    assert len(checkpoints) <= 2  # num_to_keep=2, and no idle epochs after the stop
    import torch
    state = torch.load(checkpoints[-1] / "rank0.pt", weights_only=False)
    assert state["epoch"] == rec["epochs"]  # the last report came at the stopping epoch


@pytest.mark.slow  # ~45 s: a training run to refuse
def test_rerun_with_other_settings_is_refused_naming_the_keys(ray_session, prepared_small, tmp_path):
    out = tmp_path / "guard"
    cfg = _cfg(prepared_small, out, attributes="Smiling", modalities=("real",), epochs=1, num_workers=1)
    train(cfg)
    finished = json.loads((out / "jobs/Smiling__real/metrics.json").read_text())
    assert finished["settings_hash"] == json.loads((out / "run.json").read_text())["settings_hash"]
    weights = (out / "jobs/Smiling__real/model.pt").read_bytes()
    with pytest.raises(ValueError, match=r"other settings(.|\n)*epochs: 1 -> 3(.|\n)*image_size: 32 -> 24") as e:
        train(replace(cfg, epochs=3, image_size=24))
    assert "--overwrite" in str(e.value)
    with pytest.raises(ValueError, match="attributes: 'Smiling' -> 'Smiling,Male'"):
        train(replace(cfg, attributes="Smiling,Male"))
    assert (out / "jobs/Smiling__real/model.pt").read_bytes() == weights  # nothing was touched
    # Operational keys (workers, failure budget, tracking) are not settings: a re-run is a no-op.
    assert len(train(replace(cfg, max_failures=5, torch_threads=1))) == 1
    # The same job re-trained after a partial loss logs no second child run.
    (out / "jobs/Smiling__real/metrics.json").unlink()
    train(cfg)
    runs = _runs(out)
    assert (runs["tags.mlflow.runName"] == "Smiling__real").sum() == 1
    assert (runs["tags.mlflow.runName"] == "train-binary-fused").sum() == 1
    # --overwrite starts afresh with the new settings.
    table = train(replace(cfg, epochs=2, overwrite=True))
    rec = json.loads((out / "jobs/Smiling__real/metrics.json").read_text())
    assert len(table) == 1 and [h["epoch"] for h in rec["history"]] == [1, 2]


def test_in_stack_lr_sweep_keeps_each_attributes_best_lr(ray_session, prepared_small, tmp_path):
    out = tmp_path / "lrs"
    table = train(_cfg(prepared_small, out, modalities=("real",), lrs=(3e-3, 3e-4), num_workers=1))
    assert sorted(table.job) == ["Eyeglasses__real__lr0.0003", "Eyeglasses__real__lr0.003",
                                 "Smiling__real__lr0.0003", "Smiling__real__lr0.003"]
    runs = _runs(out)  # one MLflow child per model, each with its own curves
    assert len(runs[runs["tags.mlflow.runName"].str.contains("__lr")]) == 4
    dest, _ = combine(CombineConfig(run=str(out), register=False))
    chosen = json.loads((dest / "manifest.json").read_text())["attributes"]
    for c in chosen:  # the lr whose logged validation accuracy is best
        logged = {lr: json.loads((out / f"jobs/{c['attribute']}__real__lr{lr:g}/metrics.json").read_text())
                  for lr in (3e-3, 3e-4)}
        best = max(logged, key=lambda lr: (logged[lr]["best"]["val_accuracy"], lr))
        assert c["lr"] == best and c["val_accuracy"] == logged[best]["best"]["val_accuracy"]
    assert load_predictor(dest).attributes == ["Eyeglasses", "Smiling"]


def test_sketch_jobs_on_data_prepared_without_sketches_are_refused_before_ray(tmp_path):
    from facray.data.prepared import write_metadata
    write_metadata(tmp_path / "prepared", size=32, sketch_channels=0, image_format="jpeg", shards="shards-x")
    with pytest.raises(ValueError, match="without sketches.*--modalities real"):
        train(_cfg(tmp_path / "prepared", tmp_path / "run"))


def test_a_diverging_job_keeps_no_weights_fails_the_command_and_combine_leaves_it_out(
        ray_session, prepared_small, tmp_path, capsys):
    """lr 1e20 on one attribute of an in-stack pair: that job stops at its first non-finite
    epoch with no weights (status ``diverged``), the other is kept, the command fails in one line
    naming the job, a re-run does not train it again, and combine leaves it out."""
    from facray.cli import main
    out = tmp_path / "diverge"
    args = ["train-binary", "--prepared", str(prepared_small), "--out", str(out), "--attributes", "Eyeglasses",
            "--modalities", "real", "--lrs", "1e20,0.001", "--epochs", "2", "--batch-size", "16",
            "--image-size", "32", "--cpus-per-worker", "0.5", "--num-workers", "1"]
    assert main(args) == 2
    ours = [line for line in capsys.readouterr().err.splitlines() if line.startswith("facray:")]
    assert len(ours) == 1 and "1 of 2 job(s) diverged" in ours[0] and "Eyeglasses__real__lr1e+20" in ours[0]
    bad, good = out / "jobs/Eyeglasses__real__lr1e+20", out / "jobs/Eyeglasses__real__lr0.001"
    rec = json.loads((bad / "metrics.json").read_text())
    assert rec["status"] == "diverged" and "training diverged at epoch 1" in rec["diverged"]
    assert not (bad / "model.pt").exists() and (good / "model.pt").exists()
    assert main(args) == 2 and "2 already finished, 0 to run" in capsys.readouterr().out
    dest, _ = combine(CombineConfig(run=str(out), register=False))
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [(c["attribute"], c["lr"]) for c in manifest["attributes"]] == [("Eyeglasses", 0.001)]


def test_a_one_sided_attribute_is_not_trained_and_combine_leaves_it_out(ray_session, synth_women_only, tmp_path,
                                                                         capsys):
    """The issue's women-only subset: `train-binary --attributes Male,Smiling` trains Smiling only,
    saying the data is one-sided; the combined predictor holds no Male (label leaves it empty, not
    "not Male" for every man); Male alone is refused before Ray does any work."""
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    prepared = tmp_path / "prepared"
    prepare(PrepareConfig(root=str(synth_women_only), out=str(prepared), size=32, augment=1, num_actors=1,
                          batch_size=16, sketch_channels=0))
    out = tmp_path / "run"
    train(_cfg(prepared, out, attributes="Male,Smiling", modalities=("real",), epochs=1,
                             num_workers=1))
    assert "warning: Male: all" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "jobs").iterdir()) == ["Smiling__real"]
    dest, _ = combine(CombineConfig(run=str(out), register=False))
    assert [c["attribute"] for c in json.loads((dest / "manifest.json").read_text())["attributes"]] == ["Smiling"]
    with pytest.raises(ValueError, match=r"none of the 1 selected attribute\(s\) has labelled training rows of both"):
        train(_cfg(prepared, tmp_path / "male", attributes="Male", modalities=("real",), epochs=1))

