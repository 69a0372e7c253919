"""The multi-task models and trainer without Ray: every registered model's tiny variant learns,
weights load from a local file, thresholds, class balance, masked unknown labels, resume state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facray.attributes import ATTRIBUTES
from facray.models.registry import build_model, list_models, model_spec
from facray.training.metrics import attribute_metrics, choose_thresholds, positive_weights
from facray.training.losses import masked_bce
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.splits import array_batches

TINY = [n for n in list_models() if n.endswith("-tiny")]


def _data(n=32, size=32, seed=0):
    """Learnable: attribute j is on when patch j of the image is bright (a quarter of the rows)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    cell = size // 8
    patches = images[:, :8 * cell, :8 * cell].reshape(n, 8, cell, 8, cell, 3).mean(axis=(2, 4, 5)).reshape(n, 64)
    bright = patches[:, :len(ATTRIBUTES)]
    labels = (bright > np.quantile(bright, 0.75, axis=0)).astype(np.int8)
    labels[:, 5] = -1  # an attribute this dataset does not have
    return {"image": images, "labels": labels}


def test_every_family_has_a_tiny_variant():
    families = {"abm-trunk", "resnet18", "resnet50", "vgg19-transfer", "inception-v3", "attparsenet",
                "cascade-cnn", "tcdcn"}
    assert families <= set(list_models())
    assert {"abm-trunk-tiny", "resnet-tiny", "vgg-transfer-tiny", "inception-v3-tiny", "attparsenet-tiny",
            "cascade-cnn-tiny", "tcdcn-tiny"} <= set(TINY)


def test_the_kth_papers_cnns_have_their_layers():
    import torch.nn as nn
    from facray.models.kth import Inception
    cascade = build_model("cascade-cnn")
    convs = [m for m in cascade.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128] * 4 and sum(isinstance(m, nn.MaxPool2d) for m in cascade.features) == 4
    assert sum(isinstance(m, Inception) for m in cascade.features) == 1
    assert sum(isinstance(m, nn.Linear) for m in cascade.modules()) == 1
    tcdcn = build_model("tcdcn")
    convs = [m for m in tcdcn.features if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [(20, 5), (48, 3), (64, 3), (80, 2)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in tcdcn.features) == 3
    assert [m.out_features for m in tcdcn.classifier if isinstance(m, nn.Linear)] == [256, 40]


@pytest.mark.parametrize("name", TINY)
def test_tiny_variant_trains_and_its_loss_falls(name):
    torch.manual_seed(0)
    size = model_spec(name).input_size
    data = _data(n=16 if "inception" in name else 64, size=size)  # Inception v3 is heavy even at 75 px
    model = build_model(name, size)
    cfg = MultiTaskTrainerConfig(lr=3e-3, image_size=size, online_flip=False, patience=100, weight_decay=0)
    trainer = MultiTaskTrainer(model, cfg, "cpu")
    before = trainer.predict(array_batches(data, 16))[2]
    for _ in range(8 if "inception" in name else 15):
        trainer.fit_epoch(array_batches(data, 16, shuffle=True), array_batches(data, 16))
    after = trainer.predict(array_batches(data, 16))[2]
    assert after < 0.9 * before, (name, before, after)


def test_unknown_labels_are_masked_out_of_the_loss():
    logits = torch.zeros(2, 3, requires_grad=True)
    labels = torch.tensor([[1, -1, 0], [-1, -1, 1]])
    loss, per_attr = masked_bce(logits, labels)
    assert loss.item() == pytest.approx(np.log(2))  # mean over the 3 labelled entries only
    loss.backward()
    assert (logits.grad[labels < 0] == 0).all() and (logits.grad[labels >= 0] != 0).all()
    assert per_attr[1] == 0


def test_positive_weights_lift_rare_attributes_capped():
    labels = np.zeros((100, 3), np.int8)
    labels[:2, 0] = 1      # rare: 98/2 = 49 -> capped at 10
    labels[:50, 1] = 1     # balanced: 1
    labels[:, 2] = -1      # unknown: 1
    assert positive_weights(labels, 10.0).tolist() == [10.0, 1.0, 1.0]


def test_thresholds_maximise_validation_accuracy_and_never_lose_to_half():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (200, 4)).astype(np.int8)
    probs = np.clip(0.5 + 0.3 * labels + rng.normal(0, 0.1, labels.shape), 0, 1)  # scores shifted up
    labels[:, 3] = -1
    t = choose_thresholds(probs, labels)
    tuned, half = attribute_metrics(probs, labels, t)["accuracy"], attribute_metrics(probs, labels, 0.5)["accuracy"]
    assert (tuned[:3] >= half[:3]).all() and tuned[:3].mean() > half[:3].mean() + 0.05
    assert t[3] == 0.5  # no labels: the default stays
    unscored = attribute_metrics(probs, labels, t)
    assert unscored["count"][3] == 0 and np.isnan([unscored[k][3] for k in ("accuracy", "balanced_accuracy", "f1")]).all()
    assert np.isfinite(unscored["accuracy"][:3]).all()  # no labels: NaN, not a 0% that reads as a score
    for j in range(3):  # no other threshold does better on this data
        grid = np.linspace(0, 1, 201)
        best = max(((probs[:, j] >= g) == labels[:, j]).mean() for g in grid)
        assert tuned[j] >= best - 1e-9


