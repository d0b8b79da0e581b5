"""SVAG and M-SVAG: stochastic variance-adapted gradient descent (Balles and Hennig,
"Dissecting Adam: The Sign, Magnitude and Variance of Stochastic Gradients", ICML 2018).

Adam's step is a sign step scaled by a factor that shrinks where the gradient is noisy.
These optimisers keep the variance adaptation and drop the sign: each coordinate's step is
the gradient (SVAG) or its momentum (M-SVAG) times ``gamma`` in [0, 1], close to 1 where the
gradient is consistent across steps and close to 0 where it is mostly noise.

The exact rule of the authors' code (``lballes/msvag``, ``msvag.py``), per coordinate, with
bias-corrected exponential moving averages of ``g`` and ``g**2`` (beta = 0.9, the paper's):

    m~ = beta m~ + (1 - beta) g;    v~ = beta v~ + (1 - beta) g**2     (both start at 0)
    m = m~ / (1 - beta**t);          v = v~ / (1 - beta**t)
    rho = (1 - beta)**2 (1 - beta**(2t)) / ((1 - beta**t)**2 (1 - beta**2)), at most 0.9999
    s = (v - m**2) / (1 - rho)                     the gradient's variance estimate
    M-SVAG: gamma = m**2 / (m**2 + rho s);  theta -= lr gamma m
    SVAG:   gamma = m**2 / (m**2 + s);      theta -= lr gamma g
    gamma clipped to [0, 1], 0 where it is 0/0 (m = v = 0)

``rho`` is the variance of the EMA ``m`` relative to one gradient's, so M-SVAG compares the
squared mean with the noise left in the momentum and SVAG with one gradient's noise. At t = 1,
``s = 0`` and ``gamma = 1``: the first step is plain (momentum-)SGD.

``weight_decay`` (ricordo's addition, 0 by default as in the paper) adds
``weight_decay * theta`` to the gradient before the moving averages see it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ricordo.errors import ConfigError
from ricordo.optim.common import check_hyperparameters, regularised_gradient

# Balles and Hennig (2018) use beta = 0.9 for both moving averages.
MSVAG_BETA = 0.9
# The cap on rho in lballes/msvag's M-SVAG (its SVAG class keeps an older 0.999): at t = 1,
# rho = 1 exactly and s would be 0/0. Only step 1 reaches the cap, where v - m**2 = 0 and s = 0
# whatever the cap, so one value serves both.
RHO_CAP = 0.9999


def relative_ema_variance(beta: float, t: int) -> float:
    """``rho_t``: the variance of the bias-corrected EMA of t i.i.d. gradients, divided by one
    gradient's variance, capped at ``RHO_CAP``."""
    rho = ((1 - beta) ** 2 * (1 - beta ** (2 * t))) / ((1 - beta**t) ** 2 * (1 - beta**2))
    return min(rho, RHO_CAP)


class VarianceAdaptedSGD(torch.optim.Optimizer):
    """M-SVAG (``momentum=True``) or SVAG (``momentum=False``); see the module docstring.

    State per parameter: ``step`` (an int), ``exp_avg`` and ``exp_avg_sq`` (tensors, the
    uncorrected EMAs of the gradient and its square).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = MSVAG_BETA,
        weight_decay: float = 0.0,
        *,
        momentum: bool = True,
    ) -> None:
        check_hyperparameters(lr, weight_decay, beta)
        if beta == 0:
            # rho = 1 at every step: s would be 0/0 (the variance needs an average over steps).
            raise ConfigError("beta=0 leaves no average to estimate the variance from; use 0.9")
        defaults = {"lr": lr, "beta": beta, "weight_decay": weight_decay, "use_momentum": momentum}
        super().__init__(params, defaults)

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
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta).add_(grad, alpha=1 - beta)
                exp_avg_sq.mul_(beta).addcmul_(grad, grad, value=1 - beta)
                correction = 1 - beta**t
                mean = exp_avg / correction
                mean_sq = mean * mean
                rho = relative_ema_variance(beta, t)
                variance = (exp_avg_sq / correction - mean_sq) / (1 - rho)
                noise = rho * variance if group["use_momentum"] else variance
                gamma = (mean_sq / (mean_sq + noise)).nan_to_num_(0.0).clamp_(0.0, 1.0)
                direction = mean if group["use_momentum"] else grad
                parameter.add_(gamma * direction, alpha=-group["lr"])
        return loss


class MSVAG(VarianceAdaptedSGD):
    """M-SVAG: the momentum ``m`` scaled by ``gamma = m**2 / (m**2 + rho s)``."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = MSVAG_BETA,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, beta, weight_decay, momentum=True)


class SVAG(VarianceAdaptedSGD):
    """SVAG: the gradient ``g`` scaled by ``gamma = m**2 / (m**2 + s)`` (no momentum step)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: float = MSVAG_BETA,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, beta, weight_decay, momentum=False)
