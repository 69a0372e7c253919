"""The ``facray`` commands' handlers: each resolves its config (with ``--smoke-test``, the config
class's ``SMOKE`` overlay and generated inputs), calls one library function and prints the summary
it returns. Parsing and dispatch are :mod:`facray.cli`'s. Each handler imports its command's code
itself, so ``facray label`` never imports the training code (and torch with it)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def run_data_check(args: argparse.Namespace) -> int:
    from facray.data.check import check_dataset

    if args.smoke_test:
        from facray.data.synth import write_synthetic_celeba
        if args.root:
            raise ValueError("--smoke-test checks its own generated folder; drop ROOT or run without --smoke-test")
        args.root = write_synthetic_celeba(Path("smoke_check"), n=20)
    if not args.root:
        raise ValueError("a dataset folder is required (or --smoke-test)")
    report = check_dataset(args.root, decode=not args.no_decode, skip_missing=args.skip_missing)
    print(report.format())
    return 0 if report.ok else 1


def run_data_synth(args: argparse.Namespace) -> int:
    from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces

    if args.smoke_test:
        args.out, args.n = args.out or Path("smoke_synth"), 8
    if args.out is None:
        raise ValueError("--out is required")
    if args.unlabelled:
        paths = write_unlabelled_faces(args.out, n=args.n, seed=args.seed)
        print(f"wrote {len(paths)} unlabelled faces to {args.out}")
    else:
        w, h = (int(v) for v in args.size.lower().split("x"))
        write_synthetic_celeba(args.out, n=args.n, seed=args.seed, size=(w, h))
        print(f"wrote {args.n} generated CelebA faces to {args.out}")
    return 0


def run_check_nodes(args: argparse.Namespace) -> int:
    from facray.runners.nodes import check_nodes

    reports = check_nodes(args.timeout)
    for report in reports:
        print(report.line())
    bad = sum(bool(r.problems) for r in reports)
    print(f"{len(reports)} node(s) checked: " + (f"{bad} with problems" if bad else "all ok"))
    return 1 if bad else 0


def _resolve(cls, args: argparse.Namespace):
    """The command's config from its arguments; with ``--smoke-test``, the class's ``SMOKE``
    overlay and generated inputs (:mod:`facray.testing`) instead of the user's data."""
    from facray.config import resolve_config

    cfg = resolve_config(cls, args)
    if getattr(args, "smoke_test", False):
        from facray.testing import make_smoke_inputs, smoke_settings
        cfg = resolve_config(cls, args, smoke=smoke_settings(cfg))
        make_smoke_inputs(cfg)
    return cfg


def run_prepare(args: argparse.Namespace) -> int:
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare

    cfg = _resolve(PrepareConfig, args)
    if not cfg.root:
        raise ValueError("--root is required (or --smoke-test)")
    print(prepare(cfg).format())
    return 0


