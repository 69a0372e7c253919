"""Shared benchmark helpers (measurement only; nothing here is used by facray itself)."""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def resident_memory(pids: Iterable[int | str] | None = None, field: str = "RssAnon") -> dict[int, tuple[str, int]]:
    """``{pid: (command line, bytes)}`` for ``pids`` (default: every process): one field of
    ``/proc/PID/status`` in bytes and the command line, arguments joined by spaces (Ray titles its
    workers ``ray::RayTrainWorker...``, ``ray::LabelActor...``). ``RssAnon`` (the default) is the
    anonymous resident memory: no shared libraries, no object-store pages, what a memory cap cannot
    reclaim; ``VmRSS`` is all of it. A process that ends while being read is left out."""
    found = {}
    for pid in pids if pids is not None else (int(e) for e in os.listdir("/proc") if e.isdigit()):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        value = next((line.split()[1] for line in status.splitlines() if line.startswith(field + ":")), None)
        if value is not None:
            found[int(pid)] = (title.strip(), int(value) * 1024)
    return found


class TreeMemory:
    """Peak memory of this process and all its descendants (Ray's raylet and workers included),
    three ways, each as growth over the value on entry:

    - ``rss``: the sum of RSS. Counts a shared page once per process mapping it, so every Ray
      worker that imports torch counts torch's libraries again: an upper bound.
    - ``pss``: the sum of PSS (``/proc/PID/smaps_rollup``): shared pages split between the
      processes sharing them; what the tree costs the machine.
    - ``system``: MemTotal - MemAvailable of the whole machine (``/proc/meminfo``), which also
      sees Ray's object store (shared memory) and anything else running.
    """

    KINDS = ("rss", "pss", "system")

    def __init__(self, interval: float = 0.5):
        self.interval, self._stop = interval, threading.Event()

    @staticmethod
    def _tree() -> set[int]:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    pass
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            kids = [c for c, p in parents.items() if p == pid and c not in tree]
            tree.update(kids)
            frontier += kids
        return tree

    @staticmethod
    def _name(pid: int) -> str:
        """A process's title (Ray names its workers ``ray::LabelActor`` and the like)."""
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
        if not words or not words[0]:
            return "?"
        name = os.path.basename(words[0].decode(errors="replace").split()[0])
        if name.startswith("python"):  # Ray's helper processes: name them by script or module
            script = next((w.decode(errors="replace") for w in words[1:] if w and not w.startswith(b"-")), "")
            name = "/".join(Path(script).parts[-2:]) or name
        return name

    @classmethod
    def current(cls) -> dict[str, int]:
        """Bytes now: rss and pss summed over this process tree, system-wide used memory; and
        ``by_name``: pss per process title (the driver is ``driver``)."""
        rss = pss = 0
        by_name: dict[str, int] = {}
        for pid in cls._tree():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    rss += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    mine = next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
                pss += mine
                name = "driver" if pid == os.getpid() else cls._name(pid)
                by_name[name] = by_name.get(name, 0) + mine
            except (OSError, StopIteration):
                pass
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":")
                info[key] = int(value.split()[0]) * 1024
        return {"rss": rss, "pss": pss, "system": info["MemTotal"] - info["MemAvailable"], "by_name": by_name}

    def __enter__(self):
        self.baseline = self.current()
        self.peak = dict(self.baseline)
        self.peak_by_name = self.baseline.pop("by_name")  # pss per title when the tree's pss peaked
        del self.peak["by_name"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        now = self.current()
        if now["pss"] > self.peak["pss"]:
            self.peak_by_name = now["by_name"]
        for k in self.KINDS:
            self.peak[k] = max(self.peak[k], now[k])

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def growth(self, kind: str) -> float:
        """Peak growth in GB."""
        return (self.peak[kind] - self.baseline[kind]) / 1e9

    @property
    def growth_gb(self) -> float:
        return self.growth("rss")

    def format(self) -> str:
        return "memory growth " + ", ".join(f"{k} {self.growth(k):.2f} GB" for k in self.KINDS)

    def format_by_name(self, top: int = 14) -> str:
        """PSS per process title at the tree's peak (absolute, not growth), largest first."""
        items = sorted(self.peak_by_name.items(), key=lambda kv: -kv[1])[:top]
        return "pss at peak by process: " + ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in items)
