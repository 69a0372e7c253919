"""Benchmark: ``facray label``'s start-up and output at 100,000 to 1,000,000 inputs, without the
model (what the driver does before and after the Ray pipeline, which the pipeline's speed hides).

For each N it builds N inputs as symbolic links to a few real images in nested folders of 1,000
(and a ``.txt`` list of them), then, each step in a fresh process so that its peak RSS is its own:

1. ``list``: :func:`facray.labelling.inputs.list_inputs` on the folder (nested) and on the list.
2. ``resume``: a run killed at 50% left its parts; deciding what to reuse (earlier sources, their
   keys, :func:`facray.labelling.plan.reusable`) as ``facray label`` does at start-up.
3. ``write``: the other half labelled into a second run's parts (rows made up here: same columns,
   random probabilities), then the streamed merge and CSV output (:func:`facray.labelling.write.write_output`);
   checks one row per input, in order.
4. ``write-all-at-once``: the same rows as the old writer held them (one DataFrame, sorted, CSV
   rendered in memory), for the side-by-side figure.

    python bench/label_scale.py --n 100000 1000000 [--work /tmp/facray-label-scale]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import SHARED_DATA


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    folder, listing = root / f"images-{n}", root / f"list-{n}.txt"
    if listing.is_file():
        return folder, listing
    sources = sorted(p for p in (SHARED_DATA / "stylegan_sample").glob("*.png"))[:8] or None
    if sources is None:
        import cv2
        import numpy as np
        root.mkdir(parents=True, exist_ok=True)
        sources = [root / "face.png"]
        cv2.imwrite(str(sources[0]), np.full((64, 64, 3), 128, np.uint8))
    names = []
    for i in range(n):
        sub = folder / f"d{i // 1000:04d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        target = sub / f"{i:07d}.png"
        os.symlink(sources[i % len(sources)], target)
        names.append(f"{target.relative_to(root)}\n")
    listing.write_text("".join(names))
    return folder, listing


def fake_rows(paths, seed: int):
    """Rows with the output's columns as the pipeline gives them (probabilities made up)."""
    import numpy as np
    import pandas as pd
    from facray.attributes import ATTRIBUTES
    rng = np.random.default_rng(seed)
    n = len(paths)
    rows = pd.DataFrame({"path": paths, "face_found": True, "crop_method": "template", "n_faces": 1, "face_index": 0,
                         "face_x": 10.0, "face_y": 12.0, "face_w": 170.0, "face_h": 170.0, "face_score": rng.random(n),
                         "error": "", "model": "bench", "size": 1, "mtime_ns": 1, "faces": "largest", "crop": "auto"})
    probs = rng.random((n, len(ATTRIBUTES))).astype(np.float32)
    rows = pd.concat([rows, pd.DataFrame(probs, columns=[f"{a}_prob" for a in ATTRIBUTES]),
                      pd.DataFrame((probs >= 0.5).astype(np.float32), columns=list(ATTRIBUTES))], axis=1)
    return rows


class PeakRSS:
    """This process's peak RSS, sampled every 20 ms until :meth:`stop` (so that checks done after
    the step do not count)."""

    def __init__(self):
        import threading
        import psutil
        self.process, self.peak, self.running = psutil.Process(), 0, True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.02)

    def stop(self) -> float:
        self.running = False
        self.thread.join()
        return round(self.peak / 2**20)


