"""Shared pieces of the ER family (CLS-ER, POD-ER, Super-ER): weight copies, consistency targets,
pooled feature distillation, shrink-and-perturb.

Copies of the model (CLS-ER's EMA models, POD's frozen snapshot) are plain dicts of tensors keyed
like ``model.state_dict()`` and run through ``torch.func.functional_call``: no second module to
keep in sync, only tensors to save, and a grown output layer is padded in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.models.head import output_layer, unwrap

Weights = dict[str, Tensor]


def check_weight(name: str, value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0")


def check_unit(name: str, value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and 0 <= value <= 1):
        raise ConfigError(f"{name}={value!r} must be in [0, 1]")


# -- weight copies
def copy_weights(model: nn.Module) -> Weights:
    """Detached copies of the model's parameters and buffers."""
    return {k: v.detach().clone() for k, v in unwrap(model).state_dict().items()}


def grow_weights(old: Weights, model: nn.Module) -> Weights:
    """``old`` on the model's device and shapes: rows the model gained since (a grown output
    layer) and entries ``old`` lacks are copied from the model."""
    grown: Weights = {}
    for key, current in unwrap(model).state_dict().items():
        kept, current = old.get(key), current.detach()
        if kept is None:
            grown[key] = current.clone()
            continue
        kept = kept.to(current.device)
        if kept.shape != current.shape:
            if kept.shape[1:] != current.shape[1:] or kept.shape[0] > current.shape[0]:
                raise ConfigError(
                    f"stored copy of {key!r} has shape {tuple(kept.shape)} but the model's is "
                    f"{tuple(current.shape)}; the model changed within the lineage"
                )
            kept = torch.cat([kept, current[kept.shape[0] :]])
        grown[key] = kept
    return grown


