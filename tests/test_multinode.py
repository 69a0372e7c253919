"""facray on a Ray cluster of three nodes (tests/ray_cluster.py): a head with no CPUs for work (it
runs the jobs' drivers and Ray Train's controller, as on a cluster whose head is small) and two
one-CPU worker nodes, one of them declaring a GPU (CUDA is absent: the GPU scheduling paths run,
the computing falls back to the CPU). Every command goes through ``ray job submit``, as users send
it; data and runs are on this machine's disk, which every node here shares.

Then nodes are lost as on a cluster: SIGKILL to one worker node's processes in the middle of
``train``, ``train-binary`` and ``label``, and a replacement node joins as an autoscaler's would.
Without a replacement, the command stops after ``--node-wait`` seconds naming what is missing,
and a re-run once a node is back finishes the work.

The tests share one cluster and run in order; each leaves two worker nodes up (one with a GPU).
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest

from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces
from tests.ray_cluster import LocalCluster, cluster_env, ray_cli
from tests.servers import mlflow_server, moto_s3, s3_listing, s3_read

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

TRAIN = ["--model", "abm-trunk-tiny", "--image-size", "32", "--patience", "20", "--lr", "3e-3"]
BINARY = ["--attributes", "Smiling,Male", "--modalities", "real", "--image-size", "32", "--patience", "20"]


class Cluster:
    """The shared cluster: its nodes by role, the data every test reads."""

    def __init__(self, cluster: LocalCluster, work: Path):
        self.c, self.work = cluster, work
        self.cpu_node = cluster.add_node("cpu", num_cpus=1)
        self.gpu_node = cluster.add_node("gpu", num_cpus=1, num_gpus=1)
        self.prepared = work / "prepared"
        self.lost = None  # the node killed last

    def replace(self, node):
        """The replacement an autoscaler starts for a lost node: same resources, a new node."""
        gpus = 1 if node is self.gpu_node else 0
        new = self.c.add_node(f"{node.name}-r", num_cpus=1, num_gpus=gpus)
        if gpus:
            self.gpu_node = new
        else:
            self.cpu_node = new
        return new


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("multinode")
    with LocalCluster(cluster_env(work / "home")) as local:
        local.start_head(num_cpus=0)
        shared = Cluster(local, work)
        root = write_synthetic_celeba(work / "celeba", n=400, seed=3)
        # Three variants per training image. The node-loss runs take steps of 2 images: epochs of
        # 2 s or more, as long as the Train controller's poll interval (RAY_TRAIN_HEALTH_CHECK_
        # INTERVAL_S, 2 s), which registers each reported checkpoint: a node lost before the poll
        # redoes the epoch just finished as well as the one in progress; shorter epochs could lose
        # two finished ones, real epochs (minutes) at most one.
        local.run("python", "jobs/prepare.py", "--root", str(root), "--out", str(shared.prepared), "--size", "32",
                  "--augment", "3", "--num-actors", "1", "--cpus-per-actor", "0.5")
        yield shared


def test_check_nodes_finds_facrays_requirements_on_every_node_and_no_cuda_on_the_gpu_node(cluster):
    """`facray check-nodes` answers from each node itself. Here every node shares this machine's
    environment, so all requirements are met; the node that declares a GPU has no CUDA device,
    which is what it says, and the command exits 1."""
    job = cluster.c.submit("python", "jobs/check_nodes.py", "--timeout", "120")
    status, logs = cluster.c.wait(job, 300)
    lines = [line for line in logs.splitlines() if line.startswith("node ")]
    assert len(lines) == 3 and re.search("failed", status, re.IGNORECASE), f"{status}\n{logs[-3000:]}"
    assert sum(line.endswith(": ok") for line in lines) == 2, lines
    assert any("declares 1 GPU(s) but torch sees no CUDA device" in line for line in lines), lines
    assert "3 node(s) checked: 1 with problems" in logs


def _nodes_of_ranks(logs: str) -> dict[int, set[str]]:
    """rank -> the node ids its workers ran on (the line every worker prints as it starts)."""
    nodes: dict[int, set[str]] = {}
    for rank, node in re.findall(r"\[rank (\d+)\] node (\w+) ", logs):
        nodes.setdefault(int(rank), set()).add(node)
    return nodes


def _epoch_lines(logs: str) -> list[int]:
    return [int(e) for e in re.findall(r"\[rank 0\] epoch (\d+)/\d+: loss", logs)]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


def _mlflow_steps(run: Path, metric: str) -> list[int]:
    with sqlite3.connect(run / "mlflow.db") as db:
        return sorted(step for (step,) in db.execute("SELECT step FROM metrics WHERE key = ?", (metric,)))


def test_train_on_two_nodes_learns_like_one_worker(cluster):
    """DDP across two nodes (SPREAD): the same global batch as one worker, the same curve."""
    runs = {}
    for workers in (2, 1):
        runs[workers] = cluster.work / f"train_w{workers}"
        logs = cluster.c.run("python", "jobs/train.py", *TRAIN, "--prepared", str(cluster.prepared), "--epochs", "4",
                             "--seed", "1", "--num-workers", str(workers), "--batch-size", str(16 // workers),
                             "--placement", "spread", "--out", str(runs[workers]))
        nodes = _nodes_of_ranks(logs)
        assert sorted(nodes) == list(range(workers)), logs[-3000:]
        if workers == 2:
            assert nodes[0] != nodes[1], nodes  # one worker on each node
    curves = {n: [h["val_loss"] for h in _history(run)] for n, run in runs.items()}
    assert all(c[-1] < c[0] for c in curves.values()), curves  # both learn
    assert max(abs(a - b) for a, b in zip(curves[1], curves[2])) < 0.03, curves


def test_train_binary_and_a_sweep_on_two_nodes(cluster):
    """The binary jobs spread over a worker per node learn what one worker learns (each job is
    trained whole on one worker); a sweep runs two trials at once on the cluster."""
    tables = {}
    for workers in (2, 1):
        out = cluster.work / f"binary_w{workers}"
        logs = cluster.c.run("python", "jobs/train_binary.py", *BINARY, "--prepared", str(cluster.prepared),
                             "--epochs", "2", "--num-workers", str(workers), "--placement", "spread", "--out", str(out))
        if workers == 2:
            nodes = _nodes_of_ranks(logs)
            assert len(nodes) == 2 and nodes[0] != nodes[1], logs[-3000:]
        tables[workers] = pd.read_csv(out / "jobs_summary.csv").set_index("job").sort_index()
    for column in ("best_epoch", "val_accuracy", "test_accuracy"):
        pd.testing.assert_series_equal(tables[1][column], tables[2][column], atol=1e-6)

    logs = cluster.c.run("python", "jobs/sweep.py", "--smoke-test", "--out", str(cluster.work / "sweep"))
    results = pd.read_csv(cluster.work / "sweep" / "sweep_results.csv")
    assert len(results) >= 2 and "best trial" in logs, logs[-3000:]


def test_label_with_a_gpu_predict_actor_and_preprocess_actors_on_both_nodes(cluster):
    faces = write_unlabelled_faces(cluster.work / "faces", n=40, seed=2, sizes=(96,), formats=("png",))
    out = cluster.work / "labels.csv"
    job = cluster.c.submit("python", "jobs/label.py", "--images", str(cluster.work / "faces"), "--model",
                           str(cluster.work / "train_w2"), "--out", str(out), "--gpus", "1", "--preprocess-actors",
                           "2", "--batch-size", "8")
    status, logs = cluster.c.wait(job)
    assert re.search("succeeded", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    assert "labelling with 1 predict actor(s)" in logs and "fed by 2 preprocess actor(s)" in logs
    rows = pd.read_csv(out)
    assert len(rows) == len(faces) and rows.path.is_unique and rows.Smiling_prob.between(0, 1).all()
    # Ray's record of the job's actors (the dead ones too): the pools ran on both worker nodes, the
    # predict actor on the one with the GPU.
    nodes: dict[str, set[str]] = {}
    ray_job = cluster.c.jobs.get_job_info(job).job_id  # this job's actors, not an earlier job's
    for actor in _listed(cluster, "actors"):
        if "Actor)" in actor.get("class_name", "") and actor.get("job_id") == ray_job:  # MapWorker(MapBatches(...
            nodes.setdefault(actor["class_name"], set()).add(actor["node_id"])
    gpu_nodes = {n["node_id"] for n in _listed(cluster, "nodes") if n["resources_total"].get("GPU")
                 and n["state"] == "ALIVE"}
    assert next(ids for name, ids in nodes.items() if "PredictActor" in name) == gpu_nodes, nodes
    assert len(set().union(*nodes.values())) == 2, nodes


def _listed(cluster, what: str) -> list[dict]:
    """``ray list actors|nodes``: Ray's state API, as a user would ask it (dead actors included)."""
    out = ray_cli("list", what, "--address", cluster.c.address, "--detail", "--format", "json", "--limit", "10000",
                  env=cluster.c.env).stdout
    return json.loads(out[out.index("["):])


