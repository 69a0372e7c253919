"""Class activation maps: Grad-CAM equals the original CAM on a pooled trunk under one linear
layer, finds where the evidence is, and runs on every registered family."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from facray.models.cam import cam_grid, grad_cam
from facray.models.registry import build_model, list_models, model_spec


def test_grad_cam_is_cam_for_a_pooled_trunk_under_a_linear_layer():
    torch.manual_seed(0)
    model = build_model("resnet-tiny", 96).eval()
    x = torch.rand(2, 3, 96, 96)
    layer = model.backbone.layer4
    maps = {}
    handle = layer.register_forward_hook(lambda m, i, o: maps.setdefault("a", o.detach()))
    with torch.no_grad():
        attribute = int(model(x)["attributes"].sum(0).argmax())  # positive evidence somewhere
    handle.remove()
    assert maps["a"].shape[-1] == 3
    w = model.backbone.fc.weight[attribute].detach()
    cam = F.relu(torch.einsum("c,bchw->bhw", w, maps["a"]))[:, None]
    cam = F.interpolate(cam, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    cam = (cam / cam.flatten(1).max(1).values.clamp(min=1e-8).view(-1, 1, 1)).numpy()
    assert cam.max() == pytest.approx(1.0)
    np.testing.assert_allclose(grad_cam(model, layer, x, attribute), cam, atol=1e-5)


class _Brightness(nn.Module):
    """Every attribute is the image's mean brightness (a 1x1 convolution, then global pooling)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 1, 1)
        nn.init.constant_(self.features.weight, 1.0)
        nn.init.zeros_(self.features.bias)

    def forward(self, x):
        return {"attributes": self.features(x).mean((1, 2, 3))[:, None].repeat(1, 40)}


def test_the_map_lights_up_where_the_evidence_is():
    x = torch.full((1, 3, 32, 32), 0.02)
    x[:, :, :16, :16] = 1.0  # all the brightness is in the top-left quadrant
    model = _Brightness()
    cam = grad_cam(model, model.features, x, 0)[0]
    assert cam[:14, :14].min() > 0.95 and cam[18:, 18:].max() < 0.05


@pytest.mark.parametrize("name", [n for n in list_models() if n.endswith("-tiny")])
def test_every_family_has_a_cam_layer(name):
    spec = model_spec(name)
    model = build_model(name, spec.input_size, **({"num_identities": 3} if spec.identity_output else {})).eval()
    x = torch.rand(2, 3, spec.input_size, spec.input_size)
    images = (x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    grid = cam_grid(model, model.get_submodule(spec.cam_layer), images, x, [(4, "Bald"), (31, "Smiling")], tile=32)
    assert grid.shape == (18 + 2 * 32, 3 * 32, 3) and grid.dtype == np.uint8


def test_maps_of_unpadded_networks_are_placed_over_the_centre_they_see():
    """AttParseNet's unpadded convolutions see the input's centre only: 13 px of rim at 64 px."""
    from facray.models.cam import feature_border
    model = build_model("attparsenet-tiny", 64).eval()
    assert feature_border(model, model.features, 64, 19) == 13
    cam = grad_cam(model, model.features, torch.rand(2, 3, 64, 64), 3)
    assert cam.shape == (2, 64, 64) and (cam[:, :13] == 0).all() and (cam[:, :, -13:] == 0).all()
    resnet = build_model("resnet-tiny", 128).eval()
    assert feature_border(resnet, resnet.backbone.layer4, 128, 4) == 0
