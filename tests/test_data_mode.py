"""--data auto: the sizes and the rule (pure; the nodes are described, never allocated)."""
from __future__ import annotations

import pytest

from facray.training.data_mode import (DECODE_HEADROOM, NODE_SHARE, Node, bytes_per_worker, choose_data_mode,
                                       row_bytes, workers_per_node)

GB = 1e9
PREPARED_180 = {"size": 180, "sketch_channels": 1, "mask_size": 0}
# Full CelebA, the README's recipe: 162,770 train images x 9 variants, 19,867 val, 19,962 test.
FULL_CELEBA = {"train": 162_770 * 9, "val": 19_867, "test": 19_962}


def test_row_bytes_count_the_decoded_pixels_each_worker_holds():
    image, sketch = 180 * 180 * 3, 180 * 180
    assert row_bytes(PREPARED_180, ("image",)) - row_bytes(PREPARED_180, ()) == image
    assert row_bytes(PREPARED_180, ("image", "sketch")) - row_bytes(PREPARED_180, ()) == image + sketch
    masked = {"size": 64, "mask_size": 16}
    assert row_bytes(masked, ("image", "masks")) - row_bytes(masked, ("image",)) == 40 * 16 * 16
    assert bytes_per_worker(PREPARED_180, {"train": 10, "val": 2, "test": 3}, ("image",)) == \
        15 * row_bytes(PREPARED_180, ("image",))


def test_full_celeba_at_180_px_with_sketches_streams_on_a_gpu_node():
    """The issue's case: ~190 GB of arrays per worker, four GPU workers on a 256 GB node."""
    per_worker = bytes_per_worker(PREPARED_180, FULL_CELEBA, ("image", "sketch"))
    assert 180 * GB < per_worker < 200 * GB
    node = Node(memory=180 * GB, cpus=32, gpus=4)  # Ray's memory resource: RAM less the object store
    mode, line = choose_data_mode("auto", per_worker, [node], 4, 4, 1)
    assert mode == "stream" and "4 worker(s) on a node" in line
    with pytest.raises(ValueError, match=r"--data memory does not fit: each worker loads 19\d\.\d\d GB"):
        choose_data_mode("memory", per_worker, [node], 4, 4, 1)


def test_memory_when_every_worker_on_the_node_fits_with_headroom():
    per_worker = int(GB)
    room = 4 * per_worker * DECODE_HEADROOM / NODE_SHARE  # exactly four workers' worth
    assert choose_data_mode("auto", per_worker, [Node(room, 8)], 4, 2)[0] == "memory"
    assert choose_data_mode("auto", per_worker, [Node(room * 0.99, 8)], 4, 2)[0] == "stream"
    # Workers spread over nodes: only those that can land on one node count against it.
    assert choose_data_mode("auto", per_worker, [Node(room / 2, 4), Node(room / 2, 4)], 4, 2)[0] == "memory"
    assert choose_data_mode("stream", per_worker, [Node(1, 1)], 4, 2)[0] == "stream"


def test_a_run_that_cannot_stream_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="needs --data memory; use --data stream, fewer workers"):
        choose_data_mode("auto", int(100 * GB), [Node(10 * GB, 8)], 1, 1,
                         memory_only="--val-split holdout needs --data memory")


def test_workers_per_node_follow_its_cpus_and_gpus():
    assert workers_per_node(8, 4, 0, Node(GB, 16)) == 4
    assert workers_per_node(8, 1, 1, Node(GB, 16, 2)) == 2
    assert workers_per_node(2, 1, 0, Node(GB, 16)) == 2
    assert workers_per_node(4, 1, 1, Node(GB, 16, 0)) == 0  # a head node without GPUs hosts none
    # ... and is not the node the rule checks.
    assert choose_data_mode("auto", int(GB), [Node(GB, 16, 0), Node(100 * GB, 16, 4)], 4, 1, 1)[0] == "memory"


def test_the_tightest_cgroup_limit_on_the_process_path_counts(tmp_path):
    from facray.preflight import cgroup_memory_limit
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    (root / "memory/jobs/42").mkdir(parents=True)
    (root / "memory/memory.limit_in_bytes").write_text("9223372036854771712\n")  # the root: unlimited
    (root / "memory/jobs/memory.limit_in_bytes").write_text(f"{8 * 2**30}\n")
    (root / "memory/jobs/42/memory.limit_in_bytes").write_text(f"{3 * 2**30}\n")
    proc.write_text("5:devices:/\n4:memory:/jobs/42\n0::/\n")
    assert cgroup_memory_limit(proc, root) == 3 * 2**30
    proc.write_text("4:memory:/\n")
    assert cgroup_memory_limit(proc, root) is None
    # cgroup v2: one hierarchy, memory.max ("max" = no limit).
    v2 = tmp_path / "v2"
    (v2 / "slurm/job7").mkdir(parents=True)
    (v2 / "slurm/memory.max").write_text("max\n")
    (v2 / "slurm/job7/memory.max").write_text("1073741824\n")
    proc.write_text("0::/slurm/job7\n")
    assert cgroup_memory_limit(proc, v2) == 2**30
    assert cgroup_memory_limit(tmp_path / "absent", v2) is None
