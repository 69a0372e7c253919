"""AttParseNet: the paper's shapes, the two-stage schedule (stage 1 learns through the masks
alone), masks and landmarks flipped with the image, the ablation without masks, and the whole path
(prepare --masks -> facray train on Ray -> facray label) with a two-attribute model."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from facray.attributes import ATTRIBUTES
from facray.data.transforms.masks import attribute_masks
from facray.models.attparsenet import PAPER_WIDTHS, AttParseNet, map_side
from facray.models.registry import build_model
from facray.training.augment import flip_targets
from facray.training.losses import mask_mse
from facray.training.multitask import MultiTaskTrainer, MultiTaskTrainerConfig
from facray.training.splits import array_batches


def test_paper_layers_and_map_sizes():
    model = AttParseNet(218, widths=(4, 8, 8, 8, 8))
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [7, 3, 3, 3, 3, 3] and convs[-1].out_channels == 40
    assert all(c.padding == (0, 0) for c in convs)
    # The paper's 218x178 input gives its 96x76 maps.
    assert model.features(torch.zeros(1, 3, 218, 178)).shape == (1, 40, 96, 76)
    assert [c.out_channels for c in convs[:-1]] == [4, 8, 8, 8, 8]
    paper = [c.out_channels for c in build_model("attparsenet").features if isinstance(c, torch.nn.Conv2d)]
    assert paper == [*PAPER_WIDTHS, 40]
    out = build_model("attparsenet-tiny", 32)(torch.zeros(2, 3, 32, 32))
    assert out["attributes"].shape == (2, 40) and out["masks"].shape == (2, 40, map_side(32), map_side(32))
    assert map_side(128) == 51
    with pytest.raises(ValueError, match="at least 28 px"):
        map_side(20)


def _masked_data(n=32, size=32, mask_size=16, seed=0):
    """Faces' worth of structure without faces: labels random, masks drawn from jittered landmarks."""
    rng = np.random.default_rng(seed)
    base = np.array([[11, 13], [21, 13], [16, 18], [12, 24], [20, 24]], np.float32)
    landmarks = base[None] + rng.normal(0, 1, (n, 5, 2)).astype(np.float32)
    labels = rng.integers(0, 2, (n, len(ATTRIBUTES))).astype(np.int8)
    k = mask_size / size
    masks = np.stack([attribute_masks(lm * k, lab, (mask_size, mask_size)) for lm, lab in zip(landmarks, labels)])
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    return {"image": images, "labels": labels, "masks": masks, "landmarks": landmarks.reshape(n, 10)}


def test_stage_one_learns_through_the_masks_alone_then_both_losses():
    torch.manual_seed(0)
    data = _masked_data()
    model = build_model("attparsenet-tiny", 32)
    cfg = MultiTaskTrainerConfig(lr=3e-3, image_size=32, segmentation_epochs=1, patience=5)
    trainer = MultiTaskTrainer(model, cfg, "cpu")
    head = model.classifier.weight.detach().clone()
    first_conv = model.features[0].weight.detach().clone()
    before = mask_mse(model(torch.as_tensor(data["image"]).permute(0, 3, 1, 2).float() / 255)["masks"],
                      torch.as_tensor(data["masks"])).item()
    record = trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert record["stage"] == "segmentation" and record["best_epoch"] == 0 and trainer.bad_epochs == 0
    assert torch.equal(model.classifier.weight, head)  # no gradient reached the attribute layer
    assert not torch.equal(model.features[0].weight, first_conv)
    model.eval()
    after = mask_mse(model(torch.as_tensor(data["image"]).permute(0, 3, 1, 2).float() / 255)["masks"],
                     torch.as_tensor(data["masks"])).item()
    assert after < before
    record = trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert "stage" not in record and record["best_epoch"] == 2
    assert not torch.equal(model.classifier.weight, head)


def test_the_ablation_needs_no_masks_and_stage_one_needs_them():
    data = {k: v for k, v in _masked_data().items() if k != "masks"}
    model = build_model("attparsenet-tiny", 32)
    trainer = MultiTaskTrainer(model, MultiTaskTrainerConfig(image_size=32, mask_weight=0), "cpu")
    trainer.fit_epoch(array_batches(data, 8), array_batches(data, 16))
    with pytest.raises(ValueError, match="needs mask_weight > 0"):
        MultiTaskTrainerConfig(mask_weight=0, segmentation_epochs=2)
    staged = MultiTaskTrainer(model, MultiTaskTrainerConfig(image_size=32, segmentation_epochs=1), "cpu")
    with pytest.raises(ValueError, match="prepare --masks"):
        staged.fit_epoch(array_batches(data, 8), array_batches(data, 16))