def test_class_balance_moves_a_rare_attribute_off_its_majority_class():
    """A rare attribute that a plain loss leaves at 'never' is predicted with pos_weight."""
    rng = np.random.default_rng(0)
    n, size = 256, 16
    labels = np.zeros((n, len(ATTRIBUTES)), np.int8)
    labels[:, 0] = rng.random(n) < 0.08  # 8% positives
    images = rng.integers(0, 60, (n, size, size, 3), dtype=np.uint8)
    images[labels[:, 0] == 1, :4, :4] = 255  # a faint cue in a corner
    data = {"image": images, "labels": labels}
    positives = {}
    for balance in (False, True):
        torch.manual_seed(0)
        cfg = MultiTaskTrainerConfig(lr=5e-3, image_size=size, online_flip=False, patience=99)
        pw = positive_weights(labels, 10.0) if balance else None  # class balance: a positive weight per attribute
        trainer = MultiTaskTrainer(build_model("abm-trunk-tiny", size), cfg, "cpu", pw)
        for _ in range(6):
            trainer.fit_epoch(array_batches(data, 32, shuffle=True), array_batches(data, 64))
        probs = trainer.predict(array_batches(data, 64))[0]
        positives[balance] = int((probs[:, 0] >= 0.5).sum())
    assert positives[False] == 0 and positives[True] > 0


def test_state_round_trips_through_weights_only_load(tmp_path):
    size = 32
    data = _data(n=16, size=size)
    cfg = MultiTaskTrainerConfig(image_size=size)
    trainer = MultiTaskTrainer(build_model("abm-trunk-tiny", size), cfg, "cpu")
    trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 8))
    torch.save(trainer.state_dict(), tmp_path / "state.pt")
    again = MultiTaskTrainer(build_model("abm-trunk-tiny", size), cfg, "cpu")
    again.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert again.epoch == 1 and again.history == trainer.history
    a, b = trainer.predict(array_batches(data, 8))[0], again.predict(array_batches(data, 8))[0]
    assert np.allclose(a, b)


