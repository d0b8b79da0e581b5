"""Gradient-matching coreset selection for the rehearsal memory (methods.md section 4).

Balles, Zappella, Archambeau (arXiv 2112.05025 / 2203.14544): keep the rows whose mean gradient
matches the mean gradient of the data they summarise, in expectation over the model's
*initialisation* distribution (NTK-inspired: no trained model is needed, and the choice does not
depend on what the current weights happen to be). With S sampled initialisations and per-example
gradients g_i(theta_s), each row gets the feature ``phi_i = S^-1/2 [g_i(theta_1); ...;
g_i(theta_S)]`` (each block optionally count-sketched to ``projection`` coordinates), so that

    J(C) = mean_s || mean_{i in D} g_i(theta_s) - mean_{j in C} g_j(theta_s) ||^2
         = || mean_D phi - mean_C phi ||^2,

and the greedy selection that adds, at step k, the row minimising ``|| (sum_C phi + phi_j) / k -
mean_D phi ||^2`` is kernel herding on phi (``herding_order`` without normalisation).

Where the architecture and its seeds come from: the engine hands the policy the trained model at
the end of the update (``GradientMatchingPolicy.embedding``); the policy deep-copies it once and
re-initialises the copy S times by calling every submodule's ``reset_parameters`` under a seeded
RNG (seeds drawn from the lineage's ``--seed``, the same in every update, so rows kept earlier
are re-judged under the same kernel). Parameters outside any module's ``reset_parameters`` (a raw
``nn.Parameter``) keep their trained values. The trained weights are never modified.

Cost (N pool rows after sub-sampling, S initialisations, d = min(gradient size, projection)):
``layers=last`` one forward pass per row and initialisation (closed-form gradient, no backward);
``layers=all`` one forward+backward per row and initialisation, ``chunk_size`` rows at a time
(``ricordo.optim.per_example_grads``). Memory: the S initial weight copies, plus N * S * d float32
features, plus one class's features in float64 during selection. Selection: O(m * N * S * d) for
a memory of m rows (``herding_order``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError

__all__ = [
    "GradientMatchingOptions",
    "count_sketch",
    "gradient_features",
    "matching_objective",
    "reinitialise",
]

LAYERS = ("last", "all")
# Count-sketch hashing: ((a k + b) mod p) with p a Mersenne prime; a, b < p and k < 2**32 keep the
# products inside int64.
_PRIME = 2**31 - 1


@dataclass(frozen=True)
class GradientMatchingOptions:
    """``--memory-option`` values of the ``gradient-matching`` policy.

    The paper's S (initialisations) is not known (methods.md 4.5: "a handful"); 5 is our choice.
    The other defaults bound cost and memory (see the module docstring), they are not tuned.
    """

    # Random initialisations the gradients are averaged over (S).
    initialisations: int = 5
    # "last": the output layer's closed-form gradient (one forward pass, methods.md 10.2);
    # "all": exact per-example gradients of every parameter that requires grad (vmap).
    layers: str = "last"
    # Gradients with more coordinates than this are count-sketched to this many per
    # initialisation (an unbiased inner-product sketch, like a JL projection); 0: never.
    projection: int = 2048
    # At most this many pool rows are embedded per re-selection (a seeded sub-sample, per class
    # when balanced so that earlier classes' few exemplars stay); 0: every row.
    pool: int = 5000
    # True: split the capacity equally among the classes (like herding) and match each class's
    # own mean gradient; False: one selection matching the whole pool's mean gradient.
    balanced: bool = True
    # layers=all: rows per vmapped per-example-gradient pass (bounds activation memory).
    chunk_size: int = 64

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> GradientMatchingOptions:
        """Validated options from ``--memory-option`` pairs (unknown keys refused)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(
                f"memory policy 'gradient-matching' has no option {unknown[0]!r}; options: "
                f"{', '.join(sorted(known))}"
            )
        values = {**{f.name: f.default for f in dataclasses.fields(cls)}, **dict(options)}
        for name, low in (
            ("initialisations", 1),
            ("projection", 0),
            ("pool", 0),
            ("chunk_size", 1),
        ):
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(
                    f"gradient-matching option {name} must be an integer >= {low}, got {value!r}"
                )
        if values["layers"] not in LAYERS:
            raise ConfigError(
                f"gradient-matching option layers must be 'last' or 'all', got {values['layers']!r}"
            )
        if not isinstance(values["balanced"], bool):
            raise ConfigError(
                f"gradient-matching option balanced must be true or false, got "
                f"{values['balanced']!r}"
            )
        return cls(**values)


