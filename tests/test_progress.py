"""Progress lines inside an epoch (facray.training.progress): bounded rate, counts, ETA."""
from __future__ import annotations

import re

import numpy as np

from facray.runners.runtime import PROGRESS_LINE_REGEX
from facray.training.progress import format_seconds, with_progress


def test_progress_lines_come_at_a_bounded_rate_with_counts_rate_and_eta():
    """10 batches of 8 images, one every 4 s of a fake clock, a line every 10 s at most: lines
    after batches 3, 6 and 9 (none at the last batch: the epoch line follows), batches unchanged."""
    ticks = iter(np.arange(0, 100, 4.0))
    lines = []
    batches = [{"labels": np.zeros((8, 40)), "i": i} for i in range(10)]
    got = list(with_progress(batches, epoch=3, epochs=5, total=10, every_s=10, clock=lambda: next(ticks),
                             out=lambda line, flush: lines.append(line)))
    assert [b["i"] for b in got] == list(range(10))
    assert lines == ["[rank 0] epoch 3/5: 3/10 batches, 2.0 img/s, ETA 28s",
                     "[rank 0] epoch 3/5: 6/10 batches, 2.0 img/s, ETA 16s",
                     "[rank 0] epoch 3/5: 9/10 batches, 2.0 img/s, ETA 4s"]
    assert all(re.match(PROGRESS_LINE_REGEX, line) for line in lines)  # Ray never folds them


def test_progress_without_a_known_total_has_no_eta():
    ticks = iter(range(0, 100, 20))
    lines = []
    list(with_progress([{"labels": [0] * 4}] * 3, 1, 1, None, every_s=10, clock=lambda: next(ticks),
                       out=lambda line, flush: lines.append(line)))
    assert lines == ["[rank 0] epoch 1/1: 1 batches, 0.2 img/s", "[rank 0] epoch 1/1: 2 batches, 0.2 img/s",
                     "[rank 0] epoch 1/1: 3 batches, 0.2 img/s"]


def test_format_seconds():
    assert [format_seconds(s) for s in (42, 245, 7380)] == ["42s", "4m05s", "2h03m"]