def step(name: str, folder: str, listing: str, work: str) -> dict:
    """One step, in this (fresh) process; returns seconds and figures (``peak_mb``: RSS while
    the step ran, the checks after it left out)."""
    import pandas as pd
    from facray.labelling.inputs import list_inputs
    from facray.labelling.merge import Source, earlier_sources, previous_rows
    from facray.labelling.output import PartWriter, encode_output, parts_dir
    from facray.labelling.plan import choose_sources, reusable
    from facray.labelling.write import write_output
    from facray import storage
    out = str(Path(work) / "labels.csv")
    peak = PeakRSS()
    start = time.perf_counter()
    if name == "list":
        inputs = list_inputs(folder)
        mid = time.perf_counter()
        del inputs
        listed = list_inputs(listing)
        return {"inputs": len(listed), "folder_s": mid - start, "list_s": time.perf_counter() - mid,
                "peak_mb": peak.stop()}
    inputs = list_inputs(folder).sort_values("path", ignore_index=True)
    inputs["size"], inputs["mtime_ns"] = 1, 1  # as the made-up rows say
    listed = time.perf_counter()
    n = len(inputs)
    if name == "write-all-at-once":
        rows = pd.concat([fake_rows(inputs.path[i:i + 50_000].tolist(), i) for i in range(0, n, 50_000)])
        rows = rows.sort_values(["path", "face_index"]).assign(image_id=inputs.image_id.to_numpy())
        data, _ = encode_output(rows, "csv")
        Path(out + ".all").write_bytes(data)
        return {"inputs": n, "write_s": time.perf_counter() - listed, "peak_mb": peak.stop()}
    if name == "resume":  # the killed first run's parts, then the start-up decision
        with PartWriter(f"{parts_dir(out)}/run-1", flush_rows=4096) as writer:
            for i in range(0, n // 2, 4096):
                writer.add(fake_rows(inputs.path[i:min(i + 4096, n // 2)].tolist(), i))
        decided = time.perf_counter()
        sources = earlier_sources(out, "csv")
        done = previous_rows(out, "csv", sources)
        reused = reusable(inputs, done, "bench", "largest", "auto")
        assert reused.sum() == n // 2 and reused[: n // 2].all(), "the resume decision lost rows"
        return {"inputs": n, "reused": int(reused.sum()), "decide_s": time.perf_counter() - decided,
                "list_s": listed - start, "peak_mb": peak.stop()}
    sources = earlier_sources(out, "csv")
    done = previous_rows(out, "csv", sources)
    reused = reusable(inputs, done, "bench", "largest", "auto")
    todo = inputs.path[~reused].tolist()
    run = f"{parts_dir(out)}/run-2"
    with PartWriter(run, flush_rows=4096) as writer:
        for i in range(0, len(todo), 4096):
            writer.add(fake_rows(todo[i:i + 4096], n + i))
    merged = time.perf_counter()
    new = [Source(len(sources), storage.list_files(run, (".parquet",)))]
    chosen = choose_sources(inputs, done, reused, pd.concat([s.keys() for s in new]))
    written = write_output(sources + new, inputs, chosen, out, "csv")
    seconds, peak_mb = time.perf_counter() - merged, peak.stop()
    back = pd.read_csv(out, usecols=["path"]).path
    assert written.rows == n and back.tolist() == inputs.path.tolist()
    return {"inputs": n, "rows": written.rows, "write_s": seconds, "peak_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--work", default="/tmp/facray-label-scale")
    p.add_argument("--step", nargs=4, help=argparse.SUPPRESS)  # internal: name folder listing work
    args = p.parse_args()
    if args.step:
        figures = step(*args.step)
        print(json.dumps(figures))
        return
    root = Path(args.work)
    for n in args.n:
        t = time.perf_counter()
        folder, listing = make_inputs(root, n)
        print(f"\n{n} inputs (links in folders of 1,000; made in {time.perf_counter() - t:.0f}s)", flush=True)
        work = root / f"out-{n}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        for name in ("list", "resume", "write", "write-all-at-once"):
            done = subprocess.run([sys.executable, __file__, "--step", name, str(folder), str(listing), str(work)],
                                  check=True, capture_output=True, text=True)
            print(f"  {name:18s} {done.stdout.strip().splitlines()[-1]}", flush=True)
        subprocess.run(["rm", "-rf", str(work)], check=True)


if __name__ == "__main__":
    main()