def reinitialise(model: nn.Module, seed: int) -> None:
    """Re-draw ``model``'s weights in place: every submodule's ``reset_parameters`` under a
    global RNG seeded with ``seed`` (forked, so the caller's random state is untouched)."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def count_sketch(parts: list[Tensor], width: int, seed: int) -> Tensor:
    """``(N, width)`` count sketch of the rows of the concatenation of ``parts`` (each ``(N,
    ...)``), never concatenated: coordinate k goes to bucket h(k) with sign s(k), both hashed from
    k and ``seed``, so inner products are preserved in expectation."""
    gen = torch.Generator().manual_seed(seed)
    a, b, c, e = (int(v) for v in torch.randint(1, _PRIME, (4,), generator=gen))
    rows = len(parts[0])
    out = parts[0].new_zeros((rows, width))
    offset = 0
    for part in parts:
        flat = part.reshape(rows, -1)
        k = torch.arange(offset, offset + flat.shape[1], device=flat.device)
        bucket = ((a * k + b) % _PRIME) % width
        sign = 1.0 - 2.0 * (((c * k + e) % _PRIME) % 2).to(flat.dtype)
        out.index_add_(1, bucket, flat * sign)
        offset += flat.shape[1]
    return out


def _gradient_parts(
    model: nn.Module, x: Tensor, y: Tensor, layers: str, chunk_size: int
) -> list[Tensor]:
    """Per-example gradients of cross-entropy at the model's current weights, as a list of
    ``(N, ...)`` blocks (not concatenated)."""
    from ricordo.models.head import features_and_logits
    from ricordo.optim.per_example import last_layer_grads, per_example_grads

    if layers == "last":
        with torch.no_grad():
            features, logits = features_and_logits(model, x)
        return [last_layer_grads(features.float(), logits.float(), y)]
    grads = per_example_grads(model, F.cross_entropy, x, y, chunk_size=chunk_size)
    return [g.float() for g in grads.values()]


def gradient_features(
    models: list[nn.Module] | Callable[[int], nn.Module],
    x: Tensor,
    y: Tensor,
    options: GradientMatchingOptions,
    sketch_seeds: list[int],
) -> Tensor:
    """``phi`` (N, S * d) float32 on the CPU: per-example gradients at each initialisation,
    sketched when larger than ``options.projection``, scaled by S^-1/2 and concatenated.

    ``models`` gives the model at initialisation s (a list, or a function of s)."""
    blocks = []
    count = options.initialisations
    for s in range(count):
        model = models[s] if isinstance(models, list) else models(s)
        parts = _gradient_parts(model, x, y.long(), options.layers, options.chunk_size)
        size = sum(p[0].numel() for p in parts) if len(x) else 0
        if options.projection and size > options.projection:
            block = count_sketch(parts, options.projection, sketch_seeds[s])
        else:
            block = torch.cat([p.reshape(len(x), -1) for p in parts], dim=1)
        blocks.append(block.detach().float().cpu())
    return torch.cat(blocks, dim=1) / count**0.5


class InitialisationEmbedding:
    """The callable ``reselect`` uses: (inputs, labels) -> gradient features at S fresh
    initialisations of ``model``'s architecture. Holds one copy of the model and the S initial
    weight sets; the trained model is not touched."""

    def __init__(
        self,
        model: nn.Module,
        options: GradientMatchingOptions,
        seed: int,
        device: torch.device,
    ) -> None:
        self.options = options
        self.device = device
        gen = torch.Generator().manual_seed(seed)
        seeds = torch.randint(0, 2**62, (2, options.initialisations), generator=gen).tolist()
        self.sketch_seeds: list[int] = seeds[1]
        self._copy = copy.deepcopy(model).eval()
        self._weights: list[dict[str, Tensor]] = []
        for init_seed in seeds[0]:
            reinitialise(self._copy, init_seed)
            self._weights.append({k: v.clone() for k, v in self._copy.state_dict().items()})
        self._loaded = -1

    def _model(self, s: int) -> nn.Module:
        if self._loaded != s:
            self._copy.load_state_dict(self._weights[s])
            self._loaded = s
        return self._copy

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = x.to(self.device), y.to(self.device)
        return gradient_features(self._model, x, y, self.options, self.sketch_seeds)


def matching_objective(features: Tensor, chosen: Tensor) -> float:
    """``J(C) = || mean_D phi - mean_C phi ||^2`` (float64): the squared distance between the
    mean gradient feature of all rows and that of the ``chosen`` rows (the quantity the
    greedy selection reduces; averaged over the initialisations through phi's scaling)."""
    f = features.double()
    return float(((f.mean(0) - f[chosen].mean(0)) ** 2).sum())
