"""Benchmark: what stream mode's Ray Data read side holds, with facray's two read settings on and
off, on the same prepared data. Every variant reads the train split's pixel columns from start to
end through :func:`facray.runners.streaming.split_datasets` (as ``train`` builds it, file order
seeded) in a fresh local Ray (2 CPUs, no dashboard), as a Train worker pulls it, while a sampler
records every Ray worker process's anonymous RSS (``RssAnon``: what the kernel cannot reclaim
under a memory cap; shared libraries and the object store left out).

- ``ray-defaults``: Ray Train's default ingest options, no runtime env: mimalloc keeps freed
  pages, a read task reads its fragments all at once.
- ``allocator``: Arrow's allocator setting only (``MIMALLOC_PURGE_DELAY=0`` as the job's env).
- ``in-order``: :func:`facray.runners.streaming.stream_data_config`'s execution options only
  (``preserve_order``: fragments read one at a time).
- ``facray``: both, as ``train`` runs: the job's runtime env
  :func:`facray.runners.runtime.job_runtime_env` (since 2026-12-02 also ``MALLOC_ARENA_MAX=2``;
  the figures in bench/RESULTS.md were taken before) and the in-order options.

    python bench/stream_read.py --prepared PREP [--repeats 2]

Prints per variant the largest read process's peak, the sum over Ray's workers at the sampled
peak, rows/s, and the ratios to ``ray-defaults``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, sys, threading, time
import ray
from common import resident_memory
from facray.runners.runtime import job_runtime_env
from facray.runners.streaming import split_datasets, stream_data_config
from facray.training.splits import SplitSpec

variant, prepared = sys.argv[1], sys.argv[2]
in_order = variant in ("in-order", "facray")
env = {"allocator": {"env_vars": {"MIMALLOC_PURGE_DELAY": "0"}}, "facray": job_runtime_env()}.get(variant)
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", runtime_env=env)
ray.data.DataContext.get_current().enable_progress_bars = False
samples, done = [], False

def sample():
    while not done:
        # (not this driver: its own command line, this script, holds both words)
        samples.append({pid: anon for pid, (title, anon) in resident_memory().items()
                        if pid != os.getpid() and (title.startswith("ray::") or "default_worker.py" in title)})
        time.sleep(0.5)

threading.Thread(target=sample, daemon=True).start()
ds = split_datasets(SplitSpec(prepared), ("image", "sketch"), shuffle_seed=0)["train"]
options = stream_data_config(False)._resolve_execution_options("train")  # what Ray Train applies
options.preserve_order = in_order
ds.context.execution_options = options
start, rows = time.perf_counter(), 0
for batch in ds.iter_batches(batch_size=128, batch_format="numpy"):
    rows += len(batch["image"])
seconds = time.perf_counter() - start
done = True
time.sleep(1)
print(json.dumps({"rows": rows, "seconds": seconds,
                  "largest": max((max(s.values(), default=0) for s in samples), default=0),
                  "sum": max((sum(s.values()) for s in samples), default=0)}))
"""
# The child imports bench/common.py as this script does (its folder first on the path).
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH")]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True)
    p.add_argument("--repeats", type=int, default=1, help="runs per variant, alternating; the figures are means")
    args = p.parse_args()
    results: dict[str, list[dict]] = {"ray-defaults": [], "allocator": [], "in-order": [], "facray": []}
    for _ in range(args.repeats):
        for variant in results:
            out = subprocess.run([sys.executable, "-c", CHILD, variant, args.prepared], check=True,
                                 capture_output=True, text=True, env=CHILD_ENV).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))
    mean = {v: {k: sum(r[k] for r in rs) / len(rs) for k in ("largest", "sum", "rows", "seconds")}
            for v, rs in results.items()}
    base = mean["ray-defaults"]
    print(f"train rows read per run: {int(base['rows'])}; {args.repeats} run(s) per variant")
    print(f"{'variant':14s} {'largest read process':>21s} {'all Ray workers':>16s} {'rows/s':>8s}   ratios (largest, all, rows/s)")
    for v, m in mean.items():
        rate, base_rate = m["rows"] / m["seconds"], base["rows"] / base["seconds"]
        print(f"{v:14s} {m['largest'] / 1e9:19.2f} GB {m['sum'] / 1e9:14.2f} GB {rate:8.0f}   "
              f"{m['largest'] / base['largest']:.2f}x, {m['sum'] / base['sum']:.2f}x, {rate / base_rate:.2f}x")


if __name__ == "__main__":
    main()