def test_runs_on_object_storage_with_no_folder_the_nodes_share(cluster):
    """The cloud setup: the nodes share only a bucket (an S3 server here). Data, runs, checkpoints
    and labels live there; each command's driver works in a local copy of its own (another
    FACRAY_STAGING per command, as if on another machine), so a command finds a run only
    through the bucket, and MLflow is a server. The multi-task run loses a worker at epoch 2 and resumes from the
    checkpoint on the bucket; the sweep's trials, on any node, write their run folders there."""
    bucket, work = "facray-runs", cluster.work / "object_storage"
    with moto_s3(bucket) as s3, mlflow_server(work / "mlflow") as tracking:
        def run(staging: str, *command: str) -> str:
            return cluster.c.run(*command, env_vars={**s3, "FACRAY_STAGING": str(work / staging)})

        root = write_synthetic_celeba(work / "celeba", n=120, seed=4)
        prepared = f"s3://{bucket}/prepared"
        run("driver-1", "python", "jobs/prepare.py", "--root", str(root), "--out", prepared, "--size", "32",
            "--augment", "1", "--num-actors", "1", "--cpus-per-actor", "0.5")
        logs = run("driver-1", "python", "jobs/train.py", *TRAIN, "--prepared", prepared, "--epochs", "3",
                   "--batch-size", "8", "--num-workers", "2", "--placement", "spread", "--fail-at-epoch", "2",
                   "--out", f"s3://{bucket}/runs/mt", "--tracking-uri", tracking)
        assert "resuming from the checkpoint after epoch 1" in logs and _epoch_lines(logs)[-1] == 3, logs[-3000:]
        listing = s3_listing(s3, bucket)
        for name in ("run.json", "metrics.json", "model/manifest.json", "mlflow_run_id", ".injected_failure"):
            assert f"{bucket}/runs/mt/{name}" in listing, name
        assert any("/runs/mt/ray_results/" in p and "/checkpoint_" in p for p in listing)
        assert not list(work.rglob("checkpoint_*")), "checkpoints go to the bucket, never a local copy"

        run("driver-1", "python", "jobs/train_binary.py", *BINARY, "--prepared", prepared, "--epochs", "1",
            "--num-workers", "2", "--placement", "spread", "--out", f"s3://{bucket}/runs/abm", "--tracking-uri", tracking)
        run("driver-2", "python", "jobs/combine.py", "--run", f"s3://{bucket}/runs/abm", "--tracking-uri", tracking)
        faces = write_unlabelled_faces(work / "faces", n=12, seed=6, sizes=(96,), formats=("png",))
        run("driver-3", "python", "jobs/label.py", "--images", str(work / "faces"), "--model",
            f"s3://{bucket}/runs/abm", "--out", f"s3://{bucket}/labels.csv", "--batch-size", "8")
        rows = pd.read_csv(s3_read(s3, f"{bucket}/labels.csv"))
        assert len(rows) == len(faces) and rows.Smiling_prob.between(0, 1).all() and rows.Male_prob.notna().all()
        assert f"{bucket}/runs/abm/combined/manifest.json" in s3_listing(s3, bucket)

        logs = run("driver-1", "python", "jobs/sweep.py", "--space", "tune_spaces.smoke_multitask", "--cpus-per-trial",
                   "0.5", "--max-concurrent", "2", "--out", f"s3://{bucket}/runs/sweep", "--tracking-uri", tracking,
                   f"prepared={prepared}", "model=abm-trunk-tiny", "image_size=32", "batch_size=16")
        listing = s3_listing(s3, f"{bucket}/runs/sweep")
        trials = {p.split("/trials/")[1].split("/")[0] for p in listing if "/trials/" in p}
        results = pd.read_csv(s3_read(s3, f"{bucket}/runs/sweep/sweep_results.csv"))
        assert len(results) == len(trials) >= 2 and "best trial" in logs, logs[-3000:]
        assert results.run_folder.str.startswith(f"s3://{bucket}/runs/sweep/trials/").all()
        assert any("/runs/sweep/tune/" in p for p in listing)


