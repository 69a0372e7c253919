"""The ``facray`` command line. Runs on the driver.

Each subcommand parses its arguments and calls one library function; ``jobs/<name>.py`` calls the
same entry through :func:`main`, so ``facray prepare ...`` and
``ray job submit -- python jobs/prepare.py ...`` run the same code.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from facray.data.errors import DatasetError, OutputError, OutputLockedError
from facray.runners.runtime import Terminated, configure_ray_output, raise_terminated, stop_ray

def _build_data_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, help="CelebA-layout folder (or MTFL folder with training.txt)")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    p.add_argument("--skip-missing", action="store_true",
                   help="go on without label rows whose image is missing (reports how many)")


def run_data_check(args: argparse.Namespace) -> int:
    from facray.data.check import check_dataset

    report = check_dataset(args.root, decode=not args.no_decode, skip_missing=args.skip_missing)
    print(report.format())
    return 0 if report.ok else 1


def _build_data_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--n", type=int, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="178x218", help="WIDTHxHEIGHT of labelled images")
    p.add_argument("--unlabelled", action="store_true",
                   help="write a flat folder imitating StyleGAN output (1024/256 px PNG+JPEG) instead")


def run_data_synth(args: argparse.Namespace) -> int:
    from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces

    if args.unlabelled:
        paths = write_unlabelled_faces(args.out, n=args.n, seed=args.seed)
        print(f"wrote {len(paths)} unlabelled faces to {args.out}")
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        write_synthetic_celeba(args.out, n=args.n, seed=args.seed, size=(w, h))
        print(f"wrote {args.n} generated CelebA faces to {args.out}")
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare

    smoke = {}
    if args.smoke_test:
        from facray.data.synth import write_synthetic_celeba
        out = Path(getattr(args, "out", "prepared"))
        smoke = {"dataset": "celeba", "root": str(write_synthetic_celeba(out / "smoke_data", n=40)),
                 "size": 64, "augment": 3, "masks": True}
    cfg = resolve_config(PrepareConfig, args, overrides=None)
    if smoke:
        from dataclasses import replace
        _refuse_smoke_overrides(args, list(smoke))
        cfg = replace(cfg, **smoke)
    if not cfg.root:
        raise ValueError("--root is required (or --smoke-test)")
    print(prepare(cfg).format())
    return 0


def run_train_binary(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.training.configs import TrainBinaryConfig
    from facray.runners.train_binary import train_binary_models

    cfg = resolve_config(TrainBinaryConfig, args)
    if args.smoke_test:
        cfg = _smoke_training(args, cfg, dict(attributes="Eyeglasses,Smiling", epochs=2, image_size=32,
                                              batch_size=16, cpus_per_worker=0.5))
    table = train_binary_models(cfg)
    cols = [c for c in ("job", "best_epoch", "val_accuracy", "test_accuracy", "test_precision", "test_recall")
            if c in table]
    print(table[cols].round(3).to_string(index=False))
    from facray.runs import RunFolder
    print(f"jobs in {RunFolder(cfg.out).jobs_dir}; MLflow: {_tracking_hint(cfg.tracking_uri, cfg.out)}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.models.registry import list_models
    from facray.training.configs import TrainConfig
    from facray.runners.train_multitask import train_multitask

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    cfg = resolve_config(TrainConfig, args)
    if args.smoke_test:
        cfg = _smoke_training(args, cfg, dict(model="abm-trunk-tiny", epochs=2, batch_size=16, image_size=32,
                                              cpus_per_worker=0.5))
    record = train_multitask(cfg)
    import pandas as pd
    table = pd.DataFrame(record["attributes"])
    print(table[["attribute", "threshold", "val_accuracy", "test_accuracy", "test_accuracy_at_0.5",
                 "test_precision", "test_recall"]].round(3).to_string(index=False))
    print(f"{cfg.model}: mean test accuracy {record['mean_test_accuracy']:.4f} at the validation thresholds "
          f"({record['mean_test_accuracy_at_0.5']:.4f} at 0.5), best epoch {record['best_epoch']}")
    from facray.runs import RunFolder
    print(f"model: {RunFolder(cfg.out).model_dir}; registered: {record.get('registered')}; "
          f"MLflow: {_tracking_hint(cfg.tracking_uri, cfg.out)}")
    return 0


def _build_train(p: argparse.ArgumentParser) -> None:
    config_arguments("facray.training.configs", "TrainConfig",
                     "prepare 60 generated faces, train abm-trunk-tiny for 2 epochs")(p)
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")


def _refuse_smoke_overrides(args: argparse.Namespace, keys: list[str]) -> None:
    """--smoke-test sets these keys itself: refuse them given too rather than ignore them silently."""
    given = {k for k in keys if k in vars(args)}
    given |= {o.split("=", 1)[0].strip().replace("-", "_") for o in getattr(args, "overrides", None) or []} & set(keys)
    if getattr(args, "config", None):
        import yaml
        given |= set(yaml.safe_load(Path(args.config).read_text()) or {}) & set(keys)
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise ValueError(f"--smoke-test sets {flags} itself; drop {'it' if len(given) == 1 else 'them'} "
                         "or run without --smoke-test")


def _smoke_training(args: argparse.Namespace, cfg, smoke: dict):
    """A training config for --smoke-test: ``smoke``'s settings on a tiny prepared set under --out."""
    from dataclasses import replace
    _refuse_smoke_overrides(args, ["prepared", *smoke])
    return replace(cfg, prepared=str(_smoke_prepared(Path(cfg.out))), **smoke)


