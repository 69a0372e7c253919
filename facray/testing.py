"""Fixtures for ``--smoke-test`` runs, the demo and the tests: small stand-ins that exercise the
plumbing, never results.

Each command's config class declares its smoke settings next to its fields (``SMOKE``: tiny
sizes, one actor); :func:`smoke_settings` adds where the command's inputs go (a generated
dataset, a prepared set, an untrained predictor, a one-epoch run), and :func:`make_smoke_inputs`
writes them once, so a second smoke run shows resuming. The CLI applies them with
:func:`facray.config.resolve_config`'s ``smoke=`` (which refuses a key the user set too).
"""
from __future__ import annotations

from pathlib import Path

from facray import storage
from facray.attributes import ATTRIBUTES
from facray.data.pipeline import PrepareConfig
from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces
from facray.labelling.config import LabelConfig
from facray.models.abm import init_model
from facray.predictors.format import MANIFEST
from facray.predictors.networks import write_predictor
from facray.runners.prepare import prepare
from facray.runners.train import train
from facray.runs import RunFolder
from facray.staged_runs import staging_root
from facray.training.configs import (BinaryConfig, CombineConfig, DistillConfig, EnsembleConfig, EvaluateConfig,
                                     MultitaskConfig, SweepConfig)


def smoke_model(folder: Path, crop_size: int = 48) -> Path:
    """An *untrained* (seeded random weights) 40-attribute predictor, for plumbing tests only:
    its predictions mean nothing. Named so in its manifest."""
    weights, choices = {}, []
    for i, a in enumerate(ATTRIBUTES):
        m = "sketch" if i % 5 == 0 else "real"
        weights[f"{a}__{m}"] = init_model(i, 1 if m == "sketch" else 3, crop_size, 0.5).state_dict()
        choices.append({"attribute": a, "modality": m, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None})
    return write_predictor(folder, choices, weights, {"size": crop_size, "margin": 0.35}, crop_size, 1,
                           extra={"name": "smoke-untrained"})


def smoke_prepared(prepared: str | Path) -> Path:
    """A tiny prepared dataset at ``prepared`` (60 generated faces beside it, 40 px, no
    augmentation), made once."""
    prepared = Path(prepared)
    if not (prepared / "prepared.json").is_file():
        root = write_synthetic_celeba(prepared.parent / "smoke_data", n=60, seed=0)
        prepare(PrepareConfig(root=str(root), out=str(prepared), size=40, augment=1))
    return prepared


def smoke_unlabelled(folder: Path) -> Path:
    """6 generated faces (256 and 128 px) and 2 broken files: an empty JPEG and a text file named
    ``.png``, each of which must come out as an error row."""
    if not folder.is_dir():
        write_unlabelled_faces(folder, n=6, seed=0, sizes=(256, 128))
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "notes.png").write_text("not an image")
    return folder


def smoke_settings(cfg) -> dict:
    """``--smoke-test``'s settings for a command whose config (as the user gave it) is ``cfg``:
    its class's ``SMOKE`` overlay plus where its inputs go, beside the user's output."""
    settings = dict(type(cfg).SMOKE)
    if isinstance(cfg, PrepareConfig):
        settings["root"] = str(Path(cfg.out).resolve() / "smoke_data")
    elif isinstance(cfg, (BinaryConfig, MultitaskConfig)):
        settings["prepared"] = str(local_base(cfg.out) / "smoke_prepared")
        if isinstance(cfg, DistillConfig):  # the teacher's data: a smoke train run beside the output
            base = Path(cfg.out).resolve().parent
            settings.update(teacher=str(base / "smoke_multitask"), prepared=str(base / "smoke_prepared"))
    elif isinstance(cfg, LabelConfig):
        base = Path(cfg.out).resolve().parent / "smoke_label"
        settings.update(images=str(base / "images"), model=str(base / "untrained_predictor"))
    elif isinstance(cfg, CombineConfig):
        settings["run"] = str(Path(cfg.run).resolve().parent / "smoke_abm")
    elif isinstance(cfg, EvaluateConfig):
        settings["run"] = str(Path(cfg.run).resolve().parent / "smoke_multitask")
    elif isinstance(cfg, EnsembleConfig):
        base = Path(cfg.out).resolve().parent
        settings["members"] = (str(base / "smoke_multitask"), str(base / "smoke_multitask_seed1"))
    return settings


def local_base(out: str) -> Path:
    """Where the smoke inputs of a command writing ``out`` go: ``out`` itself, or for a URI
    (``s3://...``) a folder under the staging root, never inside a run's local copy (which a
    pull makes the bucket's again)."""
    if storage.is_uri(out):
        return staging_root() / "smoke-inputs" / storage.staging_name(out)
    return Path(out).resolve()


def smoke_trial(sweep: SweepConfig) -> dict:
    """A smoke sweep's settings for every trial: a tiny model on a tiny prepared set."""
    prepared = smoke_prepared(local_base(sweep.out).parent / "smoke_prepared")
    return {**SweepConfig.SMOKE_TRIAL, "prepared": str(prepared)}


def make_smoke_inputs(cfg) -> None:
    """Write what :func:`smoke_settings` pointed ``cfg`` at, unless an earlier smoke run did."""
    if isinstance(cfg, PrepareConfig) and not Path(cfg.root).is_dir():
        write_synthetic_celeba(cfg.root, n=40)
    elif isinstance(cfg, DistillConfig):
        smoke_multitask_run(Path(cfg.teacher))
    elif isinstance(cfg, (BinaryConfig, MultitaskConfig)):
        smoke_prepared(cfg.prepared)
    elif isinstance(cfg, LabelConfig):
        smoke_unlabelled(Path(cfg.images))
        if not (Path(cfg.model) / MANIFEST).is_file():
            smoke_model(Path(cfg.model))
    elif isinstance(cfg, CombineConfig) and not RunFolder(cfg.run).jobs_dir.is_dir():
        prepared = smoke_prepared(Path(cfg.run).parent / "smoke_prepared")
        train(BinaryConfig(prepared=str(prepared), out=cfg.run, **{**BinaryConfig.SMOKE, "epochs": 1}))
    elif isinstance(cfg, EvaluateConfig):
        smoke_multitask_run(Path(cfg.run))
    elif isinstance(cfg, EnsembleConfig):
        for seed, member in enumerate(cfg.members):
            smoke_multitask_run(Path(member), seed)


def smoke_multitask_run(run: Path, seed: int = 0) -> None:
    """A one-epoch tiny ``facray train`` run in ``run`` (unless one is there), on the smoke prepared
    set beside it: what ``evaluate``, ``ensemble`` and ``distill`` smoke-test on."""
    if not RunFolder(run).is_multitask:
        prepared = smoke_prepared(run.parent / "smoke_prepared")
        train(MultitaskConfig(prepared=str(prepared), out=str(run), seed=seed,
                              **{**MultitaskConfig.SMOKE, "epochs": 1}))
