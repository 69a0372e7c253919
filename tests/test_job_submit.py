"""``ray job submit`` end to end: a local head on 127.0.0.1, jobs/label.py --smoke-test, the CSV."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from tests.ray_cluster import LocalCluster, cluster_env

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]  # ~110 s: a Ray head


def test_ray_job_submit_label_smoke_test(tmp_path):
    # Token auth stays on, as on a real cluster, with a token made as the README says (cluster_env).
    # Every port is a free one, not Ray's defaults: another Ray on this machine (a user's, a CI
    # job's) may hold them, and the dashboard agent then fails to start and no job can be submitted.
    out = tmp_path / "labels.csv"
    with LocalCluster(cluster_env(tmp_path / "home")) as cluster:
        cluster.start_head(num_cpus=2)
        logs = cluster.run("python", "jobs/label.py", "--smoke-test", "--out", str(out))
        assert "labelled 8 new image(s)" in logs
        # Training under `ray job submit`: every epoch line reaches the job log once, though the
        # epochs of the smoke run come well within Ray's 5 s deduplication window; Ray Train's
        # per-report internals do not (they are --verbose's).
        logs = cluster.run("python", "jobs/train.py", "--smoke-test", "--out", str(tmp_path / "train"))
        for epoch in (1, 2):
            assert len(re.findall(rf"\[rank 0\] epoch {epoch}/2: loss", logs)) == 1, logs[-3000:]
        assert "Checkpoint successfully created" not in logs and "Reporting training result" not in logs
    rows = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert len(rows) == 8 and rows.path.is_unique
    assert rows.error.notna().sum() == 2 and rows.loc[rows.error.isna(), "Male_prob"].between(0, 1).all()
