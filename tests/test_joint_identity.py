"""The joint attribute-identity network: Kronecker fusion, gradients into both branches, the
closed-set identity split, identification metrics, and the whole path on Ray."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facray.attributes import ATTRIBUTE_INDEX, IDENTITY_ATTRIBUTES
from facray.data.celeba import identity_split
from facray.models.joint import JointAttributeIdentityNet, kronecker
from facray.models.registry import build_model
from facray.training.metrics import identification_metrics
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.splits import array_batches, identity_indices

from conftest import assert_cam_grid, read_png


def test_kronecker_is_the_per_row_outer_product():
    a, b = torch.randn(3, 4), torch.randn(3, 5)
    out = kronecker(a, b)
    assert out.shape == (3, 20)
    for i in range(3):
        torch.testing.assert_close(out[i], torch.kron(a[i], b[i]))


def test_paper_trunk_and_fusion_shapes():
    model = JointAttributeIdentityNet(64, num_identities=7, widths=(4, 8, 8, 16, 16), hidden=32)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    pools = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 16 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    # max-pool after convolutions 2, 4, 8, 12: count the convolutions before each pool
    conv_positions = [i for i, m in enumerate(model.features) if isinstance(m, torch.nn.Conv2d)]
    assert [sum(p > c for c in conv_positions) for p in pools] == [2, 4, 8, 12]
    assert model.fused.tolist() == [ATTRIBUTE_INDEX[a] for a in IDENTITY_ATTRIBUTES]
    assert model.identity_branch[0].in_features == 10 * 16  # 10 attributes (x) 16 pooled features
    out = model.eval()(torch.rand(2, 3, 64, 64))
    assert out["attributes"].shape == (2, 40) and out["identity"].shape == (2, 7)
    assert "identity" not in JointAttributeIdentityNet(64, widths=(4, 8, 8, 16, 16), hidden=8)(torch.rand(2, 3, 64, 64))
    every = JointAttributeIdentityNet(64, num_identities=3, widths=(4, 8, 8, 16, 16), hidden=8, fusion="all")
    assert every.identity_branch[0].in_features == 40 * 16


def test_identity_loss_reaches_the_attribute_branch_through_the_fusion():
    torch.manual_seed(0)
    model = build_model("joint-attr-id-tiny", 32, num_identities=5)
    out = model(torch.rand(4, 3, 32, 32))
    F.cross_entropy(out["identity"], torch.tensor([0, 1, 2, 3])).backward()
    assert model.attribute_branch[-1].weight.grad.abs().sum() > 0  # only via the Kronecker product
    assert model.features[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    out = model(torch.rand(4, 3, 32, 32))
    F.binary_cross_entropy_with_logits(out["attributes"], torch.ones(4, 40)).backward()
    assert model.attribute_branch[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.identity_branch.parameters())


def test_identity_split_puts_every_tested_person_in_training_too():
    rng = np.random.default_rng(0)
    identities = np.concatenate([np.repeat(np.arange(30), rng.integers(1, 12, 30)), [-1] * 20])
    parts = identity_split(identities, seed=1)
    assert np.array_equal(parts, identity_split(identities, seed=1))
    for person in range(30):
        mine = parts[identities == person]
        if len(mine) >= 2:
            assert (mine == 0).any() and (mine == 2).any()
        else:
            assert (mine == 0).all()
        if len(mine) >= 4:
            assert (mine == 1).any()
    assert set(parts[identities == -1]) <= {0, 1, 2}


def test_identification_metrics_and_class_indices():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    targets = np.array([0, 2, 2, -1])  # ranks 1, 2, 3; the last is not a training identity
    m = identification_metrics(scores, targets)
    assert m["count"] == 3 and m["cmc"] == pytest.approx([1 / 3, 2 / 3, 1.0]) and m["top1"] == pytest.approx(1 / 3)
    assert identity_indices(np.array([40, 7, 12, 99]), np.array([7, 12, 40])).tolist() == [2, 0, 1, -1]


def _people(n_people=6, per_person=8, size=32, seed=0):
    """Each person a colour and a pattern; attributes a function of the person."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 255, (n_people, 3))
    person = np.repeat(np.arange(n_people), per_person)
    images = np.clip(colours[person][:, None, None, :] + rng.normal(0, 25, (len(person), size, size, 3)), 0, 255)
    labels = (rng.random((n_people, 40)) < 0.5).astype(np.int8)[person]
    return {"image": images.astype(np.uint8), "labels": labels, "identity_index": person}