def test_flipped_masks_and_landmarks_match_the_flipped_face():
    size = 32
    landmarks = np.array([[9, 12], [22, 12], [16, 18], [11, 24], [21, 24]], np.float32)
    labels = np.ones(len(ATTRIBUTES), np.int8)
    masks = torch.as_tensor(attribute_masks(landmarks, labels, (size, size)))[None]
    flip = torch.tensor([True])
    flipped_masks, flipped_lm = flip_targets(masks, torch.as_tensor(landmarks.reshape(1, 10) / size), flip)
    # The face mirrored: its left eye is the old right eye mirrored, and so on (pixel centres: x -> size-1-x).
    mirrored = (size - 1 - landmarks[[1, 0, 2, 4, 3], 0], landmarks[[1, 0, 2, 4, 3], 1])
    np.testing.assert_allclose(flipped_lm.view(5, 2)[:, 1].numpy() * size, mirrored[1])
    np.testing.assert_allclose(flipped_lm.view(5, 2)[:, 0].numpy() * size, size - landmarks[[1, 0, 2, 4, 3], 0])
    redrawn = torch.as_tensor(attribute_masks(np.stack(mirrored, 1), labels, (size, size)))
    agree = (flipped_masks[0] == redrawn).float().mean().item()
    assert agree > 0.97, agree  # the same regions, up to polygon rasterisation at the edges
    unflipped, same = flip_targets(masks, None, torch.tensor([False]))
    assert torch.equal(unflipped, masks) and same is None


@pytest.mark.slow  # ~90 s: prepare, train and label on Ray (the math: the tests above)
@pytest.mark.integration
@pytest.mark.timeout(480)
def test_prepare_masks_train_on_ray_and_label_with_two_attributes(ray_session, tmp_path):
    from facray.data.pipeline import PrepareConfig
    from facray.runners.prepare import prepare
    from facray.data.synth import write_synthetic_celeba, write_unlabelled_faces
    from facray.labelling.config import LabelConfig
    from facray.runners.label import label_images
    from facray.training.configs import MultitaskConfig
    from facray.runners.train import train

    root = write_synthetic_celeba(tmp_path / "celeba", n=60, seed=4)
    plain, masked = tmp_path / "plain", tmp_path / "masked"
    prepare(PrepareConfig(root=str(root), out=str(plain), size=32, augment=1, num_actors=1, batch_size=16))
    base = dict(model="attparsenet-tiny", image_size=32, epochs=2, segmentation_epochs=1, batch_size=16,
                cpus_per_worker=0.5, num_workers=2, attributes="Male,Smiling", data="stream")  # DDP in stage 1
    with pytest.raises(ValueError, match="prepare it with --masks"):
        train(MultitaskConfig(prepared=str(plain), out=str(tmp_path / "nomask"), **base))
    prepare(PrepareConfig(root=str(root), out=str(masked), size=32, augment=1, masks=True, mask_size=16,
                          num_actors=1, batch_size=16))
    record = train(MultitaskConfig(prepared=str(masked), out=str(tmp_path / "apn"), **base))
    assert [r["attribute"] for r in record["attributes"]] == ["Male", "Smiling"]
    assert [h.get("stage") for h in record["history"]] == ["segmentation", None]

    images = tmp_path / "faces"
    write_unlabelled_faces(images, n=3, seed=1, sizes=(96,))
    out = tmp_path / "labels.csv"
    label_images(LabelConfig(images=str(images), model=str(tmp_path / "apn"), out=str(out), batch_size=4,
                             num_actors=1))
    rows = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert len(rows) == 3 and rows.error.isna().all()
    assert rows[["Male_prob", "Smiling_prob"]].notna().all().all()
    others = [a for a in ATTRIBUTES if a not in ("Male", "Smiling")]
    assert rows[others].isna().all().all()  # not predicted: empty, never invented


def test_jitter_moves_the_mask_targets_with_the_images():
    """With online jitter the stage-1 loss is the MSE against the masks warped by the batch's own
    matrices (after its flips), and training through it still lowers the plain mask error."""
    from facray.training.augment import Jitter, warp_targets
    torch.manual_seed(0)
    data = _masked_data()
    model = build_model("attparsenet-tiny", 32)
    cfg = MultiTaskTrainerConfig(lr=3e-3, image_size=32, segmentation_epochs=3, patience=5,
                                 jitter=Jitter(shift=0.1, scale=0.1, rotate=10))
    trainer = MultiTaskTrainer(model, cfg, "cpu")
    batch = {k: v[:8] for k, v in data.items()}
    out, flip, theta = trainer._forward(batch["image"], train=True)
    assert theta is not None and theta.shape == (8, 2, 3)
    masks, _ = flip_targets(torch.as_tensor(batch["masks"]), None, flip)
    expected = mask_mse(out["masks"], warp_targets(masks, None, theta)[0])
    torch.testing.assert_close(trainer._loss(out, batch, flip, theta), expected)
    assert not torch.allclose(expected, mask_mse(out["masks"], masks))

    def plain_error():
        model.eval()
        with torch.no_grad():
            return mask_mse(model(torch.as_tensor(data["image"]).permute(0, 3, 1, 2).float() / 255)["masks"],
                            torch.as_tensor(data["masks"])).item()
    before = plain_error()
    for _ in range(3):
        trainer.fit_epoch(array_batches(data, 8, shuffle=True), array_batches(data, 16))
    assert plain_error() < before
