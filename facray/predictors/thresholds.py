"""Decisions from a predictor's thresholds, without torch: what the labelling driver needs to
name and decide, and the shared half of every network predictor (calibration, thresholds,
abstention)."""
from __future__ import annotations

from functools import cached_property

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.predictors.calibration import apply_temperatures, confidence, temperatures_of
from facray.predictors.format import Manifest


def thresholds_of(choices: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The manifest's per-attribute choices -> (covered columns of the 40, (40,) thresholds with
    NaN where not covered; 0.5 where a choice names none)."""
    columns = np.array([ATTRIBUTES.index(c["attribute"]) for c in choices], dtype=np.int64)
    thresholds = np.full(len(ATTRIBUTES), np.nan)
    thresholds[columns] = [c.get("threshold", 0.5) for c in choices]
    return columns, thresholds


class Thresholded:
    """Calibration, decisions and naming from the manifest alone, shared by every predictor kind.
    ``min_confidence``: ``facray label --min-confidence``, 0 = decide every covered cell."""
    manifest: Manifest
    thresholds: np.ndarray
    min_confidence: float = 0.0
    calibrated: bool = True  # False: predict_proba returns the raw outputs (to fit or measure calibration)

    @cached_property
    def temperatures(self) -> np.ndarray | None:
        """(40,) temperatures of the manifest's calibration (read once, not per batch); None without."""
        return temperatures_of(self.manifest.calibration)

    def calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Raw (B, 40) sigmoid outputs -> the probabilities the predictor reports: its manifest's
        per-attribute temperatures applied (:mod:`facray.predictors.calibration`), or as they are
        for a predictor without them."""
        if self.temperatures is None or not self.calibrated:
            return probs
        return apply_temperatures(probs, self.temperatures)

    @property
    def covered(self) -> np.ndarray:
        """(40,) bool: the attributes the predictor decides."""
        return ~np.isnan(self.thresholds)

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(B, 40) probabilities -> (B, 40) int8: 1/0 at each attribute's threshold; -1 where the
        predictor gives no decision: an attribute it does not cover, or (``min_confidence`` > 0)
        a cell whose decided class has a probability below ``min_confidence`` (it abstains)."""
        d = (probs >= self.thresholds).astype(np.int8)
        if self.min_confidence > 0:
            d[confidence(probs, self.thresholds) < self.min_confidence] = -1
        d[:, ~self.covered] = -1
        return d

    @property
    def attributes(self) -> list[str]:
        return self.manifest.attribute_names

    @property
    def name(self) -> str:
        return self.manifest.display_name


class PredictorInfo(Thresholded):
    """A predictor's names, decisions and input needs from its manifest, without its networks."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self.columns, self.thresholds = thresholds_of(manifest.attributes)
        self.needs_sketch = manifest.needs_sketch