@torch.no_grad()
def ema_update(ema: Weights, model: nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for floating tensors; others are copied."""
    for key, current in unwrap(model).state_dict().items():
        if ema[key].is_floating_point():
            ema[key].mul_(decay).add_(current.detach(), alpha=1 - decay)
        else:
            ema[key].copy_(current)


def forward_with(
    model: nn.Module, weights: Weights, x: Tensor, *, eval_mode: bool = False
) -> Tensor:
    """``model(x)`` computed with ``weights`` in place of its own (optionally in eval mode; the
    modes of all submodules are restored afterwards)."""
    module = unwrap(model)
    weights = {k: v.to(x.device) for k, v in weights.items()}
    dtype = next((v.dtype for v in weights.values() if v.is_floating_point()), x.dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    modes = [(m, m.training) for m in module.modules()] if eval_mode else []
    if eval_mode:
        module.eval()
    try:
        return functional_call(module, weights, (x,))
    finally:
        for m, mode in modes:
            m.training = mode


# -- CLS-ER: plastic and stable EMA models
EMA_NAMES = ("plastic", "stable")


class EMAModels:
    """CLS-ER's plastic and stable exponential moving averages of the working model's weights."""

    def __init__(self) -> None:
        self.weights: dict[str, Weights] = {}
        self.steps = 0  # EMA steps over the lineage: the decay warms up as min(1 - 1/(t+1), a)

    def begin(self, model: nn.Module) -> None:
        """Start from the model (first update) or grow the copies with its output layer."""
        self.weights = {n: grow_weights(self.weights.get(n, {}), model) for n in EMA_NAMES}

    def step(
        self,
        model: nn.Module,
        generator: torch.Generator,
        rates: Sequence[float],
        decays: Sequence[float],
    ) -> None:
        """After an optimizer step, update each copy with its probability (plastic, stable)."""
        self.steps += 1
        draws = torch.rand(len(EMA_NAMES), generator=generator).tolist()
        for name, draw, rate, decay in zip(EMA_NAMES, draws, rates, decays, strict=True):
            if draw < rate:
                ema_update(self.weights[name], model, min(1.0 - 1.0 / (self.steps + 1), decay))

    @torch.no_grad()
    def target(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """Per row, the logits of the copy that gives the true class the higher probability."""
        plastic = forward_with(model, self.weights["plastic"], x, eval_mode=True)
        stable = forward_with(model, self.weights["stable"], x, eval_mode=True)
        p_plastic = plastic.softmax(1).gather(1, y[:, None])
        p_stable = stable.softmax(1).gather(1, y[:, None])
        return torch.where(p_stable > p_plastic, stable, plastic)

    def logits(self, model: nn.Module, x: Tensor) -> Tensor:
        """The stable model's logits (the working model's before the first update)."""
        stable = self.weights.get("stable")
        return forward_with(model, stable, x) if stable else model(x)

    def to(self, device: str | torch.device) -> None:
        self.weights = {n: {k: v.to(device) for k, v in w.items()} for n, w in self.weights.items()}

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"{n}.{k}": v for n, w in self.weights.items() for k, v in w.items()}

    def load_state(self, tensors: dict[str, Tensor], steps: int) -> None:
        split = {
            n: {k[len(n) + 1 :]: v for k, v in tensors.items() if k.startswith(n + ".")}
            for n in EMA_NAMES
        }
        self.weights = {n: w for n, w in split.items() if w}
        self.steps = steps


# -- POD: pooled outputs distillation
POOLINGS: dict[str, Callable[[Tensor], Tensor]] = {  # on squared (N, C, H, W) maps, as PODNet
    "spatial": lambda a: torch.cat([a.sum(3).flatten(1), a.sum(2).flatten(1)], 1),
    "width": lambda a: a.sum(2).flatten(1),
    "height": lambda a: a.sum(3).flatten(1),
    "channel": lambda a: a.sum(1).flatten(1),
    "gap": lambda a: a.mean((2, 3)),
    "pixel": lambda a: a.flatten(1),
}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Mish)


def pod_layers(model: nn.Module) -> list[nn.Module]:
    """Modules whose outputs POD compares: in an nn.Sequential the activations before the output
    layer (one per hidden/conv block of the built-ins); otherwise, or if it has none, the
    top-level children with parameters before the one holding the output layer."""
    module = unwrap(model)
    _, head = output_layer(module)
    before: list[nn.Module] = []
    for child in module.children():
        if any(m is head for m in child.modules()):
            break
        before.append(child)
    sequential = isinstance(module, nn.Sequential)
    layers = [c for c in before if sequential and isinstance(c, ACTIVATIONS)]
    layers = layers or [c for c in before if next(c.parameters(), None) is not None]
    if not layers:
        raise ConfigError(
            "POD needs intermediate layers, but the model has none before its output layer; "
            "give it hidden layers (e.g. --hidden 256) or use method 'er'"
        )
    return layers


@contextlib.contextmanager
def captured(layers: Sequence[nn.Module]) -> Iterator[list[Tensor]]:
    """Collect the outputs of ``layers`` during the forward passes inside the block."""
    outputs: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        outputs.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[arg-type]

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def pod_loss(new: Sequence[Tensor], old: Sequence[Tensor], pooling: str, normalize: bool) -> Tensor:
    """PODNet's distance averaged over layers: squared 4-D maps pooled by ``pooling``, other
    features flattened; rows optionally L2-normalised; per-row L2 distance, batch mean."""
    if not new or len(new) != len(old):
        raise ConfigError(
            f"POD compares {len(new)} new with {len(old)} old features; need >= 1 each"
        )
    total = new[0].new_zeros((), dtype=torch.float32)
    for a, b in zip(new, old, strict=True):
        a, b = a.float(), b.float()
        if a.dim() == 4:
            a, b = POOLINGS[pooling](a.square()), POOLINGS[pooling](b.square())
        a, b = a.flatten(1), b.flatten(1)
        if normalize:
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        total = total + (a - b).norm(dim=1).mean()
    return total / len(new)


class PooledDistillation:
    """POD between the working model and a frozen snapshot taken at the start of an update."""

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.snapshot: Weights | None = None

    def begin(self, model: nn.Module, snapshot: bool) -> None:
        self.layers = pod_layers(model)  # checked every update, so a bad model fails at once
        self.snapshot = copy_weights(model) if snapshot else None

    def end(self) -> None:
        self.layers, self.snapshot = [], None  # module references must not outlive the update

    def logits_and_loss(
        self, model: nn.Module, x: Tensor, first: int, pooling: str, normalize: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``model(x)`` and the POD loss on rows ``x[first:]`` (None without a snapshot). The
        snapshot runs in the model's mode on the same rows, so at equal weights the loss is 0."""
        if self.snapshot is None:
            return model(x), None
        with captured(self.layers) as new:
            logits = model(x)
        with torch.no_grad(), captured(self.layers) as old:
            forward_with(model, self.snapshot, x)
        return logits, pod_loss(
            [f[first:] for f in new], [f[first:] for f in old], pooling, normalize
        )


# -- DER logits and shrink-and-perturb
def stored_logit_mse(current: Tensor, stored: Tensor, width: Tensor) -> Tensor:
    """MSE between logits and those stored with the rows, over each row's stored columns."""
    k = current.shape[1]
    mask = torch.arange(k, device=current.device) < width[:, None]
    error = (current.float() - stored[:, :k]).square() * mask
    return error.sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def shrink_perturb(
    model: nn.Module, shrink: float, sigma: float, generator: torch.Generator
) -> None:
    """Ash & Adams 2020: ``p <- shrink * p + sigma * N(0, 1)`` for every trainable parameter."""
    for p in unwrap(model).parameters():
        if p.requires_grad:
            noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
            p.mul_(shrink).add_(noise, alpha=sigma)
