"""The one training skeleton without Ray: both tasks' plan -> setup -> :func:`train_epochs` ->
collect, with a plain ``report`` in place of Ray Train's (what the runner adds is tested by the Ray
tests). The loop resumes from a rank's saved state exactly where an uninterrupted run goes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facray.runs import RunFolder
from facray.training.configs import BinaryConfig, MultitaskConfig
from facray.training.task import train_epochs
from facray.training.tasks import task_for

CPU = torch.device("cpu")


def _no_ddp(model, find_unused_parameters):
    return model


def _train(cfg, saved: list | None = None, world: int = 1) -> tuple:
    """Every rank of ``cfg``'s plan, one after another in this process; returns (plan, the
    checkpoints each rank reported, as folders copied under ``cfg.out``, and the metrics)."""
    task = task_for(cfg)
    plan = task.plan(cfg)
    checkpoints, records = [], []
    for rank in range(len(plan.ranks)):
        def report(record, folder, rank=rank):
            records.append(record)
            if folder is not None:
                copy = Path(cfg.out) / "reported" / f"{rank}-{len(checkpoints)}"
                shutil.copytree(folder, copy)
                checkpoints.append(copy)
        work = task.setup(cfg, plan, rank, world, CPU, None)
        work.distribute(_no_ddp)
        state = torch.load(saved[rank], weights_only=True) if saved else None
        train_epochs(work, rank, cfg.out, plan.train_run, report, state)
    return task, plan, checkpoints, records


def test_a_multitask_run_trains_and_finishes_without_ray(prepared_small, tmp_path, learnable):
    cfg = MultitaskConfig(prepared=str(prepared_small), out=str(tmp_path / "mt"), model="abm-trunk-tiny",
                          image_size=32, epochs=2, batch_size=16, patience=5)
    task, plan, checkpoints, records = _train(cfg)
    assert [r["epoch"] for r in records] == [1, 2]
    assert (checkpoints[0] / "trainer.pt").is_file() and not RunFolder(checkpoints[0]).metrics_file.is_file()
    record = task.collect(RunFolder(checkpoints[-1]), plan.run)  # the last one carries the predictor
    assert record["epochs_run"] == 2 and record["settings_hash"] == plan.digest
    assert [a["attribute"] for a in record["attributes"]] == learnable(prepared_small)
    assert (plan.run.model_dir / "manifest.json").is_file()


def test_binary_ranks_split_the_jobs_and_a_resumed_rank_ends_like_an_uninterrupted_one(prepared_small, tmp_path):
    base = dict(prepared=str(prepared_small), attributes="Smiling,Male", modalities=("real",), epochs=3,
                image_size=32, batch_size=16, patience=5, num_workers=2)
    cfg = BinaryConfig(out=str(tmp_path / "full"), **base)
    task, plan, checkpoints, records = _train(cfg)
    assert [[j["attribute"] for j in share] for share in plan.ranks] == [["Male"], ["Smiling"]]  # attributes in the official order
    assert [r["epoch"] for r in records] == [1, 2, 3, 1, 2, 3]  # rank 0's epochs, then rank 1's
    full = {}
    for last in (checkpoints[2], checkpoints[5]):
        full.update({k: RunFolder(last).job_dir(k) for k in task.collect(RunFolder(last), plan.run)})
    assert sorted(full) == sorted(plan.shared["all_jobs"])

    # The same run from each rank's epoch-1 checkpoint: it resumes at epoch 2 and ends the same.
    resumed_cfg = BinaryConfig(out=str(tmp_path / "resumed"), **base)
    _, plan2, checkpoints2, records2 = _train(resumed_cfg, saved=[checkpoints[0] / "rank0.pt",
                                                                  checkpoints[3] / "rank1.pt"])
    assert [r["epoch"] for r in records2] == [2, 3, 2, 3]
    assert {r["resumed_from_epoch"] for r in records2} == {1}
    for last in (checkpoints2[1], checkpoints2[3]):
        for job_dir in RunFolder(last).jobs_dir.iterdir():
            a = torch.load(RunFolder.job_weights_file(job_dir), weights_only=True)["state_dict"]
            b = torch.load(RunFolder.job_weights_file(full[job_dir.name]), weights_only=True)["state_dict"]
            assert all(torch.equal(a[k], b[k]) for k in a), job_dir.name


def test_an_attribute_unlabelled_in_validation_is_warned_and_its_job_trains_every_epoch(prepared_small, tmp_path,
                                                                                        capsys):
    """Smiling's validation labels all unknown (-1): the plan says so before training; its job trains
    its 3 epochs (not ``patience``), keeps the last, and reports NaN validation metrics (not 0),
    while Male's job validates as usual."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    prepared = tmp_path / "prepared"
    shutil.copytree(prepared_small, prepared)
    for shard in prepared.glob("shards-*/*.parquet"):
        table = pq.read_table(shard)
        smiling = table.schema.get_field_index("Smiling")
        blank = pc.if_else(pc.equal(table["split"], "val"), -1, table["Smiling"]).cast(table.schema.field(smiling).type)
        pq.write_table(table.set_column(smiling, "Smiling", blank), shard)
    cfg = BinaryConfig(prepared=str(prepared), out=str(tmp_path / "run"), attributes="Smiling,Male",
                       modalities=("real",), epochs=3, patience=1, image_size=32, batch_size=16, online_augment="off")
    task, plan, checkpoints, _ = _train(cfg)
    assert (f"warning: {prepared}: Smiling has no labelled rows in the validation split ('val'): its validation "
            "metrics are NaN and its threshold stays 0.5; its jobs train every epoch and keep the last") \
        in capsys.readouterr().out
    task.collect(RunFolder(checkpoints[-1]), plan.run)
    records = {r["attribute"]: r for r in plan.run.job_records()}
    smiling, male = records["Smiling"], records["Male"]
    assert (smiling["epochs"], smiling["best_epoch"], smiling["stopped"]) == (3, 3, "max_epochs")
    assert all(np.isnan(h["val_accuracy"]) and np.isnan(h["val_loss"]) for h in smiling["history"])
    assert np.isfinite(smiling["test"]["test_accuracy"])
    assert all(np.isfinite(h["val_accuracy"]) for h in male["history"])