def test_pretrained_weights_from_a_local_file(tmp_path):
    """A torchvision backbone state dict (what torchvision caches) initialises the backbone; the
    40-way head stays fresh. Nothing is downloaded."""
    import torchvision
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", 64, weights_file=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert model.backbone.fc.out_features == len(ATTRIBUTES)
    torch.save({"bogus": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="backbone tensors match"):
        build_model("resnet18", 64, weights_file=str(tmp_path / "other.pth"))


def test_vgg_transfer_freezes_its_base_and_has_optional_regression_heads():
    model = build_model("vgg-transfer-tiny", 32, bbox_head=True, landmark_head=True)
    assert not any(p.requires_grad for p in model.features.parameters())
    out = model(torch.rand(2, 3, 32, 32))
    assert out["attributes"].shape == (2, 40) and out["bbox"].shape == (2, 4) and out["landmarks"].shape == (2, 10)


def test_ddp_shards_are_equal_and_disjoint():
    data = _data(n=11)
    shards = [list(array_batches(data, 4, shuffle=True, seed=3, rank=r, world=2)) for r in range(2)]
    sizes = [[len(b["labels"]) for b in s] for s in shards]
    assert sizes[0] == sizes[1] == [4, 1]


def test_cosine_schedule_spans_the_epoch_budget_and_sets_the_optimiser_rate():
    size = 16
    model = build_model("abm-trunk-tiny", size)
    cfg = MultiTaskTrainerConfig(lr=1e-2, image_size=size, lr_schedule="cosine", epochs=4)
    trainer = MultiTaskTrainer(model, cfg, torch.device("cpu"))
    assert [round(trainer.lr_at(e), 6) for e in range(5)] == [0.01, 0.008536, 0.005, 0.001464, 0.0]
    data = _data(16, size)
    record = trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 8))
    assert record["lr"] == 0.01
    trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 8))
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.lr_at(1)
    constant = MultiTaskTrainer(model, MultiTaskTrainerConfig(lr=1e-2, epochs=4, lr_schedule="constant"),
                                torch.device("cpu"))
    assert {constant.lr_at(e) for e in range(4)} == {0.01}


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def test_bottleneck_retraining_learns_the_new_head_only():
    torch.manual_seed(0)
    data = _data(n=32, size=32)
    model = build_model("resnet-tiny", 32, train_base=False)
    before = _params(model)
    bn_stats = model.backbone.bn1.running_mean.clone()
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig(image_size=32), "cpu", head_modules=("backbone.fc",))
    trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert _changed(before, model) == {"backbone.fc.weight", "backbone.fc.bias"}
    assert torch.equal(model.backbone.bn1.running_mean, bn_stats)  # the base's statistics stay too


