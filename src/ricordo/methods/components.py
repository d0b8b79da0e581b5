"""Shared pieces of the ER family (CLS-ER, POD-ER, Super-ER): weight copies, consistency targets,
pooled feature distillation against features cached in the memory, shrink-and-perturb.

Copies of the model (CLS-ER's EMA models) are plain dicts of tensors keyed
like ``model.state_dict()`` and run through ``torch.func.functional_call``: no second module to
keep in sync, only tensors to save, and a grown output layer is padded in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.models.head import output_layer, unwrap

if TYPE_CHECKING:
    from ricordo.memory import TensorMemory

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


def pool_features(features: Sequence[Tensor], pooling: str) -> list[Tensor]:
    """Each layer's features as POD compares them, one float32 (N, d) tensor per layer: 4-D maps
    squared and pooled by ``pooling`` (as PODNet and Renate), other features flattened. Not yet
    normalised: ``pod_distance`` does that, so cached features serve either ``normalize``."""
    pooled = []
    for f in features:
        f = f.float()
        pooled.append(POOLINGS[pooling](f.square()) if f.dim() == 4 else f.flatten(1))
    return pooled


def pod_distance(new: Sequence[Tensor], old: Sequence[Tensor], normalize: bool) -> Tensor:
    """PODNet's distance between pooled features (``pool_features``), averaged over layers: rows
    optionally L2-normalised, then each row's L2 distance, averaged over rows."""
    if not new or len(new) != len(old):
        raise ConfigError(
            f"POD compares {len(new)} new with {len(old)} old features; need >= 1 each"
        )
    total = new[0].new_zeros((), dtype=torch.float32)
    for a, b in zip(new, old, strict=True):
        a, b = a.float().flatten(1), b.float().flatten(1)
        if normalize:
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        total = total + (a - b).norm(dim=1).mean()
    return total / len(new)


def pod_loss(new: Sequence[Tensor], old: Sequence[Tensor], pooling: str, normalize: bool) -> Tensor:
    """POD between two sets of raw layer outputs (``pod_distance`` of their pooled features)."""
    return pod_distance(pool_features(new, pooling), pool_features(old, pooling), normalize)


class CachedPOD:
    """POD against features cached with each memory row when it was stored, as in Renate.

    Each new row enters the memory with the pooled features (``pool_features``) that the forward
    pass of its training step gave it, in fields ``pod_0``, ``pod_1``, ... (one per layer of
    ``pod_layers``); a replayed row's current features are pulled toward those. A memory whose
    rows lack the fields (a state written before features were cached) gets them from the model
    at ``begin``, i.e. the rows are treated as inserted then. The pooling of the cached features
    is fixed once a row holds them; ``begin`` refuses another one.
    """

    def __init__(self) -> None:
        self.layers: list[nn.Module] = []
        self.pooling: str | None = None  # pooling of the cached features (None: none cached yet)

    def fields(self, count: int | None = None) -> list[str]:
        """Names of the memory fields holding the cached features (``count`` layers)."""
        return [f"pod_{i}" for i in range(len(self.layers) if count is None else count)]

    def begin(
        self, model: nn.Module, memory: TensorMemory | None, pooling: str, batch_size: int
    ) -> None:
        """Find the layers (every update, so a model without any fails at once) and give the
        stored rows cached features where they have none (``memory`` may be None)."""
        self.layers = pod_layers(model)  # checked every update, so a bad model fails at once
        filled = memory is not None and len(memory) > 0
        if filled and self.pooling is not None and pooling != self.pooling:
            raise ConfigError(
                f"pod_pooling={pooling!r} differs from {self.pooling!r}, with which the features "
                f"cached in the memory were pooled; keep pod_pooling={self.pooling!r} for this "
                "lineage"
            )
        self.pooling = pooling
        if memory is None or not filled or all(f in memory.fields for f in self.fields()):
            return
        stored = memory.get()["x"]
        features = self.features_of(model, stored, batch_size)
        for name, values in zip(self.fields(), features, strict=True):
            if name not in memory.fields:
                memory.add_field(name, values.new_zeros(values.shape[1:]))
                memory.update_field(name, torch.arange(len(values)), values)

    def end(self) -> None:
        self.layers = []  # module references must not outlive the update

    def forward(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``model(x)`` and the pooled features of every row (with gradients)."""
        assert self.pooling is not None and self.layers, "CachedPOD.begin must run first"
        with captured(self.layers) as raw:
            logits = model(x)
        return logits, pool_features(raw, self.pooling)

    @torch.no_grad()
    def features_of(self, model: nn.Module, x: Tensor, batch_size: int) -> list[Tensor]:
        """Pooled features of ``x`` (on the CPU) from the model in eval mode, in pieces; also
        after ``end`` (herding selects the rows to store after the update)."""
        assert self.pooling is not None, "CachedPOD.begin must run first"
        layers, device = pod_layers(model), next(model.parameters()).device
        was_training = model.training
        model.eval()
        parts: list[list[Tensor]] = []
        try:
            for start in range(0, len(x), batch_size):
                with captured(layers) as raw:
                    model(x[start : start + batch_size].to(device))
                parts.append([f.cpu() for f in pool_features(raw, self.pooling)])
        finally:
            model.train(was_training)
        return [torch.cat(layer) for layer in zip(*parts, strict=True)]

    def row_fields(self, features: Sequence[Tensor]) -> dict[str, Tensor]:
        """Memory fields holding ``features`` (pooled, one per layer) for new rows."""
        names = self.fields(len(features))
        return {n: f.detach().float() for n, f in zip(names, features, strict=True)}

    def loss(self, features: Sequence[Tensor], rows: dict[str, Tensor], normalize: bool) -> Tensor:
        """POD between replayed rows' current pooled features and those cached with them."""
        cached = [rows[n].to(f.device) for n, f in zip(self.fields(), features, strict=True)]
        return pod_distance(features, cached, normalize)


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