def test_joint_training_learns_identities_and_reports_identification():
    torch.manual_seed(0)
    data = _people()
    model = build_model("joint-attr-id-tiny", 32, num_identities=6, fusion="all")
    cfg = MultiTaskTrainerConfig(lr=3e-3, image_size=32, patience=100, online_flip=False, weight_decay=0)
    trainer = MultiTaskTrainer(model, cfg, "cpu")
    before = trainer.evaluate(array_batches(data, 16))
    for _ in range(25):
        record = trainer.fit_epoch(array_batches(data, 16, shuffle=True), array_batches(data, 16))
    after = trainer.evaluate(array_batches(data, 16))
    assert after["identity"]["loss"] < 0.7 * before["identity"]["loss"]
    assert after["identity"]["top1"] > 0.5 and record["val_identity_top1"] == after["identity"]["top1"]
    assert after["loss"] == pytest.approx(after["attribute_loss"] + after["identity"]["loss"], rel=1e-5)
    alone = MultiTaskTrainer(model, MultiTaskTrainerConfig(image_size=32, identity_weight=0), "cpu")
    assert "identity" not in alone.evaluate(array_batches(data, 16))


def test_validation_without_attribute_labels_still_stops_on_the_identity_loss():
    """Only the objectives with labelled rows make the validation loss: identities alone here, so
    early stopping still watches them; with neither, the loss is NaN and not scored."""
    data = _people()
    val = {**data, "labels": np.full_like(data["labels"], -1)}
    trainer = MultiTaskTrainer(build_model("joint-attr-id-tiny", 32, num_identities=6, fusion="all"),
                               MultiTaskTrainerConfig(image_size=32), "cpu")
    scored = trainer.evaluate(array_batches(val, 16))
    assert scored["scored"] and np.isnan(scored["attribute_loss"])
    assert scored["loss"] == pytest.approx(scored["identity"]["loss"]) and np.isfinite(scored["loss"])
    nothing = trainer.evaluate(array_batches({**val, "identity_index": np.full_like(data["identity_index"], -1)}, 16))
    assert not nothing["scored"] and np.isnan(nothing["loss"])


@pytest.mark.slow  # ~55 s: prepare, train, evaluate and label on Ray (the math: the tests above)
@pytest.mark.integration
@pytest.mark.timeout(480)
def test_identity_split_joint_training_on_ray(ray_session, tmp_path, learnable):
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.data.prepared import read_prepared
    from facray.data.synth import write_synthetic_celeba
    from facray.training.configs import MultitaskConfig
    from facray.runners.train import train

    root = write_synthetic_celeba(tmp_path / "celeba", n=64, seed=5, photos_per_identity=8)
    prepared = tmp_path / "p"
    prepare(PrepareConfig(root=str(root), out=str(prepared), size=32, augment=1, split="identity",
                          num_actors=1, batch_size=16))
    rows = read_prepared(prepared, columns=())
    tested = set(rows["identity"][rows["split"] == "test"])
    assert tested and tested <= set(rows["identity"][rows["split"] == "train"])
    base = dict(prepared=str(prepared), model="joint-attr-id-tiny", image_size=32, epochs=2, batch_size=16,
                cpus_per_worker=0.5, num_workers=1)
    with pytest.raises(ValueError, match="needs --data memory"):
        train(MultitaskConfig(out=str(tmp_path / "s"), data="stream", **base))
    record = train(MultitaskConfig(out=str(tmp_path / "joint"), **base))
    ident = record["identity"]
    assert ident["classes"] == 8 and ident["test_count"] == int((rows["split"] == "test").sum())
    assert 0 <= ident["test_top1"] <= ident["test_top5"] <= 1 and len(ident["test_cmc"]) == 8
    alone = train(MultitaskConfig(out=str(tmp_path / "attrs"), identity_weight=0, **base))
    assert "identity" not in alone and [r["attribute"] for r in alone["attributes"]] == learnable(prepared)

    # evaluate: the CMC curve and the class activation maps as files (and MLflow artifacts)
    from facray.predictors.networks import load_predictor
    from facray.reports import EvaluateConfig, evaluate_run
    _, report = evaluate_run(EvaluateConfig(run=str(tmp_path / "joint")))
    assert min(read_png(report / "identity_cmc.png").shape[:2]) >= 200
    assert_cam_grid(report / "cam_grid.png")
    assert "top-1" in (report / "report.md").read_text()
    predictor = load_predictor(tmp_path / "joint")  # labelling needs no identities, only attributes
    probs = predictor.predict_proba(np.zeros((2, 32, 32, 3), np.uint8))
    from facray.attributes import ATTRIBUTES
    trained = np.isin(ATTRIBUTES, learnable(prepared))  # the one-sided ones are left out: empty
    assert probs.shape == (2, 40) and np.isfinite(probs[:, trained]).all() and np.isnan(probs[:, ~trained]).all()
