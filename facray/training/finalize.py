"""The end of a multi-task run, pure (no Ray): best weights, thresholds chosen on validation, test
metrics and the predictor record. Rank 0 of a Ray Train run calls it on its last epoch
(:meth:`facray.training.multitask_task.MultitaskRank.finalize`); ``bench/gpu_train.py`` calls it without Ray."""
from __future__ import annotations

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.data.prepared import prepared_crop
from facray.predictors.calibration import apply_temperatures, calibration_record, expected_calibration_error
from facray.predictors.networks import write_multitask_predictor
from facray.runs import RunFolder
from facray.training.configs import REGISTERED_PREFIX, MultitaskConfig
from facray.training.metrics import attribute_metrics, fit_decisions
from facray.training.multitask import MultiTaskTrainer
from facray.training.splits import training_data


def finalize(run: RunFolder, trainer: MultiTaskTrainer, val_batches, test_batches, labelled_attributes: list[str],
             cfg: MultitaskConfig, model_kwargs: dict, meta: dict, digest: str, resumed_from: int = 0) -> dict:
    """The end of a ``facray train`` run: restore the best epoch's weights, fit each attribute's
    temperature on validation (:mod:`facray.predictors.calibration`), choose its threshold on the
    calibrated validation probabilities (:func:`~facray.training.metrics.choose_thresholds`),
    score the test split at those thresholds and at 0.5 (and its calibration error, raw and calibrated), and write the predictor (``model/``) and
    ``metrics.json`` into ``run`` (a run folder, or a checkpoint in its layout). Returns the
    metrics record. ``meta``: the prepared data's metadata (its crop goes into the predictor);
    ``digest``: the run's settings hash; ``model_kwargs``: the builder arguments the predictor
    needs to rebuild the network."""
    trainer.restore_best()
    val = trainer.evaluate(val_batches)
    test = trainer.evaluate(test_batches)
    temperatures, thresholds = fit_decisions(val["probs"], val["labels"])
    val_probs, test_probs = (apply_temperatures(p, temperatures) for p in (val["probs"], test["probs"]))
    test["metrics"] = attribute_metrics(test_probs, test["labels"], thresholds)
    half = attribute_metrics(test_probs, test["labels"], 0.5)  # calibration keeps 0.5: the raw model's figure
    val_tuned = attribute_metrics(val_probs, val["labels"], thresholds)
    ece = expected_calibration_error(test_probs, test["labels"])
    ece_raw = expected_calibration_error(test["probs"], test["labels"])
    trained = [ATTRIBUTES.index(a) for a in labelled_attributes]
    per_attr = []
    for j in trained:
        m = {k: v[j].item() for k, v in test["metrics"].items()}
        per_attr.append({"attribute": ATTRIBUTES[j], "threshold": float(thresholds[j]),
                         "val_accuracy": float(val_tuned["accuracy"][j]), "test_accuracy": m["accuracy"],
                         "test_accuracy_at_0.5": float(half["accuracy"][j]),
                         "test_balanced_accuracy": m["balanced_accuracy"], "test_precision": m["precision"],
                         "test_recall": m["recall"], "test_f1": m["f1"], "temperature": float(temperatures[j]),
                         "test_ece": float(ece[j]), "test_ece_raw": float(ece_raw[j]),
                         "confusion": [[m["tn"], m["fp"]], [m["fn"], m["tp"]]], "test_count": m["count"]})
    state = {k: v.detach().cpu() for k, v in trainer.module.state_dict().items()}
    choices = [{k: r[k] for k in ("attribute", "threshold", "val_accuracy", "test_accuracy")} for r in per_attr]
    write_multitask_predictor(run.model_dir, cfg.model, model_kwargs, state,
                              prepared_crop(meta), trainer.cfg.image_size,
                              choices, extra={"name": f"{REGISTERED_PREFIX}{cfg.model}:{digest[:8]}",
                                              "settings_hash": digest, "training_data": training_data(cfg, meta["shards"]),
                                              "calibration": calibration_record(temperatures, labelled_attributes,
                                                                                "validation")})
    record = {"model": cfg.model, "settings_hash": digest, "status": "finished", "best_epoch": trainer.best_epoch,
              "epochs_run": trainer.epoch, "stopped_early": trainer.stopped, "resumed_from_epoch": resumed_from,
              "history": trainer.history, "attributes": per_attr,
              **{f"mean_{k}": _mean_of_scored([r[k] for r in per_attr])
                 for k in ("test_accuracy", "test_accuracy_at_0.5", "test_balanced_accuracy", "test_ece",
                           "test_ece_raw")}}
    if "identity" in test:  # closed-set identification of the test photos among the training identities
        record["identity"] = {"test_top1": test["identity"]["top1"], "test_top5": test["identity"]["top5"],
                              "test_cmc": test["identity"]["cmc"], "test_count": test["identity"]["count"],
                              "classes": model_kwargs["num_identities"]}
    run.write_metrics(record)
    return record


def _mean_of_scored(values: list[float]) -> float:
    """The mean over the attributes that had labelled test rows (NaN for the others); NaN if none had."""
    scored = [v for v in values if not np.isnan(v)]
    return float(np.mean(scored)) if scored else float("nan")
