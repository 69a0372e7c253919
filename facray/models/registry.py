"""Model registry: name -> builder, as timm does. Depends only on torch and torchvision.

Every registered model takes ``(B, 3, S, S)`` floats in [0, 1] and returns a dict with
``"attributes"``: (B, num_outputs) logits. Each family has a ``-tiny`` variant with the same code
path and a few thousand to a few hundred thousand parameters, so tests train the real
architectures in seconds.

Pretrained weights (:func:`build_model`): ``pretrained="DEFAULT"`` (or a torchvision weights
name such as ``IMAGENET1K_V1``) asks torchvision, which downloads once into its cache (needs
internet); ``weights_file`` loads a local state dict with ``weights_only=True``: either the
backbone's own torchvision state dict (``resnet18-f37072fd.pth``, what torchvision caches) or a
whole facray model's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from facray.attributes import ATTRIBUTES
from facray.models.attparsenet import PAPER_WIDTHS, AttParseNet
from facray.models.joint import JointAttributeIdentityNet
from facray.models.kth import TCDCN, CascadeCNN
from facray.models.trunks import AbmTrunk, TorchvisionClassifier, VGGTransfer, vgg_features


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    input_size: int  # default side in pixels
    torchvision_name: str | None = None  # whose weights `pretrained` / a backbone state dict fit
    cam_layer: str = "features"  # the last convolutional feature map (class activation maps)
    mask_output: bool = False  # also returns localisation maps ("masks"), trained on prepared masks
    identity_output: bool = False  # also classifies identities (takes num_identities)
    head: tuple[str, ...] = ("head",)  # the modules that are new on a pretrained base (fine-tuning)
    # The `facray train` options (MultitaskConfig fields) its builder takes as keywords; an option
    # left at None is not passed (the builder's default holds).
    config_keys: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, input_size: int, torchvision_name: str | None = None, cam_layer: str = "features",
                   mask_output: bool = False, identity_output: bool = False, head: tuple[str, ...] = ("head",),
                   config_keys: tuple[str, ...] = ()):
    def wrap(fn):
        _REGISTRY[name] = ModelSpec(name, fn, input_size, torchvision_name, cam_layer, mask_output, identity_output,
                                    head, config_keys)
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


# ---- the families ---------------------------------------------------------------------------

@register_model("abm-trunk", 128)
def abm_trunk(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return AbmTrunk(image_size, num_outputs, **kw)


@register_model("abm-trunk-tiny", 32)
def abm_trunk_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return AbmTrunk(image_size, num_outputs, hidden=32, channels=(4, 8), **kw)


def _resnet(builder, image_size: int, num_outputs: int, train_base: bool = True, **kw) -> nn.Module:
    return TorchvisionClassifier(builder(weights=None, **kw), num_outputs, train_base)


@register_model("resnet18", 128, "resnet18", cam_layer="backbone.layer4", head=("backbone.fc",),
                config_keys=("train_base",))
def resnet18(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return _resnet(torchvision.models.resnet18, image_size, num_outputs, **kw)


@register_model("resnet50", 128, "resnet50", cam_layer="backbone.layer4", head=("backbone.fc",),
                config_keys=("train_base",))
def resnet50(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return _resnet(torchvision.models.resnet50, image_size, num_outputs, **kw)


class _TinyResNet(torchvision.models.ResNet):
    """torchvision's ResNet code with one BasicBlock per stage, narrowed to 8 base channels."""

    def __init__(self):
        super().__init__(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], width_per_group=64)
        # Rebuild narrow: same module layout and forward, 1/8 of the channels.
        self.inplanes = 8
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = self._make_layer(torchvision.models.resnet.BasicBlock, 8, 1)
        self.layer2 = self._make_layer(torchvision.models.resnet.BasicBlock, 16, 1, stride=2)
        self.layer3 = self._make_layer(torchvision.models.resnet.BasicBlock, 32, 1, stride=2)
        self.layer4 = self._make_layer(torchvision.models.resnet.BasicBlock, 64, 1, stride=2)
        self.fc = nn.Linear(64, 1000)


@register_model("resnet-tiny", 32, cam_layer="backbone.layer4", head=("backbone.fc",), config_keys=("train_base",))
def resnet_tiny(image_size: int, num_outputs: int, train_base: bool = True) -> nn.Module:
    return TorchvisionClassifier(_TinyResNet(), num_outputs, train_base)


VGG19_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512, "M"]


@register_model("vgg19-transfer", 224, "vgg19", head=("trunk", "heads"),
                config_keys=("train_base", "bbox_head", "landmark_head"))
