"""The pure-torch fused trainer: independence of the stacked models, early stopping, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facray.attributes import ATTRIBUTE_INDEX
from facray.training.binary import FusedBinaryTrainer, TrainerConfig
from facray.training.metrics import confusion_metrics
from facray.training.binary_jobs import BinaryJob
from facray.training.splits import array_batches

A, B, C = "Eyeglasses", "Smiling", "Wearing_Hat"


def _data(n=48, seed=0, size=16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 40)).astype(np.int8)
    image = rng.integers(0, 60, (n, size, size, 3)).astype(np.uint8)
    image[labels[:, ATTRIBUTE_INDEX[A]] == 1, :4] += 150  # a learnable cue for A
    return {"image": image, "sketch": image[..., 0].copy(), "labels": labels}


def _train(jobs, data, val, epochs, kind="loop", patience=5, mutate=None, lr=1e-3):
    cfg = TrainerConfig(batch_size=8, image_size=16, patience=patience, stack=kind, seed=1, lr=lr)
    t = FusedBinaryTrainer(jobs, cfg)
    for e in range(epochs):
        if not t.running:
            break
        t.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
    return t


def _weights(t, key):
    return t.best[key] if key not in t.running else t.stacks[t.states[key].job.modality].export(
        t.active[t.states[key].job.modality].index(key))


@pytest.mark.parametrize("kind", ["loop", "grouped"])
def test_fused_equals_alone(kind):
    data, val = _data(), _data(seed=1)
    jobs = [BinaryJob(a, m, 3) for a in (A, B, C) for m in ("real", "sketch")]
    fused = _train(jobs, data, val, 3, kind)
    alone = _train([BinaryJob(A, "real", 3)], data, val, 3, kind)
    for name, w in alone.best[f"{A}__real"].items():
        torch.testing.assert_close(fused.best[f"{A}__real"][name], w, atol=2e-5, rtol=1e-4)


def test_changing_another_models_labels_does_not_change_a_model():
    data, val = _data(), _data(seed=1)
    jobs = [BinaryJob(A, "real", 2), BinaryJob(B, "real", 2)]
    base = _train(jobs, data, val, 2)
    flipped = {**data, "labels": data["labels"].copy()}
    flipped["labels"][:, ATTRIBUTE_INDEX[B]] ^= 1
    other = _train(jobs, flipped, val, 2)
    for name, w in base.best[f"{A}__real"].items():
        assert torch.equal(other.best[f"{A}__real"][name], w)
    assert any(not torch.equal(other.best[f"{B}__real"][n], w) for n, w in base.best[f"{B}__real"].items())


def test_stopping_a_model_does_not_change_the_others_and_frees_it():
    data, val = _data(), _data(seed=1)
    short = BinaryJob(B, "real", 1)  # stops after epoch 1 (its own budget)
    both = _train([BinaryJob(A, "real", 3), short], data, val, 3)
    alone = _train([BinaryJob(A, "real", 3)], data, val, 3)
    assert both.states[short.key].stopped == "max_epochs" and both.states[short.key].epochs_done == 1
    assert both.running == [] and both.states[f"{A}__real"].epochs_done == 3
    for name, w in alone.best[f"{A}__real"].items():
        assert torch.equal(both.best[f"{A}__real"][name], w)


def test_early_stopping_restores_the_best_epoch():
    data = _data(n=64)
    val = {**data, "labels": 1 - data["labels"]}  # learning the train labels makes val worse
    cfg = TrainerConfig(batch_size=8, image_size=16, patience=2, lr=3e-3, seed=1)
    t = FusedBinaryTrainer([BinaryJob(A, "real", 10)], cfg)
    losses, snapshots = [], []
    for e in range(10):
        if not t.running:
            break
        rec = t.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
        losses.append(rec[f"{A}__real"]["val_loss"])
        snapshots.append(t.stacks["real"].export(0) if t.running else None)
    st = t.states[f"{A}__real"]
    assert st.stopped == "early_stopping" and len(losses) == st.best_epoch + 2
    assert st.best_epoch == int(np.argmin(losses)) + 1
    best = snapshots[st.best_epoch - 1]
    for name, w in best.items():
        assert torch.equal(t.best[f"{A}__real"][name], w)
    history = [h["val_loss"] for h in st.history]
    assert history == losses and {"accuracy", "loss", "val_accuracy", "val_precision", "f1"} <= set(st.history[0])


def test_a_job_with_no_labelled_validation_rows_trains_every_epoch_and_keeps_the_last():
    """Regression: its NaN validation loss counted as a bad epoch, so such a job stopped after
    ``patience`` epochs and kept its first epoch's weights, with a validation accuracy of 0."""
    data, val = _data(), _data(seed=1)
    val["labels"][:, ATTRIBUTE_INDEX[A]] = -1  # A unlabelled in validation, B labelled
    t = _train([BinaryJob(A, "real", 5), BinaryJob(B, "real", 5)], data, val, 4, patience=1)
    st = t.states[f"{A}__real"]
    assert (st.stopped, st.epochs_done, st.best_epoch, st.bad_epochs) == ("", 4, 4, 0)
    assert all(np.isnan(h["val_loss"]) and np.isnan(h["val_accuracy"]) for h in st.history)
    assert all(np.isfinite(h["accuracy"]) for h in st.history)
    latest = t.stacks["real"].export(t.active["real"].index(f"{A}__real"))
    assert all(torch.equal(t.best[f"{A}__real"][n], w) for n, w in latest.items())
    assert all(np.isfinite(h["val_accuracy"]) for h in t.states[f"{B}__real"].history)


