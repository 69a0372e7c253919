"""Calibrated probabilities and abstention (facray.predictors.calibration, Thresholded.decide),
pure numpy: no torch, no Ray."""
import numpy as np
import pytest

from facray import columns
from facray.attributes import ATTRIBUTES
from facray.labelling.batch import label_batch
from facray.predictors.calibration import (apply_temperatures, calibrated_thresholds, calibration_record,
                                           expected_calibration_error, fit_temperatures, sigmoid, selective_accuracy,
                                           temperatures_of)
from facray.predictors.format import Manifest, PredictorError
from facray.predictors.thresholds import PredictorInfo
from facray.training.metrics import fit_decisions


def _calibrated_data(n=4000, seed=0):
    """Logits and labels drawn from them: sigmoid(z) is the true probability of each label."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 2.0, (n, len(ATTRIBUTES)))
    return z, (rng.random(z.shape) < sigmoid(z)).astype(np.int8)


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_scaling_undoes_over_and_under_confidence(scale):
    z, y = _calibrated_data()
    probs = sigmoid(scale * z)  # a deliberately over-confident (3x) or timid (0.4x) model
    temperatures = fit_temperatures(probs, y)
    assert np.median(temperatures) == pytest.approx(scale, rel=0.03) and np.allclose(temperatures, scale, rtol=0.15)
    before = expected_calibration_error(probs, y)
    after = expected_calibration_error(apply_temperatures(probs, temperatures), y)
    assert after.mean() < 0.5 * before.mean() and after.mean() < 0.03, (before.mean(), after.mean())


def test_calibration_never_changes_a_decision():
    z, y = _calibrated_data(500)
    probs = sigmoid(3 * z).astype(np.float32)
    temperatures, thresholds = fit_decisions(probs, y)
    calibrated = apply_temperatures(probs, temperatures)
    # Temperatures keep 0.5 fixed, so a threshold of 0.5 decides alike before and after...
    assert ((probs >= 0.5) == (calibrated >= 0.5)).all()
    # ...and any raw threshold has its calibrated twin.
    raw = np.full(len(ATTRIBUTES), 0.3)
    assert ((probs >= raw) == (calibrated >= calibrated_thresholds(raw, temperatures) - 1e-6)).all()
    assert thresholds.shape == (len(ATTRIBUTES),)


def test_expected_calibration_error_of_a_known_case():
    probs = np.full((100, 1), 0.9)
    labels = np.r_[np.ones(70), np.zeros(30)].astype(int)[:, None]  # says 0.9, 70% are positive
    assert expected_calibration_error(probs, labels)[0] == pytest.approx(0.2)
    labels[:, 0] = -1  # nothing labelled: no figure rather than 0
    assert np.isnan(expected_calibration_error(probs, labels)[0])


def test_one_sided_or_unlabelled_columns_keep_temperature_one():
    probs = np.random.default_rng(1).random((50, 3))
    labels = np.stack([np.ones(50), np.full(50, -1), np.r_[np.ones(25), np.zeros(25)]], 1).astype(int)
    t = fit_temperatures(probs, labels)
    assert t[0] == 1 and t[1] == 1 and t[2] != 1


def test_abstention_leaves_exactly_the_unsure_cells_empty():
    manifest = Manifest.from_json({"format": "facray-multitask", "attributes": [
        {"attribute": "Smiling", "threshold": 0.5}, {"attribute": "Male", "threshold": 0.7}],
        "image_size": 8, "crop": {"size": 8}, "sketch_channels": 0, "weights_sha256": "x", "tensor_shapes": {},
        "model": "abm-trunk-tiny"})
    info = PredictorInfo(manifest)
    probs = np.full((4, len(ATTRIBUTES)), np.nan, np.float32)
    s, m = ATTRIBUTES.index("Smiling"), ATTRIBUTES.index("Male")
    probs[:, s] = [0.95, 0.6, 0.05, 0.3]
    probs[:, m] = [0.95, 0.75, 0.2, 0.91]
    assert info.decide(probs)[:, [s, m]].tolist() == [[1, 1], [1, 1], [0, 0], [0, 1]]
    info.min_confidence = 0.9
    # Smiling: 0.6 and 0.3 are unsure (0.6, 0.7 < 0.9); Male: 0.75 decides 1 at only 0.75, 0.2
    # decides 0 at only 0.8.
    assert info.decide(probs)[:, [s, m]].tolist() == [[1, 1], [-1, -1], [0, -1], [-1, 1]]
    assert (info.decide(probs)[:, np.isnan(info.thresholds)] == -1).all()  # uncovered stay undecided

    class Fixed(PredictorInfo):
        name = "fixed"

        def predict_proba(self, images, sketches=None):
            return probs[:len(images)]
    predictor = Fixed(manifest)
    predictor.min_confidence = 0.9
    rows = label_batch({columns.PATH: np.array(list("abcd"), object), columns.ERROR: np.array([""] * 4, object),
                        columns.IMAGE: np.zeros((4, 8, 8, 3), np.uint8)}, predictor)
    assert np.isnan(rows["Smiling"][[1, 3]]).all() and rows["Smiling"][[0, 2]].tolist() == [1, 0]
    assert rows["Smiling_prob"][1] == pytest.approx(0.6)  # the probability stays: only the decision abstains


def test_selective_accuracy_counts_what_is_kept():
    probs = np.array([[0.95], [0.6], [0.02], [0.92]])
    labels = np.array([[1], [0], [0], [0]])
    coverage, accuracy = selective_accuracy(probs, labels, np.array([0.5]), 0.9)
    assert coverage[0] == pytest.approx(0.75) and accuracy[0] == pytest.approx(2 / 3)


def test_a_manifest_with_a_bad_calibration_is_refused():
    record = {"format": "facray-multitask", "attributes": [{"attribute": "Smiling"}], "image_size": 8,
              "crop": {"size": 8}, "sketch_channels": 0, "weights_sha256": "x", "tensor_shapes": {}}
    good = calibration_record(np.full(len(ATTRIBUTES), 2.0), ["Smiling"], "validation")
    assert temperatures_of(Manifest.from_json({**record, "calibration": good}).calibration)[
        ATTRIBUTES.index("Smiling")] == 2.0
    with pytest.raises(PredictorError, match="T > 0"):
        Manifest.from_json({**record, "calibration": {"method": "temperature", "temperature": {"Smiling": -1}}})
    with pytest.raises(PredictorError, match="not known"):
        Manifest.from_json({**record, "calibration": {"method": "isotonic"}})


def test_a_manifest_writes_a_figure_nobody_scored_as_json_null(tmp_path):
    """A NaN (an attribute without labelled test rows) is written as null: JSON has no NaN."""
    import json
    record = {"format": "facray-multitask", "attributes": [{"attribute": "Smiling", "threshold": 0.5,
                                                            "test_accuracy": float("nan"), "val_accuracy": 0.9}],
              "image_size": 8, "crop": {"size": 8}, "sketch_channels": 0, "weights_sha256": "x", "tensor_shapes": {}}
    Manifest.from_json(record).write(tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    choice = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the manifest"))["attributes"][0]
    assert choice["test_accuracy"] is None and choice["val_accuracy"] == 0.9
    record["attributes"][0]["threshold"] = float("nan")  # a decision field is never written as null
    with pytest.raises(ValueError, match="not JSON compliant"):
        Manifest.from_json(record).write(tmp_path)
