"""Decisions from a predictor's thresholds, without torch: what the labelling driver needs to
name and decide, and the shared half of both network predictors."""
from __future__ import annotations

import numpy as np

from facray.attributes import ATTRIBUTES
from facray.predictors.format import Manifest


def thresholds_of(choices: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """The manifest's per-attribute choices -> (covered columns of the 40, (40,) thresholds with
    NaN where not covered; 0.5 where a choice names none)."""
    columns = np.array([ATTRIBUTES.index(c["attribute"]) for c in choices], dtype=np.int64)
    thresholds = np.full(len(ATTRIBUTES), np.nan)
    thresholds[columns] = [c.get("threshold", 0.5) for c in choices]
    return columns, thresholds


class Thresholded:
    """Decisions and naming from the manifest alone, shared by every predictor kind."""
    manifest: Manifest
    thresholds: np.ndarray

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """(B, 40) probabilities -> (B, 40) int8: 1/0 at each attribute's threshold; -1 where not covered."""
        d = (probs >= self.thresholds).astype(np.int8)
        d[:, np.isnan(self.thresholds)] = -1
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