@pytest.mark.parametrize("online_augment", [False, True])
def test_checkpoint_round_trip_continues_identically(online_augment):
    data, val = _data(), _data(seed=1)
    jobs = [BinaryJob(A, "real", 3), BinaryJob(B, "sketch", 3)]
    cfg = TrainerConfig(batch_size=8, image_size=16, patience=5, stack="grouped", seed=1, online_augment=online_augment)
    straight = FusedBinaryTrainer(jobs, cfg)
    for e in range(3):
        straight.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
    first = FusedBinaryTrainer(jobs, cfg)
    first.fit_epoch(array_batches(data, 8, True, 1, 0), array_batches(val, 32))
    resumed = FusedBinaryTrainer(jobs, cfg)
    resumed.load_state_dict(first.state_dict())
    for e in (1, 2):
        resumed.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
    for key in straight.best:
        for name, w in straight.best[key].items():
            torch.testing.assert_close(resumed.best[key][name], w)


def test_evaluate_best_gives_test_metrics_and_confusion():
    data, val = _data(), _data(seed=1)
    t = _train([BinaryJob(A, "real", 2)], data, val, 2)
    res = t.evaluate_best(array_batches(val, 16))[f"{A}__real"]
    (tn, fp), (fn, tp) = res["confusion"]
    assert tn + fp + fn + tp == 48 == res["test_count"]
    assert res["test_accuracy"] == pytest.approx((tp + tn) / 48)


def test_a_job_with_no_test_rows_scores_nan_not_zero():
    data, val = _data(), _data(seed=1)
    t = _train([BinaryJob(A, "real", 2)], data, val, 1)
    res = t.evaluate_best(iter(()))[f"{A}__real"]
    assert res["test_count"] == 0 and res["confusion"] == [[0, 0], [0, 0]]
    assert all(np.isnan(res[n]) for n in ("test_accuracy", "test_balanced_accuracy", "test_loss"))


def test_reports_leave_an_empty_confusion_out_of_balanced_accuracy_and_one_class():
    from facray.reports import balanced_accuracy, one_class_only
    assert np.isnan(balanced_accuracy("[[0, 0], [0, 0]]")) and not one_class_only("[[0, 0], [0, 0]]")
    assert balanced_accuracy("[[5, 0], [3, 0]]") == 0.5 and one_class_only("[[5, 0], [3, 0]]")


def test_confusion_metrics_handle_empty_classes():
    m = confusion_metrics([0, 5], [0, 5], [0, 0], [10, 0])
    assert m["precision"].tolist() == [0.0, 0.5] and m["recall"].tolist() == [0.0, 1.0]
    assert m["accuracy"].tolist() == [1.0, 0.5]


@pytest.mark.parametrize("kind", ["loop", "grouped"])
def test_stopping_the_first_of_many_keeps_every_others_adam_state(kind):
    """Regression: a stopped model that is not last in the stack used to shift the others' Adam
    moments by one (and crashed when the model count equalled a tensor dimension, 16 here)."""
    from facray.attributes import ATTRIBUTES
    data, val = _data(), _data(seed=1)
    first = BinaryJob(ATTRIBUTES[0], "real", 1)
    rest = [BinaryJob(a, "real", 3) for a in ATTRIBUTES[1:16]]
    together = _train([first, *rest], data, val, 3, kind)
    assert together.states[first.key].stopped == "max_epochs"
    for job in (rest[0], rest[7], rest[-1]):
        alone = _train([job], data, val, 3, kind)
        for name, w in alone.best[job.key].items():
            torch.testing.assert_close(together.best[job.key][name], w, atol=2e-5, rtol=1e-4)


