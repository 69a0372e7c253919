"""`facray ensemble` and the ensemble predictor (no Ray Train: members are written directly; the
prepared data comes from the session's Ray Data fixture)."""
import numpy as np
import pytest
import torch

from facray.attributes import ATTRIBUTES
from facray.data.prepared import prepared_crop, read_metadata, read_prepared
from facray.labelling.batch import label_batch
from facray.models.registry import build_model
from facray.predictors.calibration import apply_temperatures, temperatures_of
from facray.predictors.networks import load_predictor, write_multitask_predictor
from facray.training.configs import EnsembleConfig
from facray.training.ensemble import build_ensemble


def _member(folder, prepared, seed, training=True, crop=None, **split):
    """A tiny seeded multi-task predictor over every attribute (untrained: its numbers mean
    nothing, which is all these tests need), recording the rows it 'trained' on."""
    torch.manual_seed(seed)
    model = build_model("abm-trunk-tiny", 32)
    meta = read_metadata(prepared)
    record = {"prepared": str(prepared), "prepared_version": meta["shards"], "train_split": "train",
              "val_split": "val", "test_split": "test", "holdout": 0.1, "seed": 0, **split}
    choices = [{"attribute": a, "threshold": 0.5, "val_accuracy": None, "test_accuracy": None} for a in ATTRIBUTES]
    return write_multitask_predictor(folder, "abm-trunk-tiny", {}, model.state_dict(), crop or prepared_crop(meta),
                                     32, choices, extra={"training_data": record} if training else {})


@pytest.fixture
def members(prepared_small, tmp_path):
    return [_member(tmp_path / f"m{i}", prepared_small, seed=i) for i in range(2)]


def _test_crops(prepared):
    return read_prepared(prepared, ("test",), ("image",), variants=("original",))


def test_an_ensemble_is_the_calibrated_weighted_mean_of_its_members(prepared_small, members, tmp_path):
    dest, uri, table, line = build_ensemble(EnsembleConfig(members=tuple(map(str, members)), out=str(tmp_path / "e"),
                                                           weights=(1.0, 3.0), register=False, test_split="test"))
    assert uri is None and list(table.member)[-1] == "ensemble" and len(table) == 3
    ensemble = load_predictor(tmp_path / "e")  # the ensemble folder resolves to its model/, like a run
    images = _test_crops(prepared_small)["image"]
    a, b = (load_predictor(m).predict_proba(images) for m in members)
    temperatures = temperatures_of(ensemble.manifest.calibration)
    expected = apply_temperatures((1 * a + 3 * b) / 4, temperatures)
    assert np.allclose(ensemble.predict_proba(images), expected, atol=1e-5)
    assert ensemble.attributes == list(ATTRIBUTES) and not np.isnan(ensemble.thresholds).any()
    # evaluate's report on the test split: balanced accuracy and calibration beside accuracy.
    report = (tmp_path / "e" / "report" / "report.csv").read_text()
    assert {"balanced_accuracy", "ece", "ece_raw", "coverage_at_0.9"} <= set(report.splitlines()[0].split(","))
    assert (tmp_path / "e" / "report" / "reliability.png").stat().st_size > 0 and "ECE" in line
    # label loads it like any predictor.
    rows = label_batch({"path": np.array(["x"] * 3, object), "error": np.array([""] * 3, object),
                        "image": images[:3]}, ensemble)
    assert np.allclose(rows["Smiling_prob"], expected[:3, ATTRIBUTES.index("Smiling")], atol=1e-5)


def test_flip_averaging_means_each_member_over_the_mirror_image(prepared_small, members, tmp_path):
    build_ensemble(EnsembleConfig(members=tuple(map(str, members)), out=str(tmp_path / "e"), flip=True,
                                  register=False))
    ensemble = load_predictor(tmp_path / "e")
    images = _test_crops(prepared_small)["image"][:8]
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    parts = [(load_predictor(m).predict_proba(images) + load_predictor(m).predict_proba(mirrored)) / 2
             for m in members]
    assert np.allclose(ensemble.combine(ensemble.member_probas(images)), (parts[0] + parts[1]) / 2, atol=1e-5)


def test_a_member_that_trained_on_the_validation_rows_is_refused(prepared_small, members, tmp_path):
    leaky = _member(tmp_path / "leaky", prepared_small, seed=5, train_split="val", val_split="test")
    with pytest.raises(ValueError, match="validated on different rows"):
        build_ensemble(EnsembleConfig(members=(str(members[0]), str(leaky)), out=str(tmp_path / "e"), register=False))
    with pytest.raises(ValueError, match=r"leaky trained on \d+ of the \d+ validation images"):
        build_ensemble(EnsembleConfig(members=(str(members[0]), str(leaky)), out=str(tmp_path / "e"), register=False,
                                      val_split="val"))
    assert not (tmp_path / "e" / "model").exists()  # refused before anything was written


def test_members_must_crop_alike_and_say_what_they_trained_on(prepared_small, members, tmp_path):
    wide = _member(tmp_path / "wide", prepared_small, seed=3, crop={**prepared_crop(read_metadata(prepared_small)),
                                                                     "margin": 0.6})
    with pytest.raises(ValueError, match="wide crops faces with margin 0.6"):
        build_ensemble(EnsembleConfig(members=(str(members[0]), str(wide)), out=str(tmp_path / "e"), register=False))
    old = _member(tmp_path / "old", prepared_small, seed=4, training=False)
    with pytest.raises(ValueError, match="old: the rows it trained and validated on are not recorded"):
        build_ensemble(EnsembleConfig(members=(str(members[0]), str(old)), out=str(tmp_path / "e"), register=False))
    nested = str(tmp_path / "e")
    build_ensemble(EnsembleConfig(members=tuple(map(str, members)), out=nested, register=False))
    with pytest.raises(ValueError, match="is an ensemble itself"):
        build_ensemble(EnsembleConfig(members=(str(members[0]), nested), out=str(tmp_path / "e2"), register=False))
    with pytest.raises(ValueError, match="expected 2 positive numbers"):
        build_ensemble(EnsembleConfig(members=tuple(map(str, members)), out=str(tmp_path / "e"), weights=(1.0,)))


def test_distill_checks_its_teacher_and_counts_the_unlabelled_rows_before_ray(prepared_small, members, tmp_path):
    from facray.training.configs import DistillConfig
    from facray.training.distill_task import DistillTask

    base = dict(prepared=str(prepared_small), model="abm-trunk-tiny", image_size=32, epochs=1, batch_size=16)
    plan = DistillTask().plan(DistillConfig(**base, teacher=str(members[0]), unlabelled=str(prepared_small),
                                            out=str(tmp_path / "s")))
    every_row = len(read_prepared(prepared_small, None, columns=())["labels"])
    assert plan.rows["unlabelled"] == every_row and f"unlabelled {every_row}" in plan.summary
    assert plan.summary.startswith("distilling ") and plan.shared["teacher_sha256"]
    with pytest.raises(ValueError, match="give the teacher's folder"):
        DistillTask().plan(DistillConfig(**base, teacher="models:/facray-ensemble@newest", out=str(tmp_path / "u")))
    wide = _member(tmp_path / "wide", prepared_small, seed=3, crop={**prepared_crop(read_metadata(prepared_small)),
                                                                     "margin": 0.6})
    with pytest.raises(ValueError, match="crops faces with margin 0.6"):
        DistillTask().plan(DistillConfig(**base, teacher=str(wide), out=str(tmp_path / "w")))