def test_fine_tuning_trains_the_head_first_then_the_base_at_a_lower_rate():
    torch.manual_seed(0)
    data = _data(n=32, size=32)
    model = build_model("resnet-tiny", 32)
    cfg = MultiTaskTrainerConfig(lr=1e-2, image_size=32, head_epochs=1, base_lr_scale=0.1, weight_decay=0,
                                 lr_schedule="constant")
    trainer = MultiTaskTrainer(model, cfg, "cpu", head_modules=model_spec("resnet-tiny").head)
    before = _params(model)
    trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert _changed(before, model) == {"backbone.fc.weight", "backbone.fc.bias"}
    trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert "backbone.conv1.weight" in _changed(before, model)
    rates = {g["role"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert rates == {"head": pytest.approx(1e-2), "base": pytest.approx(1e-3)}


@pytest.mark.parametrize("name", TINY)
def test_every_registered_head_is_a_module_of_its_model(name):
    # A typo in a registry head would silently train nothing at the head rate; the identity branch
    # exists only when the model is built with identities.
    extra = {"num_identities": 3} if model_spec(name).identity_output else {}
    modules = dict(build_model(name, **extra).named_modules())
    assert set(model_spec(name).head) <= set(modules)


def test_a_head_the_model_was_built_without_is_skipped():
    model = build_model("joint-attr-id-tiny", 32)  # no identities: no identity branch
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig(image_size=32), "cpu",
                               head_modules=model_spec("joint-attr-id-tiny").head)
    head_params = {id(p) for p in model.attribute_branch.parameters()}
    (group,) = [g for g in trainer.optimizer.param_groups if g["role"] == "head"]
    assert {id(p) for p in group["params"]} == head_params


def test_a_threshold_that_wins_by_chance_on_validation_stays_at_half():
    # Scores carrying no shift: the exact validation optimum moves off 0.5 by luck; the sign test
    # keeps 0.5. A real shift (every score 0.3 too high) passes the test.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, (300, 1)).astype(np.int8)
    probs = np.clip(0.5 + 0.2 * (labels - 0.5) + rng.normal(0, 0.2, labels.shape), 0, 1)
    assert choose_thresholds(probs, labels, min_z=0)[0] != 0.5
    assert choose_thresholds(probs, labels)[0] == 0.5
    assert choose_thresholds(np.clip(probs + 0.3, 0, 1), labels)[0] > 0.7


def test_validation_with_no_labels_trains_every_epoch_and_keeps_the_last():
    """Nothing labelled to validate on: a NaN validation loss that is neither divergence nor a bad
    epoch (it used to score 0.0, so the first epoch stayed best and patience stopped the run)."""
    torch.manual_seed(0)
    data = _data(n=32, size=32)
    val = {**data, "labels": np.full_like(data["labels"], -1)}
    trainer = MultiTaskTrainer(build_model("abm-trunk-tiny", 32),
                               MultiTaskTrainerConfig(image_size=32, patience=1, epochs=3), "cpu")
    records = [trainer.fit_epoch(array_batches(data, 16, shuffle=True), array_batches(val, 16)) for _ in range(3)]
    assert [r["best_epoch"] for r in records] == [1, 2, 3] and not trainer.exhausted(1)
    assert all(np.isnan(r["val_loss"]) and np.isnan(r["val_accuracy"]) for r in records)
    assert all(torch.equal(trainer.best_state[k], v) for k, v in trainer.module.state_dict().items())


def test_a_diverging_run_stops_at_the_first_non_finite_epoch_naming_loss_and_lr():
    from facray.training.run_record import TrainingDiverged
    torch.manual_seed(0)
    data = _data(n=32, size=32)
    model = build_model("abm-trunk-tiny", 32)
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig(lr=1e20, image_size=32, online_flip=False,
                                                             weight_decay=0), "cpu")
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch (1|2|3): loss .*validation loss .*"
                                               r"at learning rate 1e\+20"):
        for _ in range(3):
            trainer.fit_epoch(array_batches(data, 16, shuffle=True), array_batches(data, 16))


def test_a_student_fitted_to_a_fixed_teacher_reproduces_it_on_its_training_images():
    """Distillation (facray distill's loss): rows with ``soft`` targets and no labels train on the
    teacher's probabilities alone, and the student ends up answering like the teacher. The fixed
    teacher: P(attribute j) = sigmoid(slope_j x the image's standardised brightness), slopes from
    -3 to 3 (a function a small CNN can learn; a random network's outputs barely vary by image)."""
    rng = np.random.default_rng(3)
    level = rng.uniform(0.2, 1.0, 64)
    images = (rng.integers(0, 255, (64, 32, 32, 3)) * level[:, None, None, None]).astype(np.uint8)
    z = (level - level.mean()) / level.std()
    soft = (1 / (1 + np.exp(-z[:, None] * np.linspace(-3, 3, len(ATTRIBUTES))[None]))).astype(np.float32)
    soft[:, 7] = np.nan  # an attribute the teacher does not cover: no target, no gradient
    covered = ~np.isnan(soft[0])
    train = {"image": images, "labels": np.full((64, len(ATTRIBUTES)), -1, np.int8), "soft": soft}
    val = {"image": images, "labels": (soft > 0.5).astype(np.int8)}
    torch.manual_seed(2)
    cfg = MultiTaskTrainerConfig(lr=3e-3, image_size=32, online_flip=False, patience=100, weight_decay=0)
    trainer = MultiTaskTrainer(build_model("abm-trunk-tiny", 32), cfg, "cpu")

    def gap():
        return float(np.abs(trainer.predict(array_batches(val, 64))[0][:, covered] - soft[:, covered]).mean())
    before = gap()
    for _ in range(30):
        trainer.fit_epoch(array_batches(train, 16, shuffle=True), array_batches(val, 64))
    assert gap() < 0.06 and gap() < before / 3, (before, gap())