def test_online_augmentation_does_not_depend_on_the_other_modality():
    data, val = _data(), _data(seed=1)
    cfg = TrainerConfig(batch_size=8, image_size=16, patience=5, seed=1, online_flip=True, online_augment=True)
    both = FusedBinaryTrainer([BinaryJob(A, "real", 2), BinaryJob(A, "sketch", 2)], cfg)
    alone = FusedBinaryTrainer([BinaryJob(A, "real", 2)], cfg)
    for t in (both, alone):
        for e in range(2):
            t.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
    for name, w in alone.best[f"{A}__real"].items():
        torch.testing.assert_close(both.best[f"{A}__real"][name], w)
    restored = FusedBinaryTrainer([BinaryJob(A, "real", 2)], cfg)
    restored.load_state_dict(alone.state_dict())
    assert torch.equal(restored.flip_generator.get_state(), alone.flip_generator.get_state())
    assert torch.equal(restored.augment_generator.get_state(), alone.augment_generator.get_state())
    plain = FusedBinaryTrainer([BinaryJob(A, "real", 2)], TrainerConfig(**{**vars(cfg), "online_augment": False}))
    for e in range(2):
        plain.fit_epoch(array_batches(data, 8, True, 1, e), array_batches(val, 32))
    assert any(not torch.equal(plain.best[f"{A}__real"][n], w) for n, w in alone.best[f"{A}__real"].items())


def test_class_balance_lifts_a_rare_attribute_off_its_majority_class():
    """8% positives with a faint cue: unweighted, the job answers 'no' for everyone; with the
    positive weight (negatives/positives, capped) it finds positives. Validation loss stays unweighted."""
    from facray.training.metrics import positive_weights
    rng = np.random.default_rng(0)
    n = 256
    labels = np.zeros((n, 40), np.int8)
    labels[:, ATTRIBUTE_INDEX[A]] = rng.random(n) < 0.08
    image = rng.integers(0, 60, (n, 16, 16, 3)).astype(np.uint8)
    image[labels[:, ATTRIBUTE_INDEX[A]] == 1, :2, :2] += 40
    data = {"image": image, "sketch": image[..., 0].copy(), "labels": labels}
    found = {}
    for balance in (False, True):
        weights = tuple(positive_weights(labels, 10.0).tolist()) if balance else None
        cfg = TrainerConfig(batch_size=32, image_size=16, patience=99, seed=1, lr=3e-3, positive_weights=weights)
        t = FusedBinaryTrainer([BinaryJob(A, "real", 3)], cfg)
        for e in range(3):
            t.fit_epoch(array_batches(data, 32, True, 1, e), array_batches(data, 64))
        found[balance] = t.states[f"{A}__real"].history[-1]["val_recall"]
    assert found[False] == 0 and found[True] > 0.3, found


@pytest.mark.parametrize("kind", ["loop", "grouped"])
def test_in_stack_lr_sweep_trains_each_model_as_a_run_at_its_own_lr(kind):
    """Three lrs of one job in one stack (Adam at the largest, smaller updates scaled) give the
    weights of three separate runs, each at its lr, from the same initial weights."""
    data, val = _data(), _data(seed=1)
    lrs = (3e-3, 1e-3, 1e-4)
    swept = _train([BinaryJob(A, "real", 3, lr) for lr in lrs] + [BinaryJob(B, "sketch", 3, 1e-4)],
                   data, val, 3, kind)
    assert sorted(swept.states) == [f"{A}__real__lr0.0001", f"{A}__real__lr0.001", f"{A}__real__lr0.003",
                                    f"{B}__sketch__lr0.0001"]
    for lr in lrs:
        alone = _train([BinaryJob(A, "real", 3)], data, val, 3, kind, lr=lr)
        assert swept.job_record(f"{A}__real__lr{lr:g}")["lr"] == lr
        for name, w in alone.best[f"{A}__real"].items():
            torch.testing.assert_close(swept.best[f"{A}__real__lr{lr:g}"][name], w, atol=2e-5, rtol=1e-4)
    first, last = (swept.best[f"{A}__real__lr{lr:g}"]["fc2.weight"] for lr in (3e-3, 1e-4))
    assert not torch.allclose(first, last)  # the lrs really differ


