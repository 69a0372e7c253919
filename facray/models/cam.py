"""Class activation maps for any registered model. Depends only on torch, numpy and OpenCV.

Grad-CAM (Selvaraju et al. 2017): the last convolutional feature map, weighted per channel by the
spatial mean of the attribute logit's gradient, summed, ReLU'd. For a global-average-pooled trunk
under one linear layer (ResNet, Inception) that is the original CAM of Zhou et al. up to scale; it
also covers models whose heads are not linear (the joint network's 4096-unit branch, ABM's dense
layers), which plain CAM cannot.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, attribute: int) -> np.ndarray:
    """(B, H, W) maps in [0, 1] at the input's size: where ``layer``'s features raise the logit
    of ``attribute``. ``model`` maps x to ``{"attributes": logits}``; it is run in eval mode."""
    saved = {}

    def keep(_, __, output):
        if not output.requires_grad:  # a frozen trunk (vgg19-transfer's base): start the graph here
            output.requires_grad_(True)
        else:
            output.retain_grad()
        saved["maps"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            x = x.detach().clone().requires_grad_(False)
            logits = model(x)["attributes"][:, attribute]
            logits.sum().backward()
    finally:
        handle.remove()
    maps, grads = saved["maps"], saved["maps"].grad
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(1, keepdim=True)).detach().float()
    model.zero_grad(set_to_none=True)
    side = x.shape[-1]
    border = feature_border(model, layer, side, cam.shape[-1])
    cam = F.interpolate(cam, size=(side - 2 * border,) * 2, mode="bilinear", align_corners=False)[:, 0]
    cam = F.pad(cam, (border,) * 4)  # the map covers the input's centre: unpadded convolutions lose the rim
    peak = cam.flatten(1).max(1).values.clamp(min=1e-8).view(-1, 1, 1)
    return (cam / peak).cpu().numpy()


class _Stop(Exception):
    pass


def feature_border(model: nn.Module, layer: nn.Module, side: int, map_side: int) -> int:
    """Pixels of the input's rim that ``layer``'s map does not cover. Found by probing: the map's
    side grows by one per ``stride`` input pixels, so two input sizes give the stride and the
    offset (0 for padded networks such as ResNet; 13 for AttParseNet at 64 px)."""
    probe = side + 64

    def stop(_, __, output):
        raise _Stop(output.shape[-1])

    handle = layer.register_forward_hook(stop)
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, probe, probe, device=next(model.parameters()).device))
        bigger = None
    except _Stop as found:
        bigger = found.args[0]
    except RuntimeError:  # a head that needs the trained size; the trunk never got there
        bigger = None
    finally:
        handle.remove()
    if not bigger or bigger == map_side:
        return 0
    stride = (probe - side) / (bigger - map_side)
    border = round((side - stride * map_side) / 2)
    return border if 0 < border < side // 2 else 0


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A BGR uint8 crop with a JET heat map of ``cam`` (same side, [0, 1]) laid over it."""
    heat = cv2.applyColorMap(np.uint8(255 * cv2.resize(cam, image.shape[1::-1])), cv2.COLORMAP_JET)
    return cv2.addWeighted(image, 1 - alpha, heat, alpha, 0)


def cam_grid(model: nn.Module, layer: nn.Module, images: np.ndarray, inputs: torch.Tensor,
             attributes: list[tuple[int, str]], tile: int = 128) -> np.ndarray:
    """One row per image (its crop, then one overlay per attribute, titled), as a BGR uint8 grid."""
    columns = [[cv2.resize(img, (tile, tile)) for img in images]]
    for index, name in attributes:
        cams = grad_cam(model, layer, inputs, index)
        columns.append([overlay(cv2.resize(img, (tile, tile)), c) for img, c in zip(images, cams)])
    header = [np.full((18, tile, 3), 255, np.uint8) for _ in columns]
    for h, title in zip(header, ["crop"] + [name for _, name in attributes]):
        cv2.putText(h, title[:18], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([np.hstack(header)] + [np.hstack([col[r] for col in columns]) for r in range(len(images))])
