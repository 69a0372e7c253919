"""The Ray Dataset builder joins metadata with image bytes (needs the local Ray session)."""
from __future__ import annotations

import pytest

from facray.data.celeba import read_celeba

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_dataset_rows_carry_labels_and_bytes(ray_session, synth_root):
    from facray.data.datasets import build_image_dataset
    table = read_celeba(synth_root)
    rows = build_image_dataset(table, rows_per_block=32).to_pandas()
    assert len(rows) == 120 and sorted(rows.image_id) == sorted(table.image_id)
    by_id = rows.set_index("image_id")
    for image_id, path in zip(table.image_id[:5], table.path[:5]):
        with open(path, "rb") as f:
            assert by_id.loc[image_id, "image_bytes"] == f.read()
    assert (by_id.loc[table.image_id, "Smiling"].to_numpy() == table.Smiling.to_numpy()).all()
    assert set(rows.split) <= {"train", "val", "test"} and (rows.error == "").all()
