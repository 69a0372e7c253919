"""Progress inside an epoch: plain lines at a bounded rate, so a long epoch (minutes on a laptop,
hours at full CelebA scale) says how far it is on a terminal and in ``ray job logs`` alike. Pure
Python; wraps any iterable of batches."""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

from facray.progress import every_seconds, format_seconds

# Seconds between two progress lines of one epoch (FACRAY_PROGRESS_SECONDS overrides): a line
# every 30 s is 120 lines in an hour-long epoch, few enough to read in a job log. format_seconds
# (facray.progress) is imported here for the callers that know it from this module.
DEFAULT_EVERY_S = 30.0


def with_progress(batches: Iterable[dict], epoch: int, epochs: int, total: int | None = None, rank: int = 0,
                  every_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                  out: Callable[..., None] = print) -> Iterator[dict]:
    """Yield ``batches`` unchanged; every ``every_s`` seconds print
    ``[rank 0] epoch 3/10: 1200/5000 batches, 850 img/s, ETA 4m30s`` (``total``: batches in the
    epoch, when known; images are counted from each batch's ``labels``). The line starts as
    :data:`facray.runners.runtime.PROGRESS_LINE_REGEX` says, so Ray never folds it away."""
    every_s = every_seconds(DEFAULT_EVERY_S) if every_s is None else every_s
    start = last = clock()
    images = 0
    for done, batch in enumerate(batches, 1):
        yield batch
        images += len(batch["labels"])
        now = clock()
        if now - last >= every_s and (total is None or done < total):
            last = now
            elapsed = max(now - start, 1e-9)
            eta = f", ETA {format_seconds((total - done) * elapsed / done)}" if total else ""
            rate = images / elapsed
            out(f"[rank {rank}] epoch {epoch}/{epochs}: {done}{f'/{total}' if total else ''} batches, "
                f"{rate:.{1 if rate < 10 else 0}f} img/s{eta}", flush=True)
