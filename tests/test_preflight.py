"""What a run depends on is checked on the driver before Ray starts: each failure one line naming
the thing and the fix, within seconds (the defects issue's Kind 3 and 5)."""
from __future__ import annotations

import os
import pickle
import time
import zipfile

import pytest

from facray.cli import main
from facray.config import absolute_location, resolve_config
from facray.labelling.config import LabelConfig
from facray.preflight import PreflightError, check_generator_file, check_tracking_store, check_writable
from facray.training.configs import BinaryConfig, MultitaskConfig


def test_deleted_experiment_is_refused_naming_it_and_the_way_out(tmp_path, prepared_small, capsys):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    (tmp_path / "store").mkdir()
    client = mlflow.MlflowClient(uri)
    client.delete_experiment(client.create_experiment("facray-abm"))
    with pytest.raises(PreflightError, match=r"experiment 'facray-abm' in .* is deleted; restore it .*"
                                             r"mlflow experiments restore --experiment-id \d+.* or pass --experiment"):
        check_tracking_store(uri, "facray-abm")
    check_tracking_store(uri, "another-one")  # absent is fine: the run creates it
    # Through the command, before any worker starts: exit 2, one line, no jobs trained.
    start = time.monotonic()
    code = main(["train-binary", "--prepared", str(prepared_small), "--out", str(tmp_path / "run"),
                 "--attributes", "Smiling", "--modalities", "real", "--epochs", "1", "--tracking-uri", uri])
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("facray:")]
    assert code == 2 and len(ours) == 1 and "is deleted" in ours[0] and "Traceback" not in err
    assert not list((tmp_path / "run").glob("jobs/*/model.pt")) and time.monotonic() - start < 60


def test_unreachable_tracking_server_is_refused_within_seconds():
    start = time.monotonic()
    with pytest.raises(PreflightError, match=r"MLflow tracking store http://127.0.0.1:9: cannot use it "
                                             r"\(.*(refused|Errno).*\); start or fix it"):
        check_tracking_store("http://127.0.0.1:9", "facray-multitask")
    assert time.monotonic() - start < 30  # MLflow's own retries took 291 s


def test_generator_must_be_torchscript_checked_without_running_anything(tmp_path):
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"z": 1}))
    with pytest.raises(PreflightError, match=r"raw.pkl: not a TorchScript file .*torch.jit.script\(G\).save"):
        check_generator_file(str(raw))
    saved = tmp_path / "checkpoint.pt"  # what torch.save writes: a zip with data.pkl, no code/
    with zipfile.ZipFile(saved, "w") as z:
        z.writestr("checkpoint/data.pkl", pickle.dumps({"z": 1}))
    with pytest.raises(PreflightError, match=r"checkpoint.pt: a torch.save checkpoint, not a TorchScript module"):
        check_generator_file(str(saved))
    with pytest.raises(PreflightError, match="generator file not found"):
        check_generator_file(str(tmp_path / "missing.pt"))
    scripted = tmp_path / "gen.pt"
    with zipfile.ZipFile(scripted, "w") as z:
        z.writestr("gen/code/__torch__/G.py", "")
        z.writestr("gen/data.pkl", b"")
    check_generator_file(str(scripted))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_unwritable_output_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(PreflightError, match=r"ro: cannot write there"):
        check_writable(str(folder))


