"""Find and grow a model's output layer (its last nn.Linear) when new classes arrive."""

from __future__ import annotations

import torch
from torch import nn

from ricordo.errors import ConfigError


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The qualified name and module of the last nn.Linear in registration order."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ConfigError(
            "the model has no nn.Linear output layer; Ricordo grows the last nn.Linear when new "
            "classes arrive, so end the model with one"
        )
    return found


def num_outputs(model: nn.Module) -> int:
    return output_layer(model)[1].out_features


def grow_output_layer(model: nn.Module, num_classes: int, generator: torch.Generator) -> bool:
    """Widen the output layer to ``num_classes`` rows, keeping the old rows; True if it grew.

    New rows get PyTorch's default Linear initialisation, drawn from ``generator`` so a reloaded
    lineage grows the same way as an uninterrupted one.
    """
    name, old = output_layer(model)
    if not name:
        raise ConfigError(
            "the model is a bare nn.Linear, which cannot be replaced in place; "
            "wrap it: nn.Sequential(nn.Flatten(), nn.Linear(...))"
        )
    if num_classes <= old.out_features:
        return False
    with torch.random.fork_rng(devices=[]):  # the default init below is overwritten anyway
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    bound = 1.0 / max(1, old.in_features) ** 0.5
    with torch.no_grad():
        fresh_w = torch.empty(new.weight.shape, dtype=new.weight.dtype)
        fresh_w.uniform_(-bound, bound, generator=generator)
        new.weight.copy_(fresh_w.to(new.weight.device))
        new.weight[: old.out_features] = old.weight
        if new.bias is not None and old.bias is not None:
            fresh_b = torch.empty(new.bias.shape, dtype=new.bias.dtype)
            fresh_b.uniform_(-bound, bound, generator=generator)
            new.bias.copy_(fresh_b.to(new.bias.device))
            new.bias[: old.out_features] = old.bias
    _set_submodule(model, name, new)
    return True


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` once and return (input of its output layer, logits).

    Works for any model whose logits come from its last nn.Linear (the same assumption head
    growth makes); feature-space methods (iCaRL's class means, distillation on features) use it.
    """
    _, head = output_layer(unwrap(model))
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if not captured:
        raise ConfigError("the model's output layer was not called in forward; cannot get features")
    return captured[-1].flatten(1), logits


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a Lightning Fabric wrapper, a ``DistributedDataParallel``
    (``--strategy ddp``: Fabric's wrapper holds DDP, which holds the module) or both."""
    original = getattr(model, "_original_module", None)  # Fabric's _FabricModule
    if isinstance(original, nn.Module):
        return original
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return unwrap(model.module)
    # Only these wrappers: a user's own module may well have a submodule called ``module``.
    return model
