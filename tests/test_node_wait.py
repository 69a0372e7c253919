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


def test_a_caller_that_stops_early_releases_the_source():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield 1
        finally:
            closed.set()
    for _ in stop_if_stalled(endless(), 5, lambda: "stalled"):
        break  # the caller's own error or Ctrl-C ends the loop the same way
    assert closed.wait(5)


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


@pytest.mark.parametrize("wait", ["0", "inf", "1e9"])
@pytest.mark.parametrize("command", [["label", "--images", "x", "--model", "y"], ["train", "--prepared", "x"]])
def test_a_node_wait_out_of_range_is_refused_before_ray(command, wait, tmp_path, capsys, monkeypatch):
    forbid_ray_start(monkeypatch)
    assert main([*command, "--out", str(tmp_path / "o"), "--node-wait", wait]) == 2
    assert f"--node-wait {float(wait):g}: expected seconds above 0 and at most 86400" in capsys.readouterr().err


def test_placement_and_node_wait_leave_the_run_and_its_checkpoints_alone():
    from facray.runners.train import scaling
    from facray.training.configs import CHECKPOINT_NEUTRAL_KEYS
    cfg = MultitaskConfig(placement="spread", cpus_per_worker=0.5)
    assert scaling(cfg, 2).placement_strategy == "SPREAD" and scaling(MultitaskConfig(), 1).placement_strategy == "PACK"
    assert {"placement", "node_wait"} <= CHECKPOINT_NEUTRAL_KEYS


def _state(name: str):
    return type(name, (), {})()


def test_each_wait_for_resources_is_bounded_and_running_resets_it(monkeypatch):
    """The controller callback counts one wait at a time: a run that got its workers back starts
    afresh (a long run on spot instances survives many lost nodes), one wait over the bound stops it."""
    from facray.runners import node_wait
    clock = [0.0]
    monkeypatch.setattr(node_wait.time, "monotonic", lambda: clock[0])
    guard = node_wait.callback(20)[0]
    for _ in range(3):  # three lost nodes, each replaced within 15 s
        guard.after_controller_state_update(_state("RunningState"), _state("RestartingState"))
        clock[0] += 15
        guard.after_controller_state_update(_state("RestartingState"), _state("SchedulingState"))
        guard.after_controller_state_update(_state("SchedulingState"), _state("RunningState"))
        clock[0] += 600
    guard.after_controller_state_update(_state("RunningState"), _state("RestartingState"))
    clock[0] += 21
    with pytest.raises(node_wait.NodeWaitExceeded, match="21 s without the resources"):
        guard.after_controller_state_update(_state("RestartingState"), _state("SchedulingState"))
    assert node_wait.callback(None) == []