def run_train_binary(args: argparse.Namespace) -> int:
    from facray import storage
    from facray.runners.train import train
    from facray.training.configs import BinaryConfig

    cfg = _resolve(BinaryConfig, args)
    table = train(cfg)
    _print_table(table, "job", "best_epoch", "val_accuracy", "test_accuracy", "test_precision", "test_recall")
    print(f"jobs in {storage.join(cfg.out, 'jobs')}; MLflow: {_tracking_hint(cfg.tracking_uri, cfg.out)}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from facray.models.registry import list_models
    from facray.training.configs import MultitaskConfig

    if args.list_models:
        print("\n".join(list_models()))
        return 0
    return _train_one_network(_resolve(MultitaskConfig, args))


def run_distill(args: argparse.Namespace) -> int:
    from facray.training.configs import DistillConfig

    return _train_one_network(_resolve(DistillConfig, args))


def _train_one_network(cfg) -> int:
    """``facray train`` and ``facray distill``: train, print the per-attribute table and where it went."""
    from facray import storage
    from facray.runners.train import train

    record = train(cfg)
    _print_table(record["attributes"], "attribute", "threshold", "val_accuracy", "test_accuracy",
                 "test_accuracy_at_0.5", "test_balanced_accuracy", "test_precision", "test_recall", "test_ece")
    print(f"{cfg.model}: mean test accuracy {record['mean_test_accuracy']:.4f} at the validation thresholds "
          f"({record['mean_test_accuracy_at_0.5']:.4f} at 0.5), balanced accuracy "
          f"{record.get('mean_test_balanced_accuracy', float('nan')):.4f}, calibration error "
          f"{record.get('mean_test_ece', float('nan')):.4f} (raw {record.get('mean_test_ece_raw', float('nan')):.4f}), "
          f"best epoch {record['best_epoch']}")
    print(f"model: {storage.join(cfg.out, 'model')}; registered: {record.get('registered')}; "
          f"MLflow: {_tracking_hint(cfg.tracking_uri, cfg.out)}")
    return 0


def _print_table(rows, *columns: str) -> None:
    """``rows`` (a DataFrame or a list of dicts) with those of ``columns`` it has, 3 decimals."""
    import pandas as pd
    table = pd.DataFrame(rows)
    print(table[[c for c in columns if c in table]].round(3).to_string(index=False))


def _tracking_hint(uri: str | None, out) -> str:
    from facray.tracking import resolve_tracking_uri
    uri = resolve_tracking_uri(uri, out)
    return f"{uri}  (view: mlflow ui --backend-store-uri {shlex.quote(uri)})"


def run_combine(args: argparse.Namespace) -> int:
    from facray import storage
    from facray.training.combine import combine
    from facray.training.configs import CombineConfig

    cfg = _resolve(CombineConfig, args)
    dest, uri = combine(cfg)
    import pandas as pd
    _print_table(pd.read_csv(dest / "choices.csv"), "attribute", "modality", "real_val_accuracy", "sketch_val_accuracy")
    where = f"{dest}" + (f" (local copy of {storage.join(cfg.run, dest.name)})" if storage.is_uri(cfg.run) else "")
    print(f"combined predictor: {where}" + (f"\nregistered: {uri}" if uri else ""))
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from facray.training.configs import EnsembleConfig
    from facray.training.ensemble import build_ensemble

    # Positional arguments without '=' are members (paths, models:/ URIs); key=value ones set keys.
    given = args.overrides or []
    args.overrides = [a for a in given if "=" in a and not Path(a).exists()]
    members = [a for a in given if a not in args.overrides]
    cfg = _resolve(EnsembleConfig, args)
    from dataclasses import replace
    cfg = replace(cfg, members=tuple(m if ":/" in m else str(Path(m).resolve()) for m in (*cfg.members, *members)))
    dest, uri, table, line = build_ensemble(cfg)
    _print_table(table, *table.columns)
    print(f"ensemble predictor: {dest}" + (f"\nregistered: {uri}" if uri else "") + (f"\n{line}" if line else ""))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from facray.reports import evaluate_run
    from facray.training.configs import EvaluateConfig

    cfg = _resolve(EvaluateConfig, args)
    if cfg.model and not (cfg.dataset or cfg.prepared):
        raise ValueError("--model needs --dataset DIR (score it on a dataset's images) or --prepared DIR (on "
                         "prepared crops); a training run's own report is --run RUN")
    if cfg.dataset:
        from dataclasses import replace

        from facray.dataset_eval import evaluate_on_dataset
        table, out, line = evaluate_on_dataset(replace(cfg, model=cfg.model or cfg.run, split=cfg.split or "all"))
        _print_table(table, *table.columns)
    elif cfg.model and cfg.prepared:
        from facray.predictors.networks import load_predictor
        from facray.prepared_eval import evaluate_on_prepared

        if cfg.tracking_uri:  # where a models:/ model is registered
            import mlflow
            mlflow.set_tracking_uri(cfg.tracking_uri)
        if cfg.split == "all":
            raise ValueError("--split all scores every row of a --dataset; with --prepared name one split (e.g. test)")
        split = cfg.split or "test"
        out = Path(cfg.out) if cfg.out else Path(f"eval-{Path(cfg.prepared).name}-{split}")
        table, line = evaluate_on_prepared(load_predictor(cfg.model), cfg.prepared, split, out.resolve(),
                                           cfg.min_confidence)
        _print_table(table, *table.columns)
    else:
        table, out = evaluate_run(cfg)
        _print_table(table, "attribute", "real_test_accuracy", "sketch_test_accuracy", "chosen",
                     "combined_test_accuracy", "test_accuracy", "test_accuracy_at_0.5", "balanced_accuracy",
                     "test_balanced_accuracy", "threshold", "majority_accuracy", "paper_table2_accuracy",
                     "one_class_only")
        line = (out / "report.md").read_text().rstrip().splitlines()[-1]
    print(f"{line}\nreport: {out}")
    return 0


def run_label(args: argparse.Namespace) -> int:
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images

    cfg = _resolve(LabelConfig, args)  # --smoke-test writes its untrained predictor with torch; a real run has none
    if not cfg.model:
        raise ValueError("--model is required (a predictor folder or an MLflow model URI)")
    summary = label_images(cfg)
    print(summary.format())
    print(summary.first_rows[["image_id", "face_found", "n_faces", "error", "Smiling_prob", "Smiling", "Male_prob",
                              "Male"]].to_string(index=False))
    return 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from facray.runners.sweep import run_sweep
    from facray.training.configs import SweepConfig

    args.overrides, trial = SweepConfig.split_overrides(args.overrides or [])
    cfg = _resolve(SweepConfig, args)
    if args.smoke_test:
        from facray.testing import smoke_trial
        trial = {**smoke_trial(cfg), **trial}
    summary = run_sweep(cfg, trial)
    metric = summary["metric"]
    print(f"best trial {summary['best_trial']}: {summary['best_config']} -> {metric} {summary[metric]:.4f}; "
          f"trials {summary['trials']}; registered {summary['registered']}; table {summary['results']}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    from facray.demo import run_demo

    run_demo(args.out, n=args.n, epochs=args.epochs)
    return 0
