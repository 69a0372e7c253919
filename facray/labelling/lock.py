"""One ``facray label`` run per output at a time."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import tempfile
from pathlib import Path

from facray import storage
from facray.data.errors import OutputLockedError


@contextlib.contextmanager
def output_lock(out: str):
    """Hold an exclusive lock on ``out`` for the whole run, or refuse at once.

    ``flock`` on ``<out>.lock`` (local outputs; the kernel drops it when the process dies, so a
    killed run never leaves a stale lock; a run that ends, refused or not, removes the file). An object store has no locks: a URI output is locked
    on this machine, where every ``ray job submit`` driver of the cluster runs (the head).
    """
    if storage.is_uri(out):
        folder = Path(tempfile.gettempdir()) / "facray-label-locks"
        folder.mkdir(exist_ok=True)
        lock_file = folder / (hashlib.sha256(out.encode()).hexdigest()[:24] + ".lock")
    else:
        lock_file = Path(out + ".lock")
    while True:
        handle = open(lock_file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise OutputLockedError(f"{out}: another facray label run is writing it ({holder}, lock {lock_file}); "
                                    "wait for it or choose another --out") from None
        # The previous holder removes the file as it finishes: if it did so between our open and
        # our lock, we hold a lock on a file nobody else will open; take the new one instead.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(lock_file).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield
    finally:
        lock_file.unlink(missing_ok=True)  # while still held: no lock file outlives its run
        handle.close()  # releases the lock
