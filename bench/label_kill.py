"""What a killed `facray label` keeps, and what it leaves running.

Runs the command as a user would (a subprocess with its own local Ray) on N images: once to the
end, noting when the first part file appears and how many parts the run writes; once killed with
SIGKILL at half the clean run's time, counting the rows kept in parts and the Ray processes still
alive 8 s later; then the same command again, which must label only the rest.

    python bench/label_kill.py [--n 1200] [--images ../shared/data/stylegan_sample]

The images are the folder's files repeated to N (copies); the predictor is the untrained smoke model
(plumbing: its outputs mean nothing, its cost is a real 40-model ABM stack's); YuNet crops.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "stylegan_sample"


def _parts(out: Path) -> list[Path]:
    return sorted(Path(str(out) + ".parts").glob("*/*.parquet"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1200)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    args = p.parse_args()
    if not args.images.is_dir():
        sys.exit(f"{args.images}: no such folder (give --images)")
    from facray.testing import smoke_model

    work = Path(tempfile.mkdtemp(prefix="facray-label-kill-"))
    source = sorted(f for f in args.images.iterdir() if f.is_file())
    images = work / "images"
    images.mkdir()
    for i in range(args.n):
        shutil.copy(source[i % len(source)], images / f"{i:05d}{source[i % len(source)].suffix}")
    model = smoke_model(work / "model", crop_size=64)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "facray.cli", "label", "--images", str(images), "--model", str(model),
                "--out", str(out)]

    out = work / "clean.csv"
    start, first, seen = time.monotonic(), None, set()
    run = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while run.poll() is None:
        found = set(_parts(out))
        if found and first is None:
            first = time.monotonic() - start
        seen |= found
        time.sleep(0.2)
    clean = time.monotonic() - start
    print(f"clean run: {clean:.1f} s for {args.n} images; first part file at {first:.1f} s "
          f"({first / clean:.0%} of the run); {len(seen)} part files")

    out = work / "killed.csv"
    run = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    children: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + clean / 2
    while time.monotonic() < deadline:
        for c in psutil.Process(run.pid).children(recursive=True):
            children.setdefault(c.pid, c)
        time.sleep(0.2)
    run.kill()
    run.wait()
    kept = sum(len(pd.read_parquet(f)) for f in _parts(out))
    time.sleep(8)
    alive = [c for c in children.values() if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    print(f"SIGKILL at {clean / 2:.1f} s: {kept} of {args.n} rows kept in parts; "
          f"{len(alive)} of the run's {len(children)} processes alive 8 s later")
    start = time.monotonic()
    again = subprocess.run(command(out), capture_output=True, text=True)
    summary = next((line for line in again.stdout.splitlines() if line.startswith("labelled")), again.stderr[-300:])
    print(f"re-run: {time.monotonic() - start:.1f} s: {summary}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
