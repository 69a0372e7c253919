"""``facray evaluate --model M --dataset DIR``: scoring a model on a dataset it did not train on,
including datasets that label only some of the attributes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from facray.attributes import ATTRIBUTE_INDEX
from facray.dataset_eval import score_labels


def test_scores_only_what_both_the_dataset_and_the_model_label():
    """Male labelled and predicted: scored; Smiling labelled but not predicted, Bald predicted but
    not labelled: left out; a failed image (NaN decisions) and unknown labels are not scored."""
    truth = np.full((6, 40), -1, np.int8)
    decisions = np.full((6, 40), np.nan)
    m, s, b = ATTRIBUTE_INDEX["Male"], ATTRIBUTE_INDEX["Smiling"], ATTRIBUTE_INDEX["Bald"]
    truth[:, m] = [1, 1, 0, 0, 0, -1]
    decisions[:, m] = [1, 0, 0, 0, np.nan, 1]
    truth[:, s] = 1
    decisions[:, b] = 0
    report = score_labels(truth, decisions).set_index("attribute")
    assert list(report.index) == ["Male"]
    row = report.loc["Male"]
    assert row.scored == 4 and row.positives == 2
    assert row.accuracy == pytest.approx(3 / 4) and row.balanced_accuracy == pytest.approx((1 / 2 + 1) / 2)
    assert row.precision == 1.0 and row.recall == 0.5 and row.majority_accuracy == 0.5


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_evaluate_a_model_on_a_dataset_labelled_for_three_attributes(ray_session, synth_partial, tmp_path, capsys):
    """The issue's case: a CelebA-style list naming Male, Smiling and Eyeglasses only. The images
    are labelled through `label`'s path and the three attributes scored, each row's figures
    consistent with the labels written."""
    from facray.cli import main
    from facray.testing import smoke_model
    model = smoke_model(tmp_path / "model", crop_size=32)
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(model), "--dataset", str(synth_partial), "--split", "test",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "3 attribute(s) scored" in printed
    report = pd.read_csv(out / "report.csv").set_index("attribute")
    assert list(report.index) == ["Eyeglasses", "Male", "Smiling", "MEAN"]
    labels = pd.read_csv(out / "labels.csv", keep_default_na=False, na_values=[""])
    from facray.data.check import read_dataset
    truth, _ = read_dataset(synth_partial)
    merged = labels.merge(truth[["path", "Male"]], on="path", suffixes=("", "_true"))
    assert len(merged) == len(labels) == report.loc["Male", "scored"] == (truth.split == "test").sum()
    agree = (merged.Male == merged.Male_true).mean()
    assert report.loc["Male", "accuracy"] == pytest.approx(agree)
