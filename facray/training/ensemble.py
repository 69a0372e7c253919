"""``facray ensemble MEMBER... --out DIR``: one predictor from several. Runs on the driver.

The members (run folders of ``train``, ``train-binary`` + ``combine``, ``distill`` or a sweep's
trials; predictor folders; ``models:/`` URIs) are read and verified, their crops reconciled
(:func:`facray.predictors.ensemble.reconcile_inputs`), and the ensemble's temperatures and
thresholds fitted on one validation set (:func:`facray.training.metrics.fit_decisions`):
by default the one every member validated on, or ``--prepared``/``--val-split``. A member that
trained on any image of that set is refused: thresholds and temperatures fitted on a member's
training images would be fitted to its over-confidence there, not to new faces. A member whose
training rows cannot be known (a predictor written before 2026-12 given as a folder or URI) is
refused too: give its run folder.

``DIR`` is laid out like a run: ``model/`` (the predictor, which ``facray label --model DIR``
finds), ``members.csv`` (each member's weight and validation figures beside the ensemble's),
``report/`` (with ``--test-split``) and the MLflow store; the predictor is registered as
``facray-ensemble`` (alias ``newest``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from facray.attributes import ATTRIBUTES
from facray.data.prepared import read_metadata
from facray.predictors.calibration import apply_temperatures, calibration_record, expected_calibration_error
from facray.predictors.ensemble import reconcile_inputs
from facray.predictors.format import ENSEMBLE_FORMAT, Manifest
from facray.predictors.networks import load_predictor, read_predictor, write_ensemble
from facray.prepared_eval import PREDICT_ROWS, evaluate_on_prepared
from facray.preflight import check_tracking_store
from facray.run_data import recorded_settings
from facray.runs import RunFolder, RunFolderError
from facray.staged_runs import run_folder
from facray.tracking import register_predictor, resolve_tracking_uri, setup_mlflow
from facray.training.configs import EnsembleConfig
from facray.training.metrics import attribute_metrics, fit_decisions
from facray.training.splits import SplitSpec, load_validation, training_data, training_image_ids


@dataclass
class Member:
    source: str          # as the user named it
    manifest: Manifest
    weights: dict        # verified tensors
    training: dict | None  # its training_data record (facray.training.splits.training_data), if known


def read_member(source: str) -> Member:
    """Locate and verify one member (:func:`facray.predictors.networks.read_predictor`) and find
    which rows trained it: its manifest's ``training_data``, else the settings of the run folder
    it was given as, or of the run a combined predictor names."""
    manifest, weights = read_predictor(source)
    if manifest.format == ENSEMBLE_FORMAT:
        raise ValueError(f"{source} is an ensemble itself: name its members instead (they are listed in its "
                         "members.csv)")
    training = manifest.extra.get("training_data")
    for run in (source, manifest.extra.get("source_run")):
        if training is None and run and not str(run).startswith(("models:/", "runs:/")):
            try:
                settings = recorded_settings(run)
                training = training_data(settings, settings["prepared_version"])
            except (RunFolderError, KeyError):
                pass
    return Member(source, manifest, weights, training)


def validation_spec(cfg: EnsembleConfig, members: list[Member]) -> SplitSpec:
    """The rows the ensemble is fitted on: ``--val-split`` of ``--prepared``, or the validation
    rows every member shares. Raises ``ValueError`` when members validated on different rows or
    the prepared data is not the version they recorded."""
    known = [m.training for m in members if m.training]
    if cfg.val_split:
        prepared = cfg.prepared or (known[0]["prepared"] if known else None)
        if not prepared:
            raise ValueError("--val-split needs --prepared: no member records the data it trained on")
        train_split = known[0]["train_split"] if known else "train"
        return SplitSpec(prepared, train_split, cfg.val_split, "", cfg.holdout, cfg.seed)
    if len(known) < len(members):
        unknown = next(m.source for m in members if not m.training)
        raise ValueError(f"{unknown}: the rows it trained and validated on are not recorded (a predictor written "
                         "before 2026-12, given as a folder or URI): give its run folder")

    def rows(record: dict) -> tuple:
        holdout = record["val_split"] == "holdout"
        return (record["prepared_version"], record["val_split"], record["train_split"] if holdout else None,
                record["holdout"] if holdout else None, record["seed"] if holdout else None)
    if len({rows(r) for r in known}) > 1:
        first, other = known[0], next(r for r in known if rows(r) != rows(known[0]))
        raise ValueError(f"the members validated on different rows ({first['val_split']} of {first['prepared']} vs "
                         f"{other['val_split']} of {other['prepared']}, seeds {first['seed']}/{other['seed']}): name "
                         "rows none of them trained on with --prepared and --val-split")
    prepared = cfg.prepared or known[0]["prepared"]
    version = read_metadata(prepared)["shards"]
    if version != known[0]["prepared_version"]:
        raise ValueError(f"{prepared} holds shards {version}; the members validated on {known[0]['prepared_version']} "
                         "(re-prepared since?): pass --prepared with that data, or --val-split to name other rows")
    r = known[0]
    return SplitSpec(prepared, r["train_split"], r["val_split"], "", r["holdout"], r["seed"])


def check_not_trained_on(spec: SplitSpec, members: list[Member]) -> None:
    """Refuse (``ValueError``) any member that trained on an image of the validation rows, or
    whose training rows cannot be read. Members trained on another dataset (another source folder)
    share no image with it."""
    val_ids = np.unique(np.asarray(load_validation(spec, columns=())["image_id"]))
    meta = read_metadata(spec.prepared)
    for m in members:
        if not m.training:
            raise ValueError(f"{m.source}: cannot tell which images it trained on (a predictor written before "
                             "2026-12 given as a folder or URI): give its run folder")
        record = m.training
        if record["prepared_version"] == meta["shards"]:  # the same data, wherever it lies now
            record = {**record, "prepared": spec.prepared}
        try:
            other = read_metadata(record["prepared"])
            if (other.get("dataset"), other.get("root")) != (meta.get("dataset"), meta.get("root")):
                print(f"note: {m.source} trained on {other.get('dataset')} from {other.get('root')}, the ensemble "
                      f"validates on {meta.get('dataset')} from {meta.get('root')}: other images, not checked further",
                      flush=True)
                continue
            overlap = np.intersect1d(training_image_ids(record), val_ids)
        except FileNotFoundError as e:
            raise ValueError(f"{m.source}: its training data {record['prepared']} is gone ({e}); cannot check "
                             "it did not train on the validation rows") from None
        if len(overlap):
            raise ValueError(f"{m.source} trained on {len(overlap)} of the {len(val_ids)} validation images "
                             f"({spec.val_split} of {spec.prepared}, e.g. {overlap[0]}): fit the ensemble on rows "
                             "no member trained on (--prepared, --val-split)")


def build_ensemble(cfg: EnsembleConfig) -> tuple[Path, str | None, pd.DataFrame, str]:
    """Write (and register) the ensemble; see the module docstring. Returns the predictor folder,
    its model URI (or None), the per-member table and the test report's line ('' without
    ``--test-split``). Everything that can be refused is refused before any image is predicted;
    the predictor is written into a temporary folder and moved to ``model/`` once complete, so a
    failure never leaves a predictor without its thresholds and calibration."""
    if not cfg.members:
        raise ValueError("no members: name one or more runs, predictor folders or models:/ URIs")
    weights = list(cfg.weights) or [1.0] * len(cfg.members)
    if len(weights) != len(cfg.members) or min(weights) <= 0:
        raise ValueError(f"--weights: expected {len(cfg.members)} positive numbers (one per member), got {weights}")
    if cfg.tracking_uri:  # where models:/ members are registered
        import mlflow  # lazy: only a models:/ member needs MLflow (about 1 s to import)
        mlflow.set_tracking_uri(cfg.tracking_uri)
    members = [read_member(s) for s in cfg.members]
    reconcile_inputs([m.manifest for m in members], [m.source for m in members])
    spec = validation_spec(cfg, members)
    check_not_trained_on(spec, members)
    run = run_folder(cfg.out)  # a URI (s3://...): built in a local copy, pushed at the end
    run.pull()
    if cfg.register:
        check_tracking_store(resolve_tracking_uri(cfg.tracking_uri, run.location), cfg.experiment)
    covered = [a for a in ATTRIBUTES if any(a in m.manifest.attribute_names for m in members)]
    validation = {**spec.__dict__, "prepared_version": read_metadata(spec.prepared)["shards"]}
    building = run.root / ".model.partial"
    shutil.rmtree(building, ignore_errors=True)
    write_ensemble(building, [(m.manifest, m.weights) for m in members], weights, cfg.flip,
                   [{"attribute": a, "threshold": 0.5} for a in covered], None,
                   extra={"name": ensemble_name(members, weights, cfg.flip, validation),
                          "validation_data": validation, "members_training_data": [m.training for m in members]})
    predictor = load_predictor(building)
    val = load_validation(spec, ("image", "sketch") if predictor.needs_sketch else ("image",))
    member_probs = _member_probas(predictor, val)
    raw = predictor.combine(member_probs)
    temperatures, thresholds = fit_decisions(raw, val["labels"])
    calibrated = apply_temperatures(raw, temperatures)
    metrics = attribute_metrics(np.nan_to_num(calibrated), val["labels"], thresholds)
    manifest = Manifest.read(building)
    for c in manifest.attributes:
        j = ATTRIBUTES.index(c["attribute"])
        c.update(threshold=float(thresholds[j]), val_accuracy=float(metrics["accuracy"][j]),
                 val_balanced_accuracy=float(metrics["balanced_accuracy"][j]), test_accuracy=None)
    manifest.extra["thresholds"] = "validation"
    replace(manifest, calibration=calibration_record(temperatures, covered, "validation")).write(building)
    shutil.rmtree(run.model_dir, ignore_errors=True)
    building.rename(run.model_dir)
    table = _members_table(members, weights, predictor, member_probs, calibrated, thresholds, val["labels"])
    table.to_csv(run.root / "members.csv", index=False)
    shutil.rmtree(run.report_dir, ignore_errors=True)  # an earlier build's report would describe another model
    line = ""
    if cfg.test_split:
        line = evaluate_on_prepared(load_predictor(run.model_dir), spec.prepared, cfg.test_split, run.report_dir)[1]
    uri = _register(cfg, run, run.model_dir, table) if cfg.register else None
    run.push()
    return run.model_dir, uri, table, line


def ensemble_name(members: list[Member], weights: list[float], flip: bool, validation: dict) -> str:
    """``facray-ensemble:<digest>`` of what decides its probabilities and decisions (the members'
    weights files and calibration, their weights in the mean, flip averaging, the validation rows
    its temperatures and thresholds are fitted on), so two ensembles of the same files but other
    settings never pass for each other in ``label``'s resume keys."""
    what = json.dumps([[(m.manifest.weights_sha256, m.manifest.calibration) for m in members], weights, bool(flip),
                       validation], sort_keys=True)
    return f"facray-ensemble:{hashlib.sha256(what.encode()).hexdigest()[:12]}"


