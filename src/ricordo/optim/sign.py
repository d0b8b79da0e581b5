"""Sign-based descent: signSGD and signum (Bernstein et al., 2018).

Sign descent is steepest descent in the l-infinity norm (Balles, Pedregosa and Le Roux, 2020):
every coordinate moves by exactly the learning rate, whatever its gradient's magnitude. It
suits problems whose curvature is concentrated on the diagonal with a few large eigenvalues.

* ``signsgd``: ``theta -= lr * sign(g)``. This is also "SSD" (stochastic sign descent) of
  Balles and Hennig, "Dissecting Adam" (2018).
* ``signum``: ``m = beta * m + (1 - beta) * g``; ``theta -= lr * sign(m)``, the sign of the
  momentum (Bernstein et al., 2018, Algorithm "Signum", beta = 0.9). The bias-corrected EMA of
  "Dissecting Adam"'s M-SSD is a positive multiple of this ``m``, so M-SSD is the same update.

``weight_decay`` (ricordo's addition, 0 by default as in the papers) adds ``weight_decay * theta``
to the gradient before its sign is taken, as ``torch.optim.SGD`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ricordo.optim.common import check_hyperparameters, regularised_gradient

# Bernstein et al. (2018): "we use beta = 0.9" for Signum.
SIGNUM_BETA = 0.9


class SignSGD(torch.optim.Optimizer):
    """``theta -= lr * sign(g)``: stochastic sign descent (signSGD, SSD)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        check_hyperparameters(lr, weight_decay)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                direction = regularised_gradient(parameter, group["weight_decay"]).sign()
                parameter.add_(direction, alpha=-group["lr"])
        return loss


class Signum(torch.optim.Optimizer):
    """``m = beta m + (1 - beta) g``; ``theta -= lr * sign(m)``: sign of the momentum (signum,
    M-SSD). State per parameter: ``momentum`` (a tensor)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = SIGNUM_BETA,
        weight_decay: float = 0.0,
    ) -> None:
        check_hyperparameters(lr, weight_decay, beta)
        super().__init__(params, {"lr": lr, "beta": beta, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta = group["beta"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = regularised_gradient(parameter, group["weight_decay"])
                state = self.state[parameter]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(parameter)
                momentum = state["momentum"]
                momentum.mul_(beta).add_(grad, alpha=1 - beta)
                parameter.add_(momentum.sign(), alpha=-group["lr"])
        return loss
