"""ABM-CNN shapes and parameter count; stacks equal K separate models."""
from __future__ import annotations

import pytest
import torch

from facray.models.abm import ABMCNN, build_stack, count_parameters, feature_side, init_model


def test_paper_parameter_count_and_shapes():
    model = ABMCNN()
    assert count_parameters(model) == 3_988_898
    assert model.fc1.in_features == 22 * 22 * 64 == 30_976
    assert model(torch.zeros(2, 3, 180, 180)).shape == (2, 2)
    assert ABMCNN(in_channels=1, image_size=40)(torch.zeros(3, 1, 40, 40)).shape == (3, 2)
    assert feature_side(64) == 8


@pytest.mark.parametrize("kind", ["loop", "grouped"])
def test_stack_equals_separate_models_and_round_trips(kind):
    x = torch.rand(5, 1, 32, 32)
    stack = build_stack(kind, [3, 4, 5], 1, 32, 0.5).eval()
    singles = [init_model(s, 1, 32, 0.5).eval() for s in (3, 4, 5)]
    out = stack(x)
    assert out.shape == (5, 3, 2)
    for k, m in enumerate(singles):
        torch.testing.assert_close(out[:, k], m(x), atol=1e-5, rtol=1e-5)
        copy = ABMCNN(1, 32)
        copy.load_state_dict(stack.export(k))
        torch.testing.assert_close(copy.eval()(x), m(x), atol=1e-5, rtol=1e-5)
    sub = stack.select([2, 0])
    torch.testing.assert_close(sub(x), out[:, [2, 0]], atol=1e-5, rtol=1e-5)


def test_every_models_config_keys_are_train_options_its_builder_takes():
    """A model declares the `facray train` options its builder takes (ModelSpec.config_keys):
    each is a MultitaskConfig field, and the tiny variants build with them set to their defaults."""
    import dataclasses

    from facray.models.registry import build_model, list_models, model_spec
    from facray.training.configs import MultitaskConfig, model_kwargs
    fields = {f.name for f in dataclasses.fields(MultitaskConfig)}
    for name in list_models():
        assert set(model_spec(name).config_keys) <= fields, name
    cfg = MultitaskConfig(model="vgg-transfer-tiny", bbox_head=True, train_base=True)
    assert model_kwargs(cfg) == {"train_base": True, "bbox_head": True, "landmark_head": False}
    assert model_kwargs(MultitaskConfig(model="resnet-tiny")) == {}  # train_base unset: the builder's default
    assert model_kwargs(MultitaskConfig(model="joint-attr-id-tiny", fusion="all")) == {"fusion": "all"}
    model = build_model("vgg-transfer-tiny", 32, **model_kwargs(cfg))
    assert set(model.heads) == {"attributes", "bbox"}