def vgg19_transfer(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return VGGTransfer(vgg_features(VGG19_CONFIG), 512, image_size, num_outputs, **kw)


@register_model("vgg-transfer-tiny", 32, head=("trunk", "heads"),
                config_keys=("train_base", "bbox_head", "landmark_head"))
def vgg_transfer_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return VGGTransfer(vgg_features([4, "M", 8, "M", 8, "M", 16, "M", 16, "M"]), 16, image_size, num_outputs,
                       hidden=16, **kw)


@register_model("inception-v3", 299, "inception_v3", cam_layer="backbone.Mixed_7c", head=("backbone.fc",),
                config_keys=("train_base",))
def inception_v3(image_size: int, num_outputs: int, train_base: bool = True, **kw) -> nn.Module:
    return TorchvisionClassifier(torchvision.models.inception_v3(weights=None, aux_logits=False,
                                                                 init_weights=True, **kw), num_outputs, train_base)


@register_model("inception-v3-tiny", 75, "inception_v3", cam_layer="backbone.Mixed_7c", head=("backbone.fc",),
                config_keys=("train_base",))
def inception_v3_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    """The full Inception v3 code at its smallest legal input (75 px): the real architecture, cheap."""
    return inception_v3(image_size, num_outputs, **kw)


@register_model("attparsenet", 128, mask_output=True, head=("classifier",))
def attparsenet(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return AttParseNet(image_size, num_outputs, **kw)


@register_model("attparsenet-narrow", 64, mask_output=True, head=("classifier",))
def attparsenet_narrow(image_size: int, num_outputs: int, **kw) -> nn.Module:
    """A quarter of the paper's widths (1/16 of the compute): AttParseNet on a CPU."""
    return AttParseNet(image_size, num_outputs, widths=tuple(w // 4 for w in PAPER_WIDTHS), **kw)


@register_model("attparsenet-tiny", 32, mask_output=True, head=("classifier",))
def attparsenet_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return AttParseNet(image_size, num_outputs, widths=(4, 8, 8, 8, 8), **kw)


@register_model("cascade-cnn", 64, head=("classifier",))
def cascade_cnn(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return CascadeCNN(image_size, num_outputs, **kw)


@register_model("cascade-cnn-tiny", 32, head=("classifier",))
def cascade_cnn_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return CascadeCNN(image_size, num_outputs, width=8, **kw)


@register_model("tcdcn", 64, head=("classifier",))
def tcdcn(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return TCDCN(image_size, num_outputs, **kw)


@register_model("tcdcn-tiny", 32, head=("classifier",))
def tcdcn_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return TCDCN(image_size, num_outputs, widths=(4, 8, 8, 8), hidden=16, **kw)


@register_model("joint-attr-id", 112, identity_output=True, head=("attribute_branch", "identity_branch"),
                config_keys=("fusion",))
def joint_attr_id(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return JointAttributeIdentityNet(image_size, num_outputs, **kw)


@register_model("joint-attr-id-narrow", 64, identity_output=True, head=("attribute_branch", "identity_branch"),
                config_keys=("fusion",))
def joint_attr_id_narrow(image_size: int, num_outputs: int, **kw) -> nn.Module:
    """A quarter of the paper's widths, 1,024-unit branches: the joint network on a CPU."""
    return JointAttributeIdentityNet(image_size, num_outputs, widths=(16, 32, 64, 128, 128), hidden=1024, **kw)


@register_model("joint-attr-id-tiny", 32, identity_output=True, head=("attribute_branch", "identity_branch"),
                config_keys=("fusion",))
def joint_attr_id_tiny(image_size: int, num_outputs: int, **kw) -> nn.Module:
    return JointAttributeIdentityNet(image_size, num_outputs, widths=(4, 8, 8, 16, 16), hidden=16, **kw)


# ---- building and weights ---------------------------------------------------------------------

def build_model(name: str, image_size: int | None = None, num_outputs: int = len(ATTRIBUTES),
                pretrained: str | None = None, weights_file: str | None = None, **kw) -> nn.Module:
    """A registered model; ``pretrained`` (torchvision weights name) or ``weights_file`` (local
    state dict) initialise its backbone. The new head always starts fresh."""
    spec = model_spec(name)
    model = spec.build(image_size or spec.input_size, num_outputs, **kw)
    if pretrained and weights_file:
        raise ValueError("give pretrained (torchvision weights) or weights_file, not both")
    if pretrained:
        if not spec.torchvision_name:
            raise ValueError(f"{name}: no torchvision weights exist for it; use weights_file")
        weights = torchvision.models.get_model_weights(spec.torchvision_name)
        chosen = weights.DEFAULT if pretrained.upper() == "DEFAULT" else weights[pretrained]
        load_backbone_state(model, chosen.get_state_dict(progress=False), name)
    elif weights_file:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
        load_backbone_state(model, state, weights_file)
    return model


def load_backbone_state(model: nn.Module, state: dict, source: str) -> list[str]:
    """Load matching tensors from a torchvision backbone or a whole facray model; the heads (whose
    shapes differ) keep their fresh initialisation. Returns the keys loaded."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: not a state dict of tensors")
    target = model.state_dict()
    loaded = {}
    for key, tensor in state.items():
        for prefix in ("", "backbone."):  # a facray model's own keys, or a bare torchvision backbone's
            candidate = prefix + key
            if candidate in target and target[candidate].shape == tensor.shape:
                loaded[candidate] = tensor
                break
    backbone_keys = [k for k in target if not k.startswith(("heads.", "head.", "trunk.")) and ".fc." not in k
                     and not k.endswith(("fc.weight", "fc.bias"))]
    if not loaded or len(loaded) < 0.5 * len(backbone_keys):
        raise ValueError(f"{source}: only {len(loaded)} of {len(backbone_keys)} backbone tensors match "
                         f"this model; is it the right architecture?")
    model.load_state_dict(loaded, strict=False)
    return sorted(loaded)
