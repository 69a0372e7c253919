"""Fixtures for ``--smoke-test`` runs, the demo and the tests: small stand-ins that exercise the
plumbing, never results."""
from __future__ import annotations

from pathlib import Path

from facray.attributes import ATTRIBUTES
from facray.models.abm import init_model
from facray.predictors.networks import write_predictor


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
