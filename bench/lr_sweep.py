"""Benchmark: an lr sweep of the binary ABM-CNN jobs, in-stack vs separate Tune trials, in one run.

Same prepared data, attributes, epochs and seeds on both sides:

1. ``in-stack``: ``facray train-binary --lrs 1e-3,1e-4,1e-5``: every job once per lr in one Ray
   Train run, one pass over the data per epoch for all models; then ``combine`` registers the
   per-attribute best;
2. ``tune``: ``facray sweep`` with one Tune trial per lr (a ``train-binary`` run each),
   ``--max-concurrent`` at a time; it registers its best trial's combined model.

Both then keep, per attribute, the lr whose validation accuracy is best. Prints wall times (start-up
included) and their ratio, and per attribute the lr each side chose and its validation and test
accuracy (the two should agree: an in-stack model is exactly Adam at its lr, see
``facray/training/stack_optim.py``).

    python bench/lr_sweep.py --prepared PREPARED [--attributes abm] [--epochs 3] [--image-size 64]
    python bench/lr_sweep.py                       # on 300 generated faces
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd


def best_per_attribute(job_dirs: list[Path]) -> pd.DataFrame:
    """Per attribute the job with the best validation accuracy (ties: the larger lr)."""
    rows = [json.loads((d / "metrics.json").read_text()) for d in job_dirs]
    table = pd.DataFrame([{"attribute": r["attribute"], "lr": r["lr"], "val_accuracy": r["best"]["val_accuracy"],
                           "test_accuracy": r["test"]["test_accuracy"]} for r in rows])
    table = table.sort_values(["attribute", "val_accuracy", "lr"], ascending=[True, False, False])
    return table.groupby("attribute").head(1).set_index("attribute")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", help="prepared data (default: 300 generated faces, prepared here)")
    p.add_argument("--attributes", default="Eyeglasses,Smiling,Male,Wearing_Hat")
    p.add_argument("--lrs", default="1e-3,1e-4,1e-5")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-concurrent", type=int, default=2, help="tune side: trials at once")
    p.add_argument("--val-split", default="val")
    p.add_argument("--test-split", default="test")
    p.add_argument("--work", help="folder for the runs (default: a temporary one)")
    args = p.parse_args()

    from facray.runners.runtime import init_ray
    from facray.training.combine import CombineConfig, combine
    from facray.training.configs import SweepConfig, BinaryConfig
    from facray.runners.train import train
    from facray.runners.sweep import run_sweep

    work = Path(args.work or tempfile.mkdtemp(prefix="facray-lr-sweep-"))
    init_ray()
    prepared = args.prepared
    if not prepared:
        from facray.data.pipeline import PrepareConfig
        from facray.runners.prepare import prepare
        from facray.data.synth import write_synthetic_celeba
        prepared = str(work / "prepared")
        prepare(PrepareConfig(root=str(write_synthetic_celeba(work / "celeba", n=300, seed=0)), out=prepared,
                              size=args.image_size, augment=1))
    lrs = tuple(float(v) for v in args.lrs.split(","))
    common = dict(prepared=prepared, attributes=args.attributes, modalities=("real",), epochs=args.epochs,
                  patience=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
                  val_split=args.val_split, test_split=args.test_split,
                  online_augment="off")  # one pass per epoch, as the figures in RESULTS were measured
    # Both sides use the machine's cores: in-stack one worker with every thread, tune one thread
    # per concurrent trial.
    import os
    cores = os.cpu_count() or 2
    t0 = time.perf_counter()
    train(BinaryConfig(**common, out=str(work / "in_stack"), lrs=lrs, cpus_per_worker=1,
                                          torch_threads=cores))
    combine(CombineConfig(run=str(work / "in_stack")))  # as the sweep does for its best trial
    in_stack_s = time.perf_counter() - t0

    space = work / "lr_space.py"
    space.write_text("from ray import tune\nfrom facray.training.configs import BinaryConfig\n"
                     f"CONFIG = BinaryConfig\nSPACE = {{'lr': tune.grid_search({list(lrs)})}}\n"
                     "METRIC = 'mean_val_accuracy'\nMODE = 'max'\n")
    t0 = time.perf_counter()
    summary = run_sweep(SweepConfig(space=str(space), out=str(work / "tune"), max_concurrent=args.max_concurrent,
                                    cpus_per_trial=min(1.0, cores / args.max_concurrent), scheduler="fifo"),
                        {**common, "torch_threads": max(1, cores // args.max_concurrent)})
    tune_s = time.perf_counter() - t0

    fused = best_per_attribute(sorted((work / "in_stack" / "jobs").glob("*")))
    separate = best_per_attribute(sorted((work / "tune" / "trials").glob("*/jobs/*")))
    both = fused.merge(separate, left_index=True, right_index=True, suffixes=("_in_stack", "_tune"))
    print(f"\nlr sweep over {lrs} x {len(fused)} attributes (real photos), {args.epochs} epochs, "
          f"{args.image_size} px, {cores} cores; data {prepared}")
    print(both.round(4).to_string())
    print(f"\nwall time (start-up included): in-stack {in_stack_s:.0f} s, tune trials {tune_s:.0f} s "
          f"-> in-stack is {tune_s / in_stack_s:.2f}x faster")
    print(f"same lr chosen for {(both.lr_in_stack == both.lr_tune).sum()} of {len(both)} attributes; "
          f"mean chosen val accuracy {both.val_accuracy_in_stack.mean():.4f} vs {both.val_accuracy_tune.mean():.4f}, "
          f"test {both.test_accuracy_in_stack.mean():.4f} vs {both.test_accuracy_tune.mean():.4f}")
    print(f"tune's best trial: {summary['best_config']} ({summary['trials']})")


if __name__ == "__main__":
    main()
