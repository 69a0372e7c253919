"""Ensembles of predictors (torch): the ``facray-ensemble`` predictor format and
:class:`EnsemblePredictor`, which answers like any other predictor (``predict_proba``, ``decide``,
``crop``, ``needs_sketch``), so ``facray label`` and ``facray evaluate`` load it as they load one
network. It is written by :func:`facray.predictors.networks.write_ensemble`; building one from runs
is :mod:`facray.training.ensemble`'s.

Per attribute, the ensemble's raw probability is the weighted mean of the probabilities of the
members that cover it (each member's own calibration applied first), optionally averaged over the
image and its mirror image (horizontal-flip test-time augmentation); the ensemble's own temperature
and threshold, fitted on a validation set no member trained on, come after
(:mod:`facray.predictors.calibration`).

Members must crop faces alike: the same margin and centring (a crop's size may differ: every
network resizes its input, so the ensemble crops at the largest size its members were trained on)
and, where several use sketches, the same number of sketch channels. :func:`reconcile_inputs`
says which member differs from which otherwise.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from facray.attributes import ATTRIBUTES
from facray.predictors.format import Manifest, PredictorError
from facray.predictors.thresholds import Thresholded, thresholds_of


def reconcile_inputs(manifests: list[Manifest], names: list[str]) -> tuple[dict, int, int]:
    """The crop, input size and sketch channels one ensemble of ``manifests`` can feed all its
    members (see the module docstring). Raises ``ValueError`` naming the first member whose
    crop or sketches differ, and how."""
    first = manifests[0]
    for manifest, name in zip(manifests[1:], names[1:]):
        for key in ("margin", "centre"):
            if manifest.crop.get(key) != first.crop.get(key):
                raise ValueError(f"{name} crops faces with {key} {manifest.crop.get(key)!r}, {names[0]} with "
                                 f"{first.crop.get(key)!r}: members must crop alike (prepare their data alike)")
    sketching = [(m, n) for m, n in zip(manifests, names) if m.needs_sketch]
    for manifest, name in sketching[1:]:
        if manifest.sketch_channels != sketching[0][0].sketch_channels:
            raise ValueError(f"{name} reads {manifest.sketch_channels}-channel sketches, {sketching[0][1]} "
                             f"{sketching[0][0].sketch_channels}-channel ones: members must sketch alike")
    crop = dict(max((m.crop for m in manifests), key=lambda c: c["size"]))
    return (crop, max(m.image_size for m in manifests),
            sketching[0][0].sketch_channels if sketching else 0)


class EnsemblePredictor(Thresholded):
    """The weighted mean of member predictors (see the module docstring)."""

    def __init__(self, manifest: Manifest, weights: dict, device: torch.device, build_member: Callable):
        """``build_member(manifest, weights)``: a member predictor from its verified parts
        (:func:`facray.predictors.networks.build_predictor`, on the ensemble's device)."""
        self.manifest, self.device = manifest, device
        pairs = manifest.members
        if any(w <= 0 for w, _ in pairs):
            raise PredictorError(f"{manifest.display_name}: member weights must be positive")
        self.members = [build_member(m, weights[str(i)]) for i, (_, m) in enumerate(pairs)]
        self.member_weights = np.array([w for w, _ in pairs], np.float64)
        self.flip = bool(manifest.extra.get("flip", False))
        self.choices, self.image_size, self.crop = manifest.attributes, manifest.image_size, manifest.crop
        self.sketch_channels = manifest.sketch_channels
        self.columns, self.thresholds = thresholds_of(self.choices)
        self.needs_sketch = any(m.needs_sketch for m in self.members)

    def member_probas(self, images: np.ndarray, sketches: np.ndarray | None = None) -> list[np.ndarray]:
        """Each member's (B, 40) probabilities (its own calibration applied; with ``flip``, the
        mean over the image and its mirror image)."""
        views = [(images, sketches)]
        if self.flip:  # (B, H, W[, C]): the width axis is 2
            views.append((np.ascontiguousarray(images[:, :, ::-1]),
                          None if sketches is None else np.ascontiguousarray(sketches[:, :, ::-1])))
        return [np.mean([m.predict_proba(x, s if m.needs_sketch else None) for x, s in views], axis=0)
                for m in self.members]

    def combine(self, member_probas: list[np.ndarray]) -> np.ndarray:
        """The weighted mean of :meth:`member_probas` per attribute over the members covering it,
        before the ensemble's own calibration: (B, 40) float32, NaN where no member covers."""
        total = np.zeros(member_probas[0].shape)
        weight = np.zeros(len(ATTRIBUTES))
        for w, member, p in zip(self.member_weights, self.members, member_probas):
            covered = member.covered
            total[:, covered] += w * p[:, covered]
            weight[covered] += w
        with np.errstate(invalid="ignore", divide="ignore"):
            out = (total / weight).astype(np.float32)
        out[:, weight == 0] = np.nan
        return out

    def predict_proba(self, images: np.ndarray, sketches: np.ndarray | None = None) -> np.ndarray:
        """(B, S, S, 3) uint8 crops [+ sketches] -> (B, 40) float32 calibrated P(attribute)."""
        return self.calibrate(self.combine(self.member_probas(images, sketches)))