def test_a_diverged_run_leaves_its_reason_and_ends_without_raising(prepared_small, tmp_path):
    cfg = MultitaskConfig(prepared=str(prepared_small), out=str(tmp_path / "nan"), model="abm-trunk-tiny",
                          image_size=32, epochs=3, batch_size=16, lr=1e12)
    _, plan, checkpoints, records = _train(cfg)
    assert records == [] and checkpoints == []
    assert plan.run.failure(plan.train_run).startswith("training diverged at epoch 1: ")


@pytest.mark.parametrize("cfg_class", [BinaryConfig, MultitaskConfig])
def test_every_config_class_has_its_task(cfg_class):
    assert task_for(cfg_class).config_class is cfg_class
    with pytest.raises(TypeError, match="no training task for dict"):
        task_for({})


def test_the_data_path_never_renames_a_binary_train_run(prepared_small, tmp_path):
    """--data auto may choose memory on one run and stream on its re-run: the same Ray Train run
    (and so its checkpoint) either way; the workers, which change each worker's jobs, rename it."""
    from dataclasses import replace

    from facray.training.binary_task import BinaryTask
    cfg = BinaryConfig(prepared=str(prepared_small), out=str(tmp_path / "run"), attributes="Smiling,Male",
                       modalities=("real",), num_workers=2)
    task = BinaryTask()
    plan = task.plan(cfg)
    names = {task.train_run_name(replace(cfg, data=d), plan) for d in ("auto", "memory", "stream")}
    assert len(names) == 1
    assert task.train_run_name(replace(cfg, num_workers=1), plan) not in names


