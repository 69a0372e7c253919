"""The command line: choices checked where they are parsed, clear refusals, Ctrl-C without a traceback."""
from __future__ import annotations

import pytest

from facray import cli

from conftest import forbid_ray_start


@pytest.mark.parametrize("argv, allowed", [
    (["train-binary", "--mode", "fussed"], "fused, separate"),
    (["train-binary", "data=strem"], "auto, memory, stream"),
    (["train-binary", "--stack", "grouped-ish"], "auto, grouped, loop"),
    (["prepare", "--root", "x", "--crop", "detec"], "auto, landmarks, bbox, aligned, template, detect, full"),
    (["label", "--model", "m", "--format", "xlsx"], "csv, parquet"),
])
def test_a_typo_in_a_choice_fails_at_once_with_the_allowed_values(argv, allowed, capsys, monkeypatch):
    forbid_ray_start(monkeypatch)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("facray: error: ") and f"is not one of: {allowed}" in err


@pytest.mark.parametrize("argv", [
    ["train-binary", "--smoke-test", "--epochs", "50"],
    ["train-binary", "--smoke-test", "batch_size=8"],
    ["label", "--smoke-test", "--num-actors", "3"],
])
def test_smoke_test_refuses_the_settings_it_would_override(argv, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--smoke-test sets" in err and "itself" in err


def test_ctrl_c_is_a_message_not_a_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setitem(cli.COMMANDS, "combine", (cli.COMMANDS["combine"][0], cli.COMMANDS["combine"][1], interrupted))
    import signal
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["combine", "--run", "x"]) == 130
    err = capsys.readouterr().err
    assert "facray: interrupted" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_evaluate_with_a_model_says_what_to_score_it_on(capsys):
    """``--model`` alone would fall back to the default ``--run``'s report: refused, naming both ways."""
    assert cli.main(["evaluate", "--model", "runs/somewhere"]) == 2
    assert "--model needs --dataset DIR" in capsys.readouterr().err
