"""Benchmark (issue 24's scale test): facray's training commands under a memory cap smaller than
the prepared data. Each command runs in a shell moved into a cgroup v1 group whose
``memory.limit_in_bytes`` is the cap (root, ``/sys/fs/cgroup/memory`` writable: this machine); facray
reads that limit, so ``--data auto`` must choose streaming by itself and finish under it. The same
command with ``--data memory`` and no cap runs beside it for the img/s ratio.

    facray data synth --out /tmp/scale/celeba --n 50000 --size 178x218
    facray prepare --root /tmp/scale/celeba --out /tmp/scale/p --size 180 --augment 1
    sudo .venv/bin/python bench/memory_cap.py --prepared /tmp/scale/p --cap-gib 3   # root, facray's venv

Prints per command: what facray chose (its ``data:`` line), the exit code, wall seconds, training
img/s (from the run's MLflow epoch seconds), the group's peak (``memory.max_usage_in_bytes``: page
cache included, which the kernel reclaims before it kills), its peak RSS + shared memory (what
cannot be reclaimed: Ray's object store is shared memory), and OOM kills.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlflow

from common import resident_memory
from facray.data.prepared import read_metadata, shard_dir
from facray.runs import RunFolder
from facray.training.data_mode import bytes_per_worker
from facray.training.splits import SplitSpec, check_splits

CGROUPS = Path("/sys/fs/cgroup/memory")
COMMANDS = {
    # --online-augment off: an epoch of one pass (on, an epoch of 1x data is 9 passes: 9x the time, the same memory)
    "train-binary": ["train-binary", "--attributes", "Smiling", "--modalities", "real,sketch", "--image-size", "32",
                     "--online-augment", "off"],
    "train": ["train", "--model", "abm-trunk-tiny", "--image-size", "32", "--test-split", "val"],
}


def stat(group: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in (group / "memory.stat").read_text().splitlines())}


def processes(group: Path) -> list[tuple[int, str]]:
    """(RSS bytes, title) of the group's processes, largest first (Ray titles its workers ``ray::...``)."""
    pids = (group / "cgroup.procs").read_text().split()
    return sorted(((rss, title[:48]) for title, rss in resident_memory(pids, "VmRSS").values()), reverse=True)


def run(command: list[str], out: str, cap: int | None) -> dict:
    """``facray <command> --out out``, in a fresh cgroup capped at ``cap`` bytes (None: uncapped)."""
    group = CGROUPS / f"facray_cap_{os.getpid()}_{int(time.time())}"
    group.mkdir()
    if cap:
        (group / "memory.limit_in_bytes").write_text(str(cap))
    peak_unreclaimable, at_peak, stop = [0], [[]], threading.Event()

    def sample():
        while not stop.wait(0.5):
            s = stat(group)
            now = s["total_rss"] + s.get("total_shmem", 0)
            if now > peak_unreclaimable[0]:
                peak_unreclaimable[0], at_peak[0] = now, processes(group)[:6]

    facray = str(Path(sys.executable).with_name("facray"))
    shell = f'echo $$ > {group}/cgroup.procs; exec "$@"'
    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.run(["bash", "-c", shell, "bash", facray, *command, "--out", out], capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    oom = next((int(line.split()[1]) for line in (group / "memory.oom_control").read_text().splitlines()
                if line.startswith("oom_kill ")), 0)
    result = {"rc": proc.returncode, "wall": wall, "peak": int((group / "memory.max_usage_in_bytes").read_text()),
              "unreclaimable": peak_unreclaimable[0], "oom_kills": oom, "at_peak": at_peak[0],
              "choice": next((line for line in proc.stdout.splitlines() if line.startswith("data: ")), ""),
              "tail": (proc.stdout + proc.stderr).strip().splitlines()[-1:] if proc.returncode else []}
    for _ in range(60):  # Ray's last processes leave the group
        if not (group / "cgroup.procs").read_text().strip():
            break
        time.sleep(1)
    group.rmdir()
    if proc.returncode == 0:
        run_folder = RunFolder(out)
        client = mlflow.MlflowClient(run_folder.default_tracking_uri())
        history = client.get_metric_history(run_folder.mlflow_run_id(), "epoch_seconds")
        result["epoch_seconds"] = sum(m.value for m in history)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--cap-gib", type=float, default=3.0)
    ap.add_argument("--commands", default="train-binary,train")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--no-memory-run", action="store_true", help="skip the uncapped --data memory runs")
    args = ap.parse_args()
    if not os.access(CGROUPS, os.W_OK):
        sys.exit(f"{CGROUPS}: not writable (cgroup v1 as root needed)")
    meta, rows = read_metadata(args.prepared), check_splits(SplitSpec(args.prepared))
    disk = sum(f.stat().st_size for f in Path(shard_dir(args.prepared)).rglob("*") if f.is_file())
    arrays = bytes_per_worker(meta, rows, ("image", "sketch"))
    cap = int(args.cap_gib * 2**30)
    print(f"prepared: {args.prepared}, {meta['size']} px, rows " + ", ".join(f"{k} {v:,}" for k, v in rows.items())
          + f"; {disk / 1e9:.2f} GB of Parquet, {arrays / 1e9:.2f} GB decoded (image + sketch); cap {cap / 1e9:.2f} GB")
    work = tempfile.mkdtemp(prefix="facray-memory-cap-")
    for name in args.commands.split(","):
        command = [*COMMANDS[name], "--prepared", args.prepared, "--epochs", str(args.epochs)]
        runs = {"auto, capped": run(command, f"{work}/{name}-auto", cap)}
        if not args.no_memory_run:
            runs["memory, uncapped"] = run([*command, "--data", "memory"], f"{work}/{name}-memory", None)
        for label, r in runs.items():
            rate = rows["train"] * args.epochs / r["epoch_seconds"] if "epoch_seconds" in r else float("nan")
            print(f"{name} ({label}): rc {r['rc']}, {r['wall']:.0f} s, {rate:.0f} img/s, group peak "
                  f"{r['peak'] / 1e9:.2f} GB, rss + shmem peak {r['unreclaimable'] / 1e9:.2f} GB, "
                  f"OOM kills {r['oom_kills']}")
            print(f"    {r['choice'] or ''} {' '.join(r['tail'])}".rstrip())
            print("    largest processes at the peak: " + "; ".join(f"{t} {b / 1e9:.2f} GB" for b, t in r["at_peak"]))
        if all("epoch_seconds" in r for r in runs.values()) and len(runs) == 2:
            capped, memory = runs["auto, capped"], runs["memory, uncapped"]
            print(f"    stream (capped) / memory: {memory['epoch_seconds'] / capped['epoch_seconds']:.2f}x img/s")


if __name__ == "__main__":
    main()
