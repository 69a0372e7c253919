"""--node-wait and --placement without a cluster: the stall guard around Ray Data's iterator, the
settings checked before Ray starts, and the placement Ray Train gets. (The lost nodes themselves:
tests/test_multinode.py.)"""
from __future__ import annotations

import threading
import time

import pytest
from conftest import forbid_ray_start

from facray.cli import main
from facray.runners.runtime import ClusterTooSmall, stop_if_stalled
from facray.training.configs import MultitaskConfig


def _stalls_after(n: int, release: threading.Event):
    yield from range(n)
    release.wait(30)  # Ray Data waiting for an actor no node can host


def test_an_iterator_that_stops_delivering_raises_with_the_callers_message():
    release = threading.Event()
    got = []
    start = time.monotonic()
    with pytest.raises(ClusterTooSmall, match="no rows for 0.3 s after 3"):
        for item in stop_if_stalled(_stalls_after(3, release), 0.3, lambda: f"no rows for 0.3 s after {len(got)}"):
            got.append(item)
    release.set()
    assert got == [0, 1, 2] and time.monotonic() - start < 10


def test_a_slow_but_moving_iterator_and_its_errors_pass_through():
    def slow():
        for i in range(4):
            time.sleep(0.1)
            yield i
    assert list(stop_if_stalled(slow(), 0.5, lambda: "stalled")) == [0, 1, 2, 3]

    def broken():
        yield 1
        raise OSError("disk gone")
    with pytest.raises(OSError, match="disk gone"):
        list(stop_if_stalled(broken(), 5, lambda: "stalled"))


@pytest.mark.parametrize("command", [["label", "--images", "x", "--model", "y"], ["train", "--prepared", "x"]])
def test_a_node_wait_of_zero_is_refused_before_ray(command, tmp_path, capsys, monkeypatch):
    forbid_ray_start(monkeypatch)
    assert main([*command, "--out", str(tmp_path / "o"), "--node-wait", "0"]) == 2
    assert "--node-wait 0: expected a number of seconds above 0" in capsys.readouterr().err


def test_placement_and_node_wait_leave_the_run_and_its_checkpoints_alone():
    from facray.runners.train import scaling
    from facray.training.configs import CHECKPOINT_NEUTRAL_KEYS
    cfg = MultitaskConfig(placement="spread", cpus_per_worker=0.5)
    assert scaling(cfg, 2).placement_strategy == "SPREAD" and scaling(MultitaskConfig(), 1).placement_strategy == "PACK"
    assert {"placement", "node_wait"} <= CHECKPOINT_NEUTRAL_KEYS
