"""Metadata tables into Ray Datasets (needs the local Ray session for the dataset)."""
from __future__ import annotations

import pandas as pd
import pytest

from facray.data.celeba import read_celeba
from facray.runners.datasets import metadata_blocks, metadata_dataset, rows_per_block

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_dataset_rows_carry_the_table(ray_session, synth_root):
    table = read_celeba(synth_root)
    rows = metadata_dataset(table, rows_per_block=32).to_pandas()
    assert len(rows) == 120 and sorted(rows.image_id) == sorted(table.image_id)
    by_id = rows.set_index("image_id")
    assert (by_id.loc[table.image_id, "Smiling"].to_numpy() == table.Smiling.to_numpy()).all()
    assert (by_id.loc[table.image_id, "path"].to_numpy() == table.path.to_numpy()).all()
    assert set(rows.split) <= {"train", "val", "test"}


def test_blocks_cover_the_table_in_order(synth_root):
    table = read_celeba(synth_root)
    blocks = metadata_blocks(table, rows_per_block=32)
    assert len(blocks) == 4 and max(map(len, blocks)) <= 32
    assert list(pd.concat(blocks, ignore_index=True).image_id) == list(table.image_id)


@pytest.mark.parametrize("rows,actors,most,expected", [
    (120, 2, 512, 15),       # small input: four blocks per actor
    (100_000, 2, 512, 512),  # large input: capped
    (3, 8, 512, 1),          # fewer rows than actors: one row per block
    (0, 1, 512, 1),
])
def test_rows_per_block(rows, actors, most, expected):
    assert rows_per_block(rows, actors, most) == expected