def _member_probas(predictor, data: dict) -> list[np.ndarray]:
    chunks = [predictor.member_probas(data["image"][i:i + PREDICT_ROWS],
                                      data["sketch"][i:i + PREDICT_ROWS] if "sketch" in data else None)
              for i in range(0, len(data["image"]), PREDICT_ROWS)]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(predictor.members))]


def _members_table(members: list[Member], weights: list[float], predictor, member_probs: list[np.ndarray],
                   calibrated: np.ndarray, thresholds: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Per member and for the ensemble: mean validation accuracy (at its own thresholds) and
    calibration error over the attributes it covers."""
    rows = []
    for m, w, member, p in zip(members, weights, predictor.members, member_probs):
        rows.append(_row(m.source, m.manifest.display_name, w, p, member.thresholds, labels))
    rows.append(_row("ensemble", predictor.name, sum(weights), calibrated, thresholds, labels))
    return pd.DataFrame(rows)


def _row(source: str, name: str, weight: float, probs: np.ndarray, thresholds: np.ndarray, labels: np.ndarray) -> dict:
    covered = ~np.isnan(thresholds)
    m = attribute_metrics(np.nan_to_num(probs[:, covered]), labels[:, covered], thresholds[covered])
    scored = m["count"] > 0
    return {"member": source, "name": name, "weight": weight, "attributes": int(covered.sum()),
            "val_accuracy": float(m["accuracy"][scored].mean()),
            "val_balanced_accuracy": float(m["balanced_accuracy"][scored].mean()),
            "val_ece": float(np.nanmean(expected_calibration_error(probs[:, covered], labels[:, covered])))}


def _register(cfg: EnsembleConfig, run: RunFolder, dest: Path, table: pd.DataFrame) -> str:
    import mlflow

    setup_mlflow(cfg.tracking_uri, run, cfg.experiment)
    with mlflow.start_run(run_name="ensemble"):
        mlflow.log_params({"members": ",".join(cfg.members)[:6000], "weights": ",".join(map(str, table.weight[:-1])),
                           "flip": cfg.flip})
        ensemble = table.iloc[-1]
        mlflow.log_metrics({"mean_val_accuracy": ensemble.val_accuracy, "mean_val_ece": ensemble.val_ece})
        mlflow.log_artifact(str(run.root / "members.csv"))
        if run.report_dir.is_dir():
            mlflow.log_artifacts(str(run.report_dir), "report")
        return register_predictor(dest, cfg.registered_name)
