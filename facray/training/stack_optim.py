"""Adam over a stack of independent models. Pure torch.

Per-model learning rates (an in-stack lr sweep): one Adam at the largest lr, each model's update
scaled to its own lr after the step. Adam's update is linear in lr and its moments see gradients
only, so a model moved by ``lr_k / lr_max`` of the step is exactly a model trained by Adam at ``lr_k``.

Shrinking: when a binary job stops early, :class:`facray.training.binary.FusedBinaryTrainer` takes its model
out of the stack; the models that go on training must keep their own Adam moments, or their
next steps would differ from training alone (the fused trainer's promise: each model trains as
it would on its own).
"""
from __future__ import annotations

import torch


def select_with_adam_state(stack: torch.nn.Module, optimizer: torch.optim.Adam, keep: list[int], lr: float
                           ) -> tuple[torch.nn.Module, torch.optim.Adam]:
    """The models ``keep`` of ``stack`` as a new stack, with a new Adam carrying their moments."""
    new = stack.select(keep)
    new_opt = torch.optim.Adam(new.parameters(), lr=lr)
    old_params = dict(stack.named_parameters())
    index = torch.tensor(keep, device=next(new.parameters()).device)
    for name, new_p in new.named_parameters():
        if new_p in optimizer.state:
            # Loop stack: the kept models' parameter objects carry over with their own state.
            # (Matching by position would hand a model its neighbour's Adam moments.)
            new_opt.state[new_p] = optimizer.state[new_p]
        elif old_params.get(name) in optimizer.state:
            # Grouped stack: same names, every tensor has the model dimension first.
            new_opt.state[new_p] = {k: v.index_select(0, index).clone() if v.ndim else v.clone()
                                    for k, v in optimizer.state[old_params[name]].items()}
    return new, new_opt


def adam_step_per_model_lr(optimizer: torch.optim.Optimizer, stack: torch.nn.Module, scales: list[float]) -> None:
    """``optimizer.step()``, with model k's update scaled by ``scales[k]`` (<= 1)."""
    if all(s == 1.0 for s in scales):
        optimizer.step()
        return
    views = stack.per_model_views(torch.tensor(scales, device=next(stack.parameters()).device))
    before = [p.detach().clone() for p, _ in views]
    optimizer.step()
    with torch.no_grad():
        for (p, scale), old in zip(views, before):
            p.copy_(torch.lerp(old, p, scale))