def test_train_binary_draws_the_variants_online_on_data_prepared_without_them(prepared_small, tmp_path):
    """prepared_small holds one variant per image: --online-augment auto turns ABM-CNN's variants on,
    says so before training, and records what it decided, so the same command with them off is
    another run (its own settings hash and Ray Train run), not a resume of this one. An epoch is 9
    passes over the rows, as many images as an epoch of the 9x data, each pass shuffled its own way."""
    from facray.training.binary_task import BinaryTask
    task = BinaryTask()
    base = dict(prepared=str(prepared_small), attributes="Smiling", modalities=("real",), image_size=32)
    plans, epochs = {}, {}
    for setting in ("auto", "on", "off"):
        cfg = BinaryConfig(out=str(tmp_path / setting), online_augment=setting, **base)
        plans[setting] = plan = task.plan(cfg)
        work = task.setup(task.resolve(cfg), plan, 0, 1, CPU, None)
        epochs[setting] = [b["labels"] for b in work.train_batches(0)]
        assert task.train_run_name(task.resolve(cfg), plan) == plan.train_run
    auto, on, off = plans["auto"], plans["on"], plans["off"]
    assert "online augmentation: 9 passes per epoch, each image a fresh ABM-CNN variant" in auto.summary
    assert "online augmentation: off" in off.summary
    assert auto.run.settings()["online_augment"] == "on" and "online_augment" not in off.run.settings()
    assert auto.digest == on.digest != off.digest and auto.train_run == on.train_run != off.train_run
    train_rows = auto.rows["train"]
    assert sum(map(len, epochs["off"])) == train_rows and sum(map(len, epochs["auto"])) == 9 * train_rows
    labels = np.concatenate(epochs["auto"])
    passes = labels.reshape(9, train_rows, -1)
    assert not np.array_equal(passes[0], passes[1])  # each pass its own shuffle


class _RecordingShard:
    """A Train worker's Ray Data shard stand-in (``iter_batches`` over prepared rows), recording the
    shuffle seed of every pass it is asked for."""

    def __init__(self, prepared, split: str):
        import pyarrow.dataset as pads

        from facray.data.prepared import shard_dir
        table = pads.dataset(shard_dir(prepared)).to_table()
        self.rows = {c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names}
        keep = (self.rows["split"] == split) & (self.rows["error"] == "")
        self.rows = {c: v[keep] for c, v in self.rows.items()}
        self.seeds = []

    def iter_batches(self, batch_size, batch_format, local_shuffle_buffer_size=None, local_shuffle_seed=None):
        self.seeds.append(local_shuffle_seed)
        n = len(self.rows["split"])
        for i in range(0, n, batch_size):
            yield {c: v[i:i + batch_size] for c, v in self.rows.items()}


def test_stream_mode_epoch_with_online_augmentation_is_nine_passes_each_shuffled_anew(prepared_small, tmp_path):
    """Stream mode's epoch with the variants drawn online: 9 passes over the worker's train shard,
    pass k of epoch e read with the shuffle seed a one-pass run gives its epoch e * 9 + k (as memory
    mode), so every pass of every epoch is shuffled differently."""
    from facray.training.augment import PASSES_PER_EPOCH
    from facray.training.binary_task import BinaryTask
    task = BinaryTask()
    cfg = task.resolve(BinaryConfig(prepared=str(prepared_small), out=str(tmp_path / "run"), attributes="Smiling",
                                    modalities=("real",), image_size=32, data="stream", seed=3))
    assert cfg.online_augment == "on"
    plan = task.plan(cfg)
    shards = {s: _RecordingShard(prepared_small, s) for s in ("train", "val", "test")}
    work = task.setup(cfg, plan, 0, 1, CPU, shards)
    train_rows = len(shards["train"].rows["split"])
    for epoch in range(2):
        rows = sum(len(b["labels"]) for b in work.train_batches(epoch))
        assert rows == PASSES_PER_EPOCH * train_rows
    assert shards["train"].seeds == [3 * 1000 + k for k in range(2 * PASSES_PER_EPOCH)]
