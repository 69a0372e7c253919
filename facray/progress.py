"""Progress lines of long runs (a training epoch, a labelling run), in one style: how often they
come and how a duration reads. Pure Python, imported by torch-free processes."""
from __future__ import annotations

import os


def every_seconds(default: float) -> float:
    """Seconds between two progress lines: ``FACRAY_PROGRESS_SECONDS``, else the caller's default
    (a training epoch 30 s, a labelling run 10 s)."""
    return float(os.environ.get("FACRAY_PROGRESS_SECONDS", default))


def format_seconds(seconds: float) -> str:
    """``42s``, ``4m05s``, ``2h03m``; ``?`` for an unknown (infinite) duration."""
    if seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
