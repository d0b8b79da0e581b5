"""CABS: the batch size of each SGD step from the gradient noise and the loss (methods.md 7).

Balles, Romero and Hennig, "Coupling Adaptive Batch Sizes with Learning Rates" (UAI 2017,
arXiv 1612.05086). A batch of ``m`` rows gives a gradient whose noise is ``tr(Sigma) / m``; the
expected decrease of the loss per row processed is largest for

    m = c * lr * tr(Sigma) / L

with ``Sigma`` the covariance of one row's gradient and ``L`` the loss (its attainable minimum
taken as 0). So the batch grows as the loss falls or the gradients get noisier, and in
proportion to the learning rate: the coupling the title names (halving ``lr`` halves ``m``).
The rule of the authors' code (``ProbabilisticNumerics/cabs``, ``cabs.py``) and cockpit's CABS
quantity, after each step:

    xi   = sum_k ( mean_b g_bk**2 - (mean_b g_bk)**2 )     population variance, summed
    xi~  = mu xi~ + (1 - mu) xi;    L~ = mu L~ + (1 - mu) L    (start: xi~ = 0, L~ = 1)
    m    = clip(round(c lr xi~ / L~), m_min, m_max)

with the paper's ``mu = 0.95``, ``c = 1``, ``m_min = 16`` (also the first batch), ``m_max =
2048``. ``xi`` comes from exact per-example gradients (``per_example_grads``) of the model's
cross-entropy on the step's new rows, at the weights the step starts from; ``L`` is the loss the
step minimised (the method's: with a replay or penalty term that is not the plain
cross-entropy, whose minimum is not 0 either, so the rule is then a heuristic). The paper
derives the rule for plain SGD, which the configuration enforces (``--optimizer sgd``,
``--momentum 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.optim.per_example import grad_moments, per_example_grads

# ProbabilisticNumerics/cabs defaults (methods.md 7.1).
CABS_SMOOTHING = 0.95
CABS_MIN_BATCH = 16
CABS_MAX_BATCH = 2048
CABS_FACTOR = 1.0  # c; the paper recommends keeping it at 1
# The running averages' starting values in the authors' code.
INITIAL_VARIANCE = 0.0
INITIAL_LOSS = 1.0
# Added to the smoothed loss so that a loss of exactly 0 gives the largest batch, not a 0/0.
LOSS_FLOOR = 1e-8
# Rows whose per-example gradients are held at once (memory ~ this many times the parameters).
VARIANCE_CHUNK = 256


@dataclass
class CABSSchedule:
    """The running averages of the CABS rule and the batch size they give for the next step."""

    min_batch: int = CABS_MIN_BATCH
    max_batch: int = CABS_MAX_BATCH
    smoothing: float = CABS_SMOOTHING
    factor: float = CABS_FACTOR
    # L*: the lowest loss the model can reach, taken from the loss before the rule divides by
    # it. The paper assumes 0 (over-parameterised models); with label noise or a regulariser
    # the loss cannot fall to 0 and the batch stops growing unless an estimate is given here
    # (methods.md 7.2). Not an update option: the engine uses the paper's 0.
    min_loss: float = 0.0
    variance: float = INITIAL_VARIANCE
    loss: float = INITIAL_LOSS
    next_batch: int = CABS_MIN_BATCH

    def __post_init__(self) -> None:
        if not 2 <= self.min_batch <= self.max_batch:
            raise ConfigError(
                f"CABS batch sizes min={self.min_batch}, max={self.max_batch}: need "
                "2 <= --cabs-min-batch <= --cabs-max-batch (the paper's 16 and 2048)"
            )
        if not 0 <= self.smoothing < 1:
            raise ConfigError(
                f"cabs_smoothing={self.smoothing} must be in [0, 1), such as the paper's 0.95"
            )
        self.next_batch = min(max(self.next_batch, self.min_batch), self.max_batch)

    def observe(self, variance: float, loss: float, lr: float) -> int:
        """Take one step's gradient variance (``tr Sigma``) and loss at learning rate ``lr``;
        returns the batch size of the next step."""
        mu = self.smoothing
        self.variance = mu * self.variance + (1 - mu) * variance
        self.loss = mu * self.loss + (1 - mu) * loss
        excess = max(self.loss - self.min_loss, 0.0)
        wanted = self.factor * lr * self.variance / (excess + LOSS_FLOOR)
        # not wanted < max: also an infinite or NaN ratio (the loss guard stops NaN losses).
        size = self.max_batch if not wanted < self.max_batch else round(wanted)
        self.next_batch = max(int(size), self.min_batch)
        return self.next_batch

    def state_dict(self) -> dict[str, float | int]:
        """What a checkpoint keeps to continue the schedule exactly (JSON numbers)."""
        return {"variance": self.variance, "loss": self.loss, "next_batch": self.next_batch}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.variance = float(state["variance"])
        self.loss = float(state["loss"])
        self.next_batch = int(state["next_batch"])


def gradient_variance_trace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    allowed_classes: list[int] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    chunk_size: int = VARIANCE_CHUNK,
) -> float:
    """``tr Sigma``: the population variance of the per-example gradients of the batch
    ``(x, y)``, summed over every parameter that requires grad, at the weights now.

    The loss is the cross-entropy of the model's logits (the classes not in ``allowed_classes``
    masked out, as ``--mask-unseen`` does), or ``loss_fn(output, target)`` of one row as a batch
    of one (``per_example_grads``'s contract).

    The rows are taken ``chunk_size`` at a time and the chunks' moments combined (Chan et al.'s
    pairwise update), so memory stays at one chunk's gradients however large the batch grows.
    Runs the model in eval mode (BatchNorm in train mode couples the rows, methods.md 0.1;
    dropout adds noise).
    """
    from ricordo.models.head import unwrap

    module = unwrap(model)
    was_training = module.training
    module.eval()

    def cross_entropy(out: Tensor, target: Tensor) -> Tensor:
        out = out.float()
        if allowed_classes is not None:
            keep = torch.zeros(out.shape[-1], dtype=torch.bool, device=out.device)
            keep[[c for c in allowed_classes if c < out.shape[-1]]] = True
            out = out.masked_fill(~keep, float("-inf"))
        return F.cross_entropy(out, target)

    loss = cross_entropy if loss_fn is None else loss_fn

    rows = 0
    mean: Tensor | None = None
    squares: Tensor | None = None  # sum over rows of squared deviations from ``mean``
    try:
        for start in range(0, len(x), chunk_size):
            x_part, y_part = x[start : start + chunk_size], y[start : start + chunk_size]
            grads = per_example_grads(module, loss, x_part, y_part)
            chunk_mean, chunk_var = grad_moments(grads, unbiased=False)
            n = len(y_part)
            if mean is None or squares is None:
                rows, mean, squares = n, chunk_mean, chunk_var * n
                continue
            delta = chunk_mean - mean
            total = rows + n
            squares = squares + chunk_var * n + delta**2 * (rows * n / total)
            mean = mean + delta * (n / total)
            rows = total
    finally:
        module.train(was_training)
    assert squares is not None
    return float(squares.sum() / rows)