def _lose_a_node_while(cluster, job: str, until: str, replace: bool = True, checkpointed: Path | None = None):
    """Wait for ``until`` in the job's logs (and, given the run folder ``checkpointed``, for a
    checkpoint Ray Train has registered), then kill the CPU worker node; start its replacement."""
    status, logs = cluster.c.wait(job, 300, until=until)
    assert re.search(until, logs, re.MULTILINE), f"{status}\n{logs[-3000:]}"
    if checkpointed is not None:
        _wait_for_a_registered_checkpoint(checkpointed)
    assert not re.search(r"succeeded|failed|stopped", cluster.c.status(job), re.IGNORECASE), "ended before the kill"
    cluster.lost = cluster.cpu_node
    assert cluster.c.kill(cluster.lost) > 0
    if replace:
        time.sleep(3)
        cluster.replace(cluster.lost)
    return logs


def _wait_for_a_registered_checkpoint(run: Path, timeout: float = 120) -> None:
    """Until Ray Train's controller lists a checkpoint of the run (its snapshot file). A worker
    writes its checkpoint before the controller registers it, once every rank has reported; a
    node lost in between restarts the run from scratch, so a test that expects a resume waits.
    (Seen once: train-binary's epochs of 0.6 s, the node killed at the "epoch 2/8" line; the run
    restarted from epoch 0, two checkpoint folders of the first try on disk but not registered.)"""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for snapshot in (run / "ray_results").glob("*/checkpoint_manager_snapshot.json"):
            try:
                if json.loads(snapshot.read_text()).get("checkpoint_results"):
                    return
            except ValueError:  # being written
                pass
        time.sleep(0.2)
    pytest.fail(f"{run}: no checkpoint registered after {timeout:.0f} s")


