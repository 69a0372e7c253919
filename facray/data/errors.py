"""Errors for bad dataset input: each names the file (and line) and what is wrong."""
from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or malformed.

    ``problems`` holds one message per offending line or file, so callers and ``facray data
    check`` can show all of them rather than the first.
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        shown = self.problems[:10]
        more = len(self.problems) - len(shown)
        text = message
        if shown:
            text += "\n  " + "\n  ".join(shown)
        if more > 0:
            text += f"\n  ... and {more} more"
        super().__init__(text)


class OutputError(RuntimeError):
    """An output cannot be written (a full disk, no permission, an unreachable store); the message
    names the location and the problem."""


class OutputLockedError(RuntimeError):
    """Another run is writing the same output (e.g. two ``facray label`` runs into one file)."""


def where(path: str | Path, line: int | None = None) -> str:
    """``file:line`` for messages (line is 1-based, as an editor shows it)."""
    return f"{path}:{line}" if line is not None else str(path)
