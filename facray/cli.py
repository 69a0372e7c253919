"""The ``facray`` command line: parsers, dispatch, and the one interrupt handler. Runs on the driver.

Each subcommand parses its arguments and calls its handler in :mod:`facray.commands`;
``jobs/<name>.py`` calls the same entry through :func:`main`, so ``facray prepare ...`` and
``ray job submit -- python jobs/prepare.py ...`` run the same code.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from facray.commands import (run_check_nodes, run_combine, run_data_check, run_data_synth, run_demo_command,
                             run_distill, run_ensemble, run_evaluate, run_label, run_prepare, run_sweep_command,
                             run_train, run_train_binary)
from facray.data.errors import DatasetError, OutputError, OutputLockedError
from facray.runners.runtime import ClusterTooSmall, Terminated, configure_ray_output, raise_terminated, stop_ray


def _build_data_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", type=Path, nargs="?", help="CelebA-layout folder (or MTFL folder with training.txt)")
    p.add_argument("--smoke-test", action="store_true", help="check 20 generated faces in ./smoke_check")
    p.add_argument("--no-decode", action="store_true", help="skip decoding every image")
    p.add_argument("--skip-missing", action="store_true",
                   help="go on without label rows whose image is missing (reports how many)")


def _build_data_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, help="output folder (required unless --smoke-test)")
    p.add_argument("--n", type=int, default=1000, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="178x218", help="WIDTHxHEIGHT of labelled images")
    p.add_argument("--unlabelled", action="store_true",
                   help="write a flat folder imitating StyleGAN output (1024/256 px PNG+JPEG) instead")
    p.add_argument("--smoke-test", action="store_true", help="write 8 faces into ./smoke_synth (or --out)")


def _build_train(p: argparse.ArgumentParser) -> None:
    config_arguments("facray.training.configs", "MultitaskConfig",
                     "prepare 60 generated faces, train abm-trunk-tiny for 2 epochs")(p)
    p.add_argument("--list-models", action="store_true", help="print the registered model names and exit")


def _build_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    p.add_argument("--n", type=int, default=600, help="generated images")
    p.add_argument("--epochs", type=int, default=4, help="training epochs per job")


def _build_sweep(p: argparse.ArgumentParser) -> None:
    config_arguments("facray.training.configs", "SweepConfig",
                     "a 4-trial sweep of a tiny model on 60 generated faces (about a minute)")(p)
    p.epilog = ("key=value arguments that are not sweep keys set the trainer's config for every trial "
                "(e.g. prepared=DIR val_split=holdout model=resnet18)")


def _build_check_nodes(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for each node's answer (a GPU node's check waits for a free GPU share)")
    p.add_argument("--smoke-test", action="store_true",
                   help="check this machine (what the command does wherever no cluster is given)")


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


# name -> (help, add arguments, run returning the exit code). Each handler (facray.commands) imports
# its command's code when it runs, and a parser only its own config's module: ``facray label`` never
# imports torch, and no command imports Ray before it runs.
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
                     config_arguments("facray.training.configs", "BinaryConfig",
                                      "prepare 60 generated faces, train 2 attributes x 2 modalities, 2 epochs"),
                     run_train_binary),
    "train": ("train a multi-task model (one network, 40 outputs) on Ray Train; --list-models names them",
              _build_train, run_train),
    "distill": ("train one multi-task network on a teacher's probabilities (an ensemble's accuracy at one "
                "network's speed) on Ray Train",
                config_arguments("facray.training.configs", "DistillConfig",
                                 "a one-epoch tiny `facray train` run into runs/smoke_multitask teaches a tiny "
                                 "student"), run_distill),
    "sweep": ("sweep a trainer's hyperparameters on Ray Tune (tune_spaces/*.py); register the best model",
              _build_sweep, run_sweep_command),
    "combine": ("keep the better modality per attribute; write and register the combined predictor",
                config_arguments("facray.training.configs", "CombineConfig",
                                 "train a one-epoch tiny train-binary run into runs/smoke_abm, then combine it"),
                run_combine),
    "ensemble": ("one predictor from several runs or models: the weighted mean of their probabilities, calibrated "
                 "and thresholded on validation rows none of them trained on",
                 config_arguments("facray.training.configs", "EnsembleConfig",
                                  "two one-epoch tiny `facray train` runs (seeds 0, 1) next to --out, ensembled with "
                                  "--flip and scored on their test split"), run_ensemble),
    "evaluate": ("per-attribute report (real, sketch, combined, majority, paper) with a plot, logged to MLflow; "
                 "--model M --dataset DIR scores a model on another dataset, --model M --prepared DIR on prepared "
                 "crops (calibration, reliability plot)",
                 config_arguments("facray.training.configs", "EvaluateConfig",
                                  "train a one-epoch tiny `facray train` run into runs/smoke_multitask, then "
                                  "report on it"),
                 run_evaluate),
    "label": ("label images (folder, glob, list, URI or a generator) into one CSV on Ray Data",
              config_arguments("facray.labelling.config", "LabelConfig",
                               "label 8 generated faces (2 of them broken) with an untrained predictor"),
              run_label),
    "check-nodes": ("check every live Ray node: facray's requirements installed at versions pyproject.toml "
                    "allows, and CUDA where a node declares GPUs; one line per node, exit 1 on a problem",
                    _build_check_nodes, run_check_nodes),
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
    parser = argparse.ArgumentParser(
        prog="facray", description="facray: facial-attribute models on Ray: prepare data, train, sweep, "
                                   "combine, evaluate and label images in bulk")
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
    except (DatasetError, ValueError, FileNotFoundError, OutputLockedError, OutputError, ClusterTooSmall) as e:
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