def test_combine_keeps_per_attribute_the_lr_with_the_best_validation_accuracy():
    from facray.training.combine import best_lr_records, choose_modalities

    def rec(attribute, modality, lr, val):
        return {"attribute": attribute, "modality": modality, "lr": lr, "dir": f"{attribute}{modality}{lr}",
                "best": {"val_accuracy": val}, "test": {"test_accuracy": val - 0.01}}
    records = [rec(A, "real", 1e-3, 0.80), rec(A, "real", 1e-4, 0.85), rec(A, "sketch", 1e-3, 0.83),
               rec(B, "real", 1e-3, 0.70), rec(B, "real", 1e-4, 0.70), rec(B, "sketch", 1e-4, 0.75)]
    chosen = {(r["attribute"], r["modality"]): r["lr"] for r in best_lr_records(records)}
    assert chosen == {(A, "real"): 1e-4, (A, "sketch"): 1e-3, (B, "real"): 1e-3, (B, "sketch"): 1e-4}
    table = choose_modalities(records).set_index("attribute")
    assert table.loc[A, ["modality", "lr"]].tolist() == ["real", 1e-4]
    assert table.loc[B, ["modality", "lr"]].tolist() == ["sketch", 1e-4]


def test_combine_ranks_a_job_without_validation_rows_below_a_validated_one_and_keeps_it_when_alone():
    from facray.training.combine import choose_modalities

    def rec(attribute, modality, val):
        return {"attribute": attribute, "modality": modality, "dir": f"{attribute}{modality}",
                "best": {"val_accuracy": val}, "test": {"test_accuracy": 0.5}}
    nan = float("nan")
    table = choose_modalities([rec(A, "real", nan), rec(A, "sketch", 0.6), rec(B, "real", 0.7), rec(B, "sketch", nan),
                               rec(C, "sketch", nan)]).set_index("attribute")
    assert table.modality.to_dict() == {A: "sketch", B: "real", C: "sketch"}
    assert table.loc[C, "sketch_dir"] == f"{C}sketch"


def test_a_diverging_model_stops_alone_and_keeps_no_weights():
    """lr 1e20 for one model of the stack: its first non-finite epoch stops it (status
    ``diverged``, the line names epoch, loss and lr), its weights are never kept or tested, and
    the model beside it trains on with finite weights."""
    data, val = _data(), _data(seed=1)
    bad, good = BinaryJob(A, "real", 3, lr=1e20), BinaryJob(B, "real", 3, lr=1e-3)
    t = _train([bad, good], data, val, 3)
    st = t.states[bad.key]
    assert st.stopped == "diverged" and st.epochs_done == 1
    assert "training diverged at epoch 1" in st.diverged and "1e+20" in st.diverged
    assert bad.key not in t.best and bad.key not in t.running
    assert all(torch.isfinite(v).all() for v in t.best[good.key].values() if v.is_floating_point())
    assert list(t.evaluate_best(array_batches(val, 16))) == [good.key]
    assert t.job_record(bad.key)["status"] == "diverged" and t.job_record(good.key)["status"] == "finished"


def test_balanced_accuracy_reads_one_class_perfection_as_half():
    """All 30 test faces women, every one called "not Male": accuracy 1.0, balanced accuracy 0.5
    (the rate of the class with no examples counts 0); a model right on both classes keeps 1.0."""
    m = confusion_metrics(tp=[0, 5], fp=[0, 0], fn=[0, 0], tn=[30, 25])
    assert m["accuracy"].tolist() == [1.0, 1.0]
    assert m["balanced_accuracy"].tolist() == [0.5, 1.0]
    m = confusion_metrics(tp=[3], fp=[1], fn=[1], tn=[5])
    assert m["balanced_accuracy"][0] == pytest.approx((3 / 4 + 5 / 6) / 2)


def test_one_sided_attributes_are_named_and_not_trained(capsys):
    """A women-only training split: Male is labelled but all -1, so it is left out (the line says the
    data, not the model, is one-sided); unlabelled attributes are left out silently; nothing
    trainable is refused."""
    from facray.attributes import ATTRIBUTES
    from facray.training.metrics import one_sided_attributes, trainable_attributes
    labels = np.random.default_rng(0).integers(0, 2, (50, 40)).astype(np.int8)
    labels[:, ATTRIBUTE_INDEX["Male"]] = 0
    labels[:, ATTRIBUTE_INDEX["Bald"]] = -1  # not labelled at all
    labels[:, ATTRIBUTE_INDEX["Smiling"]] = 1
    assert set(one_sided_attributes(labels, ATTRIBUTES)) == {"Male", "Smiling"}
    kept = trainable_attributes(labels, ["Male", "Smiling", "Bald", A], "prep")
    assert kept == [A]
    out = capsys.readouterr().out
    assert "Male: all 50 labelled training rows are negative (-1): the data is one-sided, not the model" in out
    assert "Smiling: all 50 labelled training rows are positive (1)" in out and "Bald" not in out
    with pytest.raises(ValueError, match=r"prep: none of the 2 selected attribute\(s\) has labelled training rows "
                                         r"of both classes \(Male, Smiling\)"):
        trainable_attributes(labels, ["Male", "Smiling"], "prep")
