"""ABM-CNN (Berrahal & Azizi 2021) and stacks of K independent ABM-CNNs. Depends only on torch.

One ABM-CNN: three 3x3 "same" convolutions (16, 32, 64 filters), each followed by ReLU and 2x2
max-pooling; dropout; flatten (64 x 22 x 22 = 30,976 at 180 px); dense 128 + ReLU; dense 2.
3,988,898 parameters at 180x180x3.

A stack holds K such models that train together on one batch yet stay mathematically independent:
each model's parameters live in their own slice (index ``k`` of a leading model dimension), its
loss is its own, Adam's update is elementwise (so one Adam over the stack is K Adams), and its
dropout masks come from its own generator (so its trajectory does not depend on which other models
share the stack, or whether they were stopped). Two implementations with one interface:

- :class:`GroupedABMStack`: grouped convolutions and batched matmuls; one kernel per layer for all
  K models. Pays on GPUs (one H100: 35-38k model-img/s stacked vs 9.3k for one model at batch 32).
- :class:`LoopABMStack`: K ordinary modules run one after another on the same batch. Faster on
  CPUs, where grouped convolutions ran at 0.55-0.75x of separate ones; the data pass is shared.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CONV_CHANNELS = (16, 32, 64)
HIDDEN = 128


def feature_side(image_size: int) -> int:
    """Spatial side after the three 2x2 max-pools (floor division, as Keras and torch do)."""
    side = image_size
    for _ in CONV_CHANNELS:
        side //= 2
    return side


class ABMCNN(nn.Module):
    """One binary ABM-CNN; ``forward`` returns (B, 2) logits (softmax gives the paper's output)."""

    def __init__(self, in_channels: int = 3, image_size: int = 180, dropout: float = 0.5):
        super().__init__()
        layers, c = [], in_channels
        for out in CONV_CHANNELS:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(c * feature_side(image_size) ** 2, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, 2)
        self.in_channels, self.image_size, self.p = in_channels, image_size, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.features(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dropout_mask(shape, p: float, generator: torch.Generator, device) -> torch.Tensor:
    keep = torch.rand(shape, generator=generator, device=device) >= p
    return keep.to(torch.float32) / (1 - p)


def make_generators(seeds: list[int], device) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def init_model(seed: int, in_channels: int, image_size: int, dropout: float) -> ABMCNN:
    """A freshly initialised ABM-CNN whose weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ABMCNN(in_channels, image_size, dropout)


class LoopABMStack(nn.Module):
    """K independent ABM-CNNs run in turn on one batch (the CPU-friendly stack)."""

    def __init__(self, models: list[ABMCNN], dropout_seeds: list[int]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.dropout_seeds = list(dropout_seeds)
        self.generators: list[torch.Generator] | None = None

    @classmethod
    def create(cls, seeds: list[int], in_channels: int, image_size: int, dropout: float) -> "LoopABMStack":
        return cls([init_model(s, in_channels, image_size, dropout) for s in seeds], [s + 1 for s in seeds])

    def __len__(self) -> int:
        return len(self.models)

    def _gens(self, device) -> list[torch.Generator]:
        if self.generators is None:
            self.generators = make_generators(self.dropout_seeds, device)
        return self.generators

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K, 2) logits."""
        outs = []
        gens = self._gens(x.device) if self.training else None
        for k, m in enumerate(self.models):
            f = m.features(x)
            if self.training and m.p > 0:
                f = f * _dropout_mask(f.shape, m.p, gens[k], x.device).to(f.dtype)
            outs.append(m.fc2(F.relu(m.fc1(f.flatten(1)))))
        return torch.stack(outs, 1)

    def model_parameters(self, k: int) -> list[nn.Parameter]:
        return list(self.models[k].parameters())

    def per_model_views(self, values: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, ``values[k]`` shaped to broadcast over it) for every parameter of model k."""
        return [(p, values[k]) for k, m in enumerate(self.models) for p in m.parameters()]

    def export(self, k: int) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().clone() for n, t in self.models[k].state_dict().items()}

    def load(self, k: int, state: dict[str, torch.Tensor]) -> None:
        self.models[k].load_state_dict(state)

    def select(self, keep: list[int]) -> "LoopABMStack":
        new = LoopABMStack([self.models[k] for k in keep], [self.dropout_seeds[k] for k in keep])
        if self.generators is not None:
            new.generators = [self.generators[k] for k in keep]
        return new.train(self.training)


class GroupedABMStack(nn.Module):
    """K independent ABM-CNNs as grouped convolutions and batched matmuls (the GPU-friendly stack).

    Parameters carry a leading model dimension K, so model ``k`` is index ``k`` of every tensor and
    :meth:`select` keeps a subset (with the optimiser's state, see ``slice_adam_state``).
    """

    def __init__(self, k: int, in_channels: int, image_size: int, dropout: float):
        super().__init__()
        self.k, self.in_channels, self.image_size, self.p = k, in_channels, image_size, dropout
        shapes, c = [], in_channels
        for out in CONV_CHANNELS:
            shapes.append((out, c))
            c = out
        self.conv_w = nn.ParameterList([nn.Parameter(torch.empty(k, o, i, 3, 3)) for o, i in shapes])
        self.conv_b = nn.ParameterList([nn.Parameter(torch.empty(k, o)) for o, _ in shapes])
        flat = c * feature_side(image_size) ** 2
        self.fc1_w = nn.Parameter(torch.empty(k, flat, HIDDEN))
        self.fc1_b = nn.Parameter(torch.empty(k, HIDDEN))
        self.fc2_w = nn.Parameter(torch.empty(k, HIDDEN, 2))
        self.fc2_b = nn.Parameter(torch.empty(k, 2))
        self.dropout_seeds: list[int] = [0] * k
        self.generators: list[torch.Generator] | None = None

    @classmethod
    def create(cls, seeds: list[int], in_channels: int, image_size: int, dropout: float) -> "GroupedABMStack":
        stack = cls(len(seeds), in_channels, image_size, dropout)
        with torch.no_grad():
            for k, s in enumerate(seeds):
                stack.load(k, init_model(s, in_channels, image_size, dropout).state_dict())
        stack.dropout_seeds = [s + 1 for s in seeds]
        return stack

    def __len__(self) -> int:
        return self.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, K, 2) logits."""
        B, K = x.shape[0], self.k
        h = x
        for layer, (w, b) in enumerate(zip(self.conv_w, self.conv_b)):
            # Layer 0 sees the shared input: K*16 ordinary filters. Later layers: K groups.
            groups = 1 if layer == 0 else K
            h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=1, groups=groups)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(B, K, -1)  # (B, K, 64*side*side): channels of model k are contiguous
        if self.training and self.p > 0:
            if self.generators is None:
                self.generators = make_generators(self.dropout_seeds, x.device)
            mask = torch.stack([_dropout_mask((B, h.shape[-1]), self.p, g, x.device) for g in self.generators], 1)
            h = h * mask.to(h.dtype)
        h = torch.einsum("bkf,kfo->bko", h, self.fc1_w.to(h.dtype)) + self.fc1_b.to(h.dtype)
        h = torch.einsum("bkf,kfo->bko", F.relu(h), self.fc2_w.to(h.dtype)) + self.fc2_b.to(h.dtype)
        return h

    def per_model_views(self, values: torch.Tensor) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, ``values`` shaped to broadcast along its leading model dimension)."""
        return [(p, values.view(-1, *[1] * (p.dim() - 1))) for p in self.parameters()]

    def export(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k`` as an :class:`ABMCNN` state dict."""
        sd = {}
        for i, (w, b) in enumerate(zip(self.conv_w, self.conv_b)):
            sd[f"features.{3 * i}.weight"] = w[k].detach().cpu().clone()
            sd[f"features.{3 * i}.bias"] = b[k].detach().cpu().clone()
        sd["fc1.weight"] = self.fc1_w[k].detach().t().cpu().contiguous()
        sd["fc1.bias"] = self.fc1_b[k].detach().cpu().clone()
        sd["fc2.weight"] = self.fc2_w[k].detach().t().cpu().contiguous()
        sd["fc2.bias"] = self.fc2_b[k].detach().cpu().clone()
        return sd

    @torch.no_grad()
    def load(self, k: int, state: dict[str, torch.Tensor]) -> None:
        for i, (w, b) in enumerate(zip(self.conv_w, self.conv_b)):
            w[k].copy_(state[f"features.{3 * i}.weight"])
            b[k].copy_(state[f"features.{3 * i}.bias"])
        self.fc1_w[k].copy_(state["fc1.weight"].t())
        self.fc1_b[k].copy_(state["fc1.bias"])
        self.fc2_w[k].copy_(state["fc2.weight"].t())
        self.fc2_b[k].copy_(state["fc2.bias"])

    def select(self, keep: list[int]) -> "GroupedABMStack":
        new = GroupedABMStack(len(keep), self.in_channels, self.image_size, self.p)
        idx = torch.tensor(keep, dtype=torch.long, device=self.fc1_w.device)
        with torch.no_grad():
            for (_, src), (_, dst) in zip(self.named_parameters(), new.named_parameters()):
                dst.data = src.data.index_select(0, idx).clone()
        new.dropout_seeds = [self.dropout_seeds[k] for k in keep]
        if self.generators is not None:
            new.generators = [self.generators[k] for k in keep]
        return new.to(self.fc1_w.device).train(self.training)


STACKS = {"loop": LoopABMStack, "grouped": GroupedABMStack}


def build_stack(kind: str, seeds: list[int], in_channels: int, image_size: int, dropout: float):
    """A stack of ``len(seeds)`` ABM-CNNs; model ``k`` is initialised from ``seeds[k]`` alone."""
    if kind not in STACKS:
        raise ValueError(f"stack kind must be one of {sorted(STACKS)}, got {kind!r}")
    return STACKS[kind].create(seeds, in_channels, image_size, dropout)


def default_stack_kind(device: torch.device) -> str:
    return "grouped" if device.type == "cuda" else "loop"


__all__ = ["ABMCNN", "GroupedABMStack", "LoopABMStack", "build_stack", "count_parameters",
           "default_stack_kind", "feature_side", "init_model"]