def _smoke_prepared(out: Path) -> Path:
    """A tiny prepared dataset under ``out`` for --smoke-test runs (made once)."""
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.data.synth import write_synthetic_celeba
    prepared = out / "smoke_prepared"
    if not (prepared / "prepared.json").is_file():
        root = write_synthetic_celeba(out / "smoke_data", n=60, seed=0)
        prepare(PrepareConfig(root=str(root), out=str(prepared), size=40, augment=1))
    return prepared


def _tracking_hint(uri: str | None, out) -> str:
    from facray.tracking import resolve_tracking_uri
    uri = resolve_tracking_uri(uri, out)
    return f"{uri}  (view: mlflow ui --backend-store-uri {shlex.quote(uri)})"


def run_combine(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.training.combine import CombineConfig, combine

    cfg = resolve_config(CombineConfig, args)
    dest, uri = combine(cfg)
    choices = __import__("pandas").read_csv(dest / "choices.csv")
    print(choices[["attribute", "modality", "real_val_accuracy", "sketch_val_accuracy"]].round(3).to_string(index=False))
    print(f"combined predictor: {dest}" + (f"\nregistered: {uri}" if uri else ""))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.reports import EvaluateConfig, evaluate_run

    cfg = resolve_config(EvaluateConfig, args)
    if cfg.dataset:
        from dataclasses import replace

        from facray.dataset_eval import evaluate_on_dataset
        table, out, line = evaluate_on_dataset(replace(cfg, model=cfg.model or cfg.run))
        print(table.round(3).to_string(index=False))
        print(line)
        print(f"report: {out}")
        return 0
    table, out = evaluate_run(cfg)
    cols = [c for c in ("attribute", "real_test_accuracy", "sketch_test_accuracy", "chosen", "combined_test_accuracy",
                        "test_accuracy", "test_accuracy_at_0.5", "balanced_accuracy", "test_balanced_accuracy",
                        "threshold", "majority_accuracy",
                        "paper_table2_accuracy", "one_class_only") if c in table]
    print(table[cols].round(3).to_string(index=False))
    print((out / "report.md").read_text().rstrip().splitlines()[-1])
    print(f"report: {out}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from facray.config import resolve_config
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images

    cfg = resolve_config(LabelConfig, args)
    if args.smoke_test:
        from facray.data.synth import write_unlabelled_faces
        from facray.testing import smoke_model  # torch, for the smoke run only: the driver stays torch-free
        smoke = dict(batch_size=4, num_actors=1, preprocess_actors=1)
        _refuse_smoke_overrides(args, ["images", "model", *smoke])
        base = Path(cfg.out).resolve().parent / "smoke_label"
        folder, model = base / "images", base / "untrained_predictor"
        if not folder.is_dir():  # made once, so a second run shows resuming
            write_unlabelled_faces(folder, n=6, seed=0, sizes=(256, 128))
            (folder / "empty.jpg").write_bytes(b"")
            (folder / "notes.png").write_text("not an image")
        if not (model / "manifest.json").is_file():
            smoke_model(model)
        cfg = replace(cfg, images=str(folder), model=str(model), **smoke)
    if not cfg.model:
        raise ValueError("--model is required (a predictor folder or an MLflow model URI)")
    summary = label_images(cfg)
    print(summary.format())
    if cfg.format in ("csv", "parquet"):
        from facray.labelling.output import read_output
        head = read_output(summary.out, cfg.format).head(5)
        print(head[["image_id", "face_found", "n_faces", "error", "Smiling_prob", "Smiling", "Male_prob",
                    "Male"]].to_string(index=False))
    return 0


def _build_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    p.add_argument("--n", type=int, default=600, help="generated images")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per job")


def _build_sweep(p: argparse.ArgumentParser) -> None:
    config_arguments("facray.training.configs", "SweepConfig",
                     "a 4-trial sweep of a tiny model on 60 generated faces (about a minute)")(p)
    p.epilog = ("key=value arguments that are not sweep keys set the trainer's config for every trial "
                "(e.g. prepared=DIR val_split=holdout model=resnet18)")


def run_sweep_command(args: argparse.Namespace) -> int:
    import dataclasses

    from facray.config import resolve_config
    from facray.training.configs import SweepConfig
    from facray.runners.sweep import run_sweep

    sweep_keys = {f.name for f in dataclasses.fields(SweepConfig)}
    pairs = [o.split("=", 1) if "=" in o else (o, None) for o in args.overrides or []]
    bad = [k for k, v in pairs if v is None]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not key=value")
    args.overrides = [f"{k}={v}" for k, v in pairs if k.strip().replace("-", "_") in sweep_keys]
    trial = {k.strip().replace("-", "_"): v for k, v in pairs if k.strip().replace("-", "_") not in sweep_keys}
    cfg = resolve_config(SweepConfig, args)
    if args.smoke_test:
        from dataclasses import replace
        smoke = dict(space="tune_spaces.smoke_multitask", cpus_per_trial=0.5, max_concurrent=2)
        _refuse_smoke_overrides(args, list(smoke))
        cfg = replace(cfg, **smoke)
        trial = {"prepared": str(_smoke_prepared(Path(cfg.out).resolve().parent)), "model": "abm-trunk-tiny",
                 "image_size": 32, "batch_size": 16, **trial}
    summary = run_sweep(cfg, trial)
    metric = summary["metric"]
    print(f"best trial {summary['best_trial']}: {summary['best_config']} -> {metric} {summary[metric]:.4f}; "
          f"trials {summary['trials']}; registered {summary['registered']}; table {summary['results']}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from facray.demo import run_demo

    run_demo(args.out, n=args.n, epochs=args.epochs)
    return 0


def config_arguments(module: str, config: str, smoke_test: str | None = None):
    """An argument builder for a config dataclass (imported only when the parser is built), plus
    ``--smoke-test`` when the command has one."""
    def build(p: argparse.ArgumentParser) -> None:
        import importlib

        from facray.config import add_config_arguments
        add_config_arguments(p, getattr(importlib.import_module(module), config))
        if smoke_test:
            p.add_argument("--smoke-test", action="store_true", help=smoke_test)
    return build


# name -> (help, add arguments, run returning the exit code). Library imports stay inside the run
# functions so ``facray --help`` does not import torch or Ray.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "data check": ("validate a dataset folder and print counts, splits and label balance",
                   _build_data_check, run_data_check),
    "data synth": ("write a generated CelebA (official layout) or an unlabelled StyleGAN-like folder",
                   _build_data_synth, run_data_synth),
    "prepare": ("face-crop, sketch, augment (and mask) a dataset on Ray Data into Parquet shards",
                config_arguments("facray.data.pipeline", "PrepareConfig",
                                 "generate 40 faces into OUT/smoke_data and prepare them (seconds)"),
                run_prepare),
    "train-binary": ("train the binary ABM-CNN jobs (attribute x modality) on Ray Train",
                     config_arguments("facray.training.configs", "TrainBinaryConfig",
                                      "prepare 60 generated faces, train 2 attributes x 2 modalities, 2 epochs"),
                     run_train_binary),
    "train": ("train a multi-task model (one network, 40 outputs) on Ray Train: "
              "abm-trunk, resnet18, resnet50, vgg19-transfer, inception-v3",
              _build_train, run_train),
    "sweep": ("sweep a trainer's hyperparameters on Ray Tune (tune_spaces/*.py); register the best model",
              _build_sweep, run_sweep_command),
    "combine": ("keep the better modality per attribute; write and register the combined predictor",
                config_arguments("facray.training.combine", "CombineConfig"), run_combine),
    "evaluate": ("per-attribute report (real, sketch, combined, majority, paper) with a plot, logged to MLflow; "
                 "--dataset scores a model on another dataset",
                 config_arguments("facray.reports", "EvaluateConfig"), run_evaluate),
    "label": ("label images (folder, glob, list, URI or a generator) into one CSV on Ray Data",
              config_arguments("facray.labelling.config", "LabelConfig",
                               "label 8 generated faces (2 of them broken) with an untrained predictor"),
              run_label),
    "demo": ("run the whole pipeline on generated data with local Ray and MLflow",
             _build_demo, run_demo_command),
}


def selected_command(argv: list[str]) -> str | None:
    """The command ``argv`` names (``label``, ``data check``...), or None."""
    words = [w for w in argv if not w.startswith("-")][:2]
    return next((name for name in COMMANDS if name.split() == words[:len(name.split())]), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every command's parser; with ``only``, the arguments of that command alone are built: each
    builder imports its config's module, and ``facray label`` must not import the training code
    (and torch with it) into its driver."""
    parser = argparse.ArgumentParser(prog="facray", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, (help_text, build, run) in COMMANDS.items():
        words = name.split()
        if len(words) == 1:
            p = sub.add_parser(words[0], help=help_text, description=help_text)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True)
            p = groups[words[0]].add_parser(words[1], help=help_text, description=help_text)
        if only in (None, name):
            build(p)
        p.set_defaults(handler_=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(selected_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    configure_ray_output(args.verbose)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    on_main_thread = threading.current_thread() is threading.main_thread()  # signals go there only
    if on_main_thread:
        previous = signal.getsignal(signal.SIGINT), signal.signal(signal.SIGTERM, raise_terminated)
    try:
        code = args.handler_(args)
    except (DatasetError, ValueError, FileNotFoundError, OutputLockedError, OutputError) as e:
        print(f"facray: error: {e}", file=sys.stderr)
        code = 2
    except (KeyboardInterrupt, Terminated) as e:
        # The one interrupt handler of every command. Further signals are ignored while it shuts
        # Ray down, so a second Ctrl-C cannot cut the clean-up short. Outputs are replaced
        # atomically and finished work (checkpoints, label parts) is on disk: the same command resumes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_ray()
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"facray: {how}; finished work is kept: re-run the same command to resume", file=sys.stderr)
        code = 143 if isinstance(e, Terminated) else 130
    if on_main_thread:
        # Handlers back as they were: an in-process caller (a test, a notebook) and the processes
        # it starts later (which inherit an ignored SIGINT) must not stay deaf to Ctrl-C.
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    return code


if __name__ == "__main__":
    sys.exit(main())
