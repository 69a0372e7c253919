"""The ``facray`` command line. Runs on the driver.

Each subcommand parses its arguments and calls one library function; ``jobs/<name>.py`` calls the
same entry through :func:`main`, so ``facray prepare ...`` and
``ray job submit -- python jobs/prepare.py ...`` run the same code.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from facray.data.errors import DatasetError

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


def _build_prepare(p: argparse.ArgumentParser) -> None:
    from facray.config import add_config_arguments
    from facray.data.pipeline import PrepareConfig
    add_config_arguments(p, PrepareConfig)
    p.add_argument("--smoke-test", action="store_true",
                   help="generate 40 faces into OUT/smoke_data and prepare them (seconds)")


def run_prepare(args: argparse.Namespace) -> int:
    from facray.config import resolve_config
    from facray.data.pipeline import PrepareConfig, prepare

    smoke = {}
    if args.smoke_test:
        from facray.data.synth import write_synthetic_celeba
        out = Path(getattr(args, "out", "prepared"))
        smoke = {"dataset": "celeba", "root": str(write_synthetic_celeba(out / "smoke_data", n=40)),
                 "size": 64, "augment": 3, "masks": True}
    cfg = resolve_config(PrepareConfig, args, overrides=None)
    if smoke:
        from dataclasses import replace
        cfg = replace(cfg, **smoke)
    if not cfg.root:
        raise ValueError("--root is required (or --smoke-test)")
    print(prepare(cfg).format())
    return 0


def _build_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    p.add_argument("--n", type=int, default=600, help="generated images")


def run_demo_command(args: argparse.Namespace) -> int:
    from facray.demo import run_demo

    run_demo(args.out, n=args.n)
    return 0


# name -> (help, add arguments, run returning the exit code). Library imports stay inside the run
# functions so ``facray --help`` does not import torch or Ray.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "data check": ("validate a dataset folder and print counts, splits and label balance",
                   _build_data_check, run_data_check),
    "data synth": ("write a generated CelebA (official layout) or an unlabelled StyleGAN-like folder",
                   _build_data_synth, run_data_synth),
    "prepare": ("face-crop, sketch, augment (and mask) a dataset on Ray Data into Parquet shards",
                _build_prepare, run_prepare),
    "demo": ("run the whole pipeline on generated data with local Ray and MLflow",
             _build_demo, run_demo_command),
}


def build_parser() -> argparse.ArgumentParser:
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
        build(p)
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (DatasetError, ValueError, FileNotFoundError) as e:
        print(f"facray: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