def test_train_survives_a_lost_node(cluster):
    out = cluster.work / "train_lost"
    job = cluster.c.submit("python", "jobs/train.py", *TRAIN, "--prepared", str(cluster.prepared), "--epochs", "8",
                           "--batch-size", "2", "--num-workers", "2", "--placement", "spread", "--out", str(out))
    _lose_a_node_while(cluster, job, r"epoch 2/8: loss", checkpointed=out)
    status, logs = cluster.c.wait(job, 600)
    assert re.search("succeeded", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    resumed = [int(e) for e in re.findall(r"resuming from the checkpoint after epoch (\d+)", logs)]
    assert len(resumed) == 1 and resumed[0] >= 1, resumed
    epochs = _epoch_lines(logs)  # a finished epoch redone prints its line twice
    assert sorted(set(epochs)) == list(range(1, 9)) and len(epochs) - 8 <= 1, epochs  # at most one epoch redone
    assert len(_nodes_of_ranks(logs)[0] | _nodes_of_ranks(logs)[1]) >= 3  # the new node took a worker
    assert [h["epoch"] for h in _history(out)] == list(range(1, 9))
    assert _mlflow_steps(out, "val_loss") == list(range(1, 9))  # no step logged twice
    with sqlite3.connect(out / "mlflow.db") as db:
        assert db.execute("SELECT COUNT(*) FROM model_versions").fetchone()[0] == 1


def test_train_binary_survives_a_lost_node(cluster):
    out = cluster.work / "binary_lost"
    job = cluster.c.submit("python", "jobs/train_binary.py", *BINARY, "--prepared", str(cluster.prepared),
                           "--epochs", "20", "--num-workers", "2", "--placement", "spread", "--out", str(out))
    _lose_a_node_while(cluster, job, r"epoch 2/20", checkpointed=out)  # 20 epochs of ~0.6 s: time to kill
    status, logs = cluster.c.wait(job, 600)
    assert re.search("succeeded", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    assert "resuming from the checkpoint after epoch" in logs
    jobs = pd.read_csv(out / "jobs_summary.csv")
    assert sorted(jobs.attribute) == ["Male", "Smiling"] and jobs.test_accuracy.notna().all()


def test_label_survives_a_lost_node_every_input_once(cluster):
    faces = write_unlabelled_faces(cluster.work / "many", n=3000, seed=5, sizes=(96,), formats=("png",))
    out = cluster.work / "many.csv"
    job = cluster.c.submit("python", "jobs/label.py", "--images", str(cluster.work / "many"), "--model",
                           str(cluster.work / "train_w2"), "--out", str(out), "--crop", "full", "--batch-size", "16",
                           "--num-actors", "2", "--preprocess-actors", "2")
    _lose_a_node_while(cluster, job, r"^\s+(?!3000/)\d+/3000 images")
    status, logs = cluster.c.wait(job, 600)
    assert re.search("succeeded", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    rows = pd.read_csv(out)
    assert len(rows) == len(faces) and rows.path.is_unique and rows.error.isna().all()
    assert set(rows.path) == {str(p) for p in faces}


def test_without_a_replacement_node_train_and_label_stop_naming_what_is_missing(cluster):
    out = cluster.work / "train_unreplaced"
    command = ("python", "jobs/train.py", *TRAIN, "--prepared", str(cluster.prepared), "--epochs", "6",
               "--batch-size", "2", "--num-workers", "2", "--placement", "spread", "--node-wait", "20",
               "--out", str(out))
    job = cluster.c.submit(*command)
    _lose_a_node_while(cluster, job, r"epoch 2/6: loss", replace=False)
    status, logs = cluster.c.wait(job, 300)
    assert re.search("failed", status, re.IGNORECASE), f"{status}\n{logs[-4000:]}"
    assert re.search(r"facray: error: Ray Train waited 20 s \(--node-wait\) for 2 worker\(s\) of \{'CPU': 1.0\} "
                     r"\(SPREAD\).*live nodes: .*re-run the same command", logs), logs[-3000:]
    # The node comes back: the same command resumes and finishes.
    cluster.replace(cluster.lost)
    logs = cluster.c.run(*command)
    assert "resuming from the checkpoint after epoch" in logs and _epoch_lines(logs)[-1] == 6

    # Labelling whose only GPU node is lost: the predict pool has nowhere to go.
    out = cluster.work / "gpu_lost.csv"
    job = cluster.c.submit("python", "jobs/label.py", "--images", str(cluster.work / "many"), "--model",
                           str(cluster.work / "train_w2"), "--out", str(out), "--crop", "full", "--batch-size", "16",
                           "--gpus", "1", "--node-wait", "20")
    status, logs = cluster.c.wait(job, 300, until=r"^\s+(?!3000/)\d+/3000 images")
    cluster.c.kill(cluster.gpu_node)
    status, logs = cluster.c.wait(job, 300)
    if re.search("succeeded", status, re.IGNORECASE):  # it finished before the node went: nothing to check
        pytest.skip("labelling finished before the node was lost")
    assert re.search(r"facray: error: no labelled images for 20 s \(--node-wait\) after \d+/3000: the pools want "
                     r"1 predict actor\(s\) of 0.5 CPU \+ 1 GPU", logs), logs[-3000:]
    cluster.replace(cluster.gpu_node)
    logs = cluster.c.run("python", "jobs/label.py", "--images", str(cluster.work / "many"), "--model",
                         str(cluster.work / "train_w2"), "--out", str(out), "--crop", "full", "--batch-size", "16",
                         "--gpus", "1")
    assert re.search(r"3000 input image\(s\): [1-9]\d* already labelled", logs), logs[-3000:]
    rows = pd.read_csv(out)
    assert len(rows) == 3000 and rows.path.is_unique
