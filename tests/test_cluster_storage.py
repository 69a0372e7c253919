"""The cluster path for real: data on an S3-compatible server and an MLflow tracking server, both
started by the test on 127.0.0.1 (no other network).

One driver process (as under `ray job submit`) prepares into s3://, trains the binary jobs and a
multi-task model from s3://, registers both in the MLflow server, and labels images read from s3:// into a CSV on s3://
through `models:/...@newest`. It runs in a subprocess so the Ray it starts sees the S3 settings.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from tests.servers import mlflow_server as mlflow_server_at
from tests.servers import moto_s3, s3_listing, s3_read

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]  # ~90 s: S3 + MLflow server
REPO = Path(__file__).resolve().parents[1]
BUCKET = "facray-test"


@pytest.fixture
def s3_env():
    with moto_s3(BUCKET) as env:
        yield env


@pytest.fixture
def mlflow_server(tmp_path):
    with mlflow_server_at(tmp_path / "mlflow_server") as uri:
        yield uri, tmp_path / "mlflow_server"


DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.training.configs import BinaryConfig
    from facray.runners.train import train
    from facray.training.combine import CombineConfig, combine
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    from facray import storage

    work, bucket, tracking = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    root = write_synthetic_celeba(work / "celeba", n=60, seed=3)
    print(prepare(PrepareConfig(root=str(root), out=f"s3://{bucket}/prepared", size=32, augment=1,
                                num_actors=1, batch_size=16)).format())
    table = train(BinaryConfig(
        prepared=f"s3://{bucket}/prepared", out=str(work / "run"), attributes="Smiling", epochs=1,
        batch_size=16, cpus_per_worker=0.5, tracking_uri=tracking))
    print(table.to_string())
    from facray.training.configs import MultitaskConfig
    from facray.runners.train import train
    record = train(MultitaskConfig(model="abm-trunk-tiny", prepared=f"s3://{bucket}/prepared",
                                         out=str(work / "mt"), image_size=32, epochs=1, batch_size=16,
                                         cpus_per_worker=0.5, tracking_uri=tracking))
    print("multitask registered", record["registered"])
    _, uri = combine(CombineConfig(run=str(work / "run"), tracking_uri=tracking))
    print("registered", uri)
    for p in write_unlabelled_faces(work / "images", n=3, seed=1, sizes=(128,)):
        storage.write_bytes(f"s3://{bucket}/images/{p.name}", p.read_bytes())
    storage.write_bytes(f"s3://{bucket}/images/broken.jpg", b"not a jpeg")
    summary = label_images(LabelConfig(images=f"s3://{bucket}/images", model=uri, tracking_uri=tracking,
                                       out=f"s3://{bucket}/out/labels.csv", batch_size=4, num_actors=1, preprocess_actors=1))
    print(summary.format())
''')


def test_prepare_train_register_label_through_s3_and_an_mlflow_server(s3_env, mlflow_server, tmp_path):
    tracking, server_root = mlflow_server
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}, **s3_env,
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "work"), BUCKET, tracking], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "registered models:/facray-abm-combined@newest" in done.stdout
    assert "multitask registered models:/facray-abm-trunk-tiny@newest" in done.stdout
    assert "labelled 4 new image(s)" in done.stdout

    # What landed where: shards and metadata on S3, the model in the server's artifact folder.
    listing = s3_listing(s3_env, BUCKET)
    assert f"{BUCKET}/prepared/prepared.json" in listing
    assert any(p.startswith(f"{BUCKET}/prepared/shards-") and p.endswith(".parquet") for p in listing)
    assert list((server_root / "artifacts").rglob("manifest.json")), "model artifacts not on the server"
    rows = pd.read_csv(s3_read(s3_env, f"{BUCKET}/out/labels.csv"), keep_default_na=False, na_values=[""])
    assert len(rows) == 4 and rows.path.str.startswith(f"s3://{BUCKET}/images/").all()
    broken = rows[rows.path.str.endswith("broken.jpg")].iloc[0]
    assert "not an image" in broken.error and pd.isna(broken.Smiling_prob)
    ok = rows[rows.error.isna()]
    assert len(ok) == 3 and ok.Smiling_prob.between(0, 1).all() and ok.Male_prob.isna().all()
    assert not any(p.startswith(f"{BUCKET}/out/labels.csv.parts") for p in listing)