def test_output_on_a_file_is_refused_and_a_good_folder_keeps_no_probe(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(PreflightError, match=r"a_file: cannot write there"):
        check_writable(str(tmp_path / "a_file"))
    check_writable(str(tmp_path / "new" / "folder"))
    assert os.listdir(tmp_path / "new" / "folder") == []


def test_label_refuses_a_pickle_generator_before_ray(tmp_path, capsys):
    raw = tmp_path / "g.pt"
    raw.write_bytes(pickle.dumps([1, 2]))
    start = time.monotonic()
    code = main(["label", "--generator", str(raw), "--num", "3", "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and "not a TorchScript file" in err and time.monotonic() - start < 20


def test_relative_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(MultitaskConfig, overrides={"prepared": "prepared", "out": "runs/x",
                                                  "tracking_uri": "sqlite:///store/mlflow.db"})
    assert cfg.prepared == str(tmp_path / "prepared") and cfg.out == str(tmp_path / "runs" / "x")
    assert cfg.tracking_uri == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert cfg.model == "abm-trunk"  # a model name is not a path
    binary = resolve_config(BinaryConfig, overrides={"prepared": "s3://bucket/prepared"})
    assert binary.prepared == "s3://bucket/prepared"
    label = resolve_config(LabelConfig, overrides={"images": "to_label/**/*.png", "model": "models:/m@newest"})
    assert label.images == str(tmp_path / "to_label" / "**" / "*.png") and label.model == "models:/m@newest"
    assert absolute_location("~/x") == os.path.expanduser("~/x")


def test_a_models_uri_without_a_store_is_refused_and_creates_no_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "faces").mkdir()
    args = ["label", "--images", "faces", "--model", "models:/facray-abm-trunk@newest", "--out", "l.csv"]
    assert main(args) == 2
    assert "needs the store that registered it" in capsys.readouterr().err
    assert main([*args, "--tracking-uri", "sqlite:///nowhere/mlflow.db"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.glob("*.lock"))


def test_an_unreachable_object_store_output_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    start = time.monotonic()
    with pytest.raises(PreflightError, match=r"^s3://facray-no-bucket/out: cannot write there \(.*\); check"):
        check_writable("s3://facray-no-bucket/out")
    assert time.monotonic() - start < 60


def test_a_failed_write_names_the_location_and_leaves_no_temporary_file(tmp_path):
    from facray.data.errors import OutputError
    from facray.labelling.output import _write_whole
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(OutputError, match=r"blocker/labels.csv: cannot write"):
        _write_whole(str(tmp_path / "blocker" / "labels.csv"), b"x")
    _write_whole(str(tmp_path / "ok" / "labels.csv"), b"x")
    assert os.listdir(tmp_path / "ok") == ["labels.csv"]


def test_a_second_demo_reuses_the_prepared_data_of_the_first(prepared_small):
    """`make demo` twice: the second run must not prepare anew (its runs would refuse the new
    shard version); it reuses a folder prepared with exactly its settings, and only those."""
    import dataclasses

    import yaml

    from facray.data.pipeline import PrepareConfig
    from facray.demo import _prepared_with
    settings = yaml.safe_load((prepared_small / "config.yaml").read_text())
    cfg = PrepareConfig(**settings)
    assert _prepared_with(cfg)
    assert not _prepared_with(dataclasses.replace(cfg, size=cfg.size + 16))
    assert not _prepared_with(dataclasses.replace(cfg, out=str(prepared_small.parent / "elsewhere")))


def test_a_run_folder_a_job_submit_would_upload_is_noted(tmp_path, monkeypatch, capsys):
    """Inside a git work tree, an output that .gitignore does not leave out gets one note (a
    `ray job submit --working-dir .` from there would upload it); an ignored one, none."""
    import subprocess
    from facray.preflight import check_writable
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    monkeypatch.chdir(tmp_path)
    check_writable(str(tmp_path / "runs" / "abm"))
    assert capsys.readouterr().out == ""
    check_writable(str(tmp_path / "results" / "abm"))
    out = capsys.readouterr().out
    assert "note: results/abm is inside" in out and "add results/ to .gitignore or .rayignore" in out


def test_a_store_that_just_passed_is_not_asked_again(tmp_path, monkeypatch):
    """A command checks its store before Ray starts and again where it opens its MLflow run: the
    second asks nothing within a minute (each ask can take up to 10 s on a slow server)."""
    import mlflow
    import facray.preflight as preflight
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    asked = []
    real = mlflow.MlflowClient
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: asked.append(a) or real(*a, **k))
    check_tracking_store(uri, "facray-abm")
    check_tracking_store(uri, "facray-abm")
    assert len(asked) == 1
    monkeypatch.setattr(preflight, "RECHECK_AFTER_S", 0.0)
    check_tracking_store(uri, "facray-abm")
    assert len(asked) == 2
