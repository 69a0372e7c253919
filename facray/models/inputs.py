"""What every model is fed: uint8 crops -> float tensors. Depends only on torch.

Shared by training and inference, so predictors never import training code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_input(pixels, image_size: int, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W[, C]) -> float (B, C, image_size, image_size) in [0, 1] (the paper's /255)."""
    x = torch.as_tensor(pixels)
    if x.ndim == 3:
        x = x.unsqueeze(-1)
    x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area" if x.shape[-1] > image_size else "bilinear")
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Channels-last for every 4-D parameter and buffer, in place. ``Module.to(memory_format=...)``
    refuses a module holding any 5-D tensor, as the grouped ABM stack does (its convolution weights
    carry a leading model dimension and are reshaped to 4-D at each call)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    return module
