"""ricordo.optim's optimisers: two steps against the papers' formulas written out by hand,
digits trained above chance through Updater, the registry behind --optimizer, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ricordo import UpdateConfig, Updater
from ricordo.data import Scenario
from ricordo.engine.checkpoint import EpochEnd
from ricordo.errors import ConfigError
from ricordo.optim import MSVAG, OPTIMIZERS, SVAG, SignSGD, Signum, build_optimizer

THETA0 = [1.0, -2.0]
# Two gradients whose first coordinate changes sign: the sign of the momentum (+) and of the
# second gradient (-) differ there, so signsgd and signum part ways at step 2.
GRADS = [[0.5, -1.0], [-0.3, 2.0]]
LR = 0.1


def _two_steps(optimizer_class: type[torch.optim.Optimizer], **options: float) -> list[float]:
    theta = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    optimizer = optimizer_class([theta], lr=LR, **options)
    for grad in GRADS:
        theta.grad = torch.tensor(grad, dtype=torch.float64)
        optimizer.step()
    return theta.detach().tolist()


def test_signsgd_steps_by_the_sign_of_each_gradient() -> None:
    # theta1 = theta0 - 0.1 sign(g1) = [0.9, -1.9]; theta2 = theta1 - 0.1 sign(g2) = [1.0, -2.0]
    assert _two_steps(SignSGD) == pytest.approx([1.0, -2.0], abs=1e-12)


def test_signum_steps_by_the_sign_of_the_momentum() -> None:
    # m1 = 0.1 g1 = [0.05, -0.1]           -> theta1 = [0.9, -1.9]
    # m2 = 0.9 m1 + 0.1 g2 = [0.015, 0.11]  -> theta2 = [0.8, -2.0]
    assert _two_steps(Signum) == pytest.approx([0.8, -2.0], abs=1e-12)
    # beta = 0 is signSGD
    assert _two_steps(Signum, beta=0.0) == pytest.approx([1.0, -2.0], abs=1e-12)


def _variance_adapted_by_hand(momentum: bool, beta: float = 0.9) -> list[float]:
    """The update of methods.md 8.2 (lballes/msvag), coordinate by coordinate in floats."""
    theta = list(THETA0)
    m_raw, v_raw = [0.0, 0.0], [0.0, 0.0]
    for t, grad in enumerate(GRADS, start=1):
        rho = ((1 - beta) ** 2 * (1 - beta ** (2 * t))) / ((1 - beta**t) ** 2 * (1 - beta**2))
        rho = min(rho, 0.9999)
        for k, g in enumerate(grad):
            m_raw[k] = beta * m_raw[k] + (1 - beta) * g
            v_raw[k] = beta * v_raw[k] + (1 - beta) * g * g
            m = m_raw[k] / (1 - beta**t)
            v = v_raw[k] / (1 - beta**t)
            s = (v - m * m) / (1 - rho)
            gamma = m * m / (m * m + (rho * s if momentum else s))
            gamma = min(max(gamma, 0.0), 1.0)
            theta[k] -= LR * gamma * (m if momentum else g)
    return theta


def test_variance_adaptation_keeps_the_first_step_and_shrinks_noisy_ones() -> None:
    msvag, svag = _two_steps(MSVAG), _two_steps(SVAG)
    assert msvag == pytest.approx(_variance_adapted_by_hand(momentum=True), abs=1e-12)
    assert svag == pytest.approx(_variance_adapted_by_hand(momentum=False), abs=1e-12)
    # Step 1 is SGD (gamma = 1): theta1 = theta0 - 0.1 g1 = [0.95, -1.9]. Step 2, coordinate 0,
    # M-SVAG: m = (0.9 * 0.05 - 0.03) / 0.19, v = (0.9 * 0.025 + 0.009) / 0.19,
    # rho_2 = 0.01 * (1 - 0.9**4) / (0.19**2 * 0.19), s = (v - m**2) / (1 - rho_2).
    m, v = 0.015 / 0.19, 0.0315 / 0.19
    rho = 0.01 * (1 - 0.9**4) / (0.19**2 * 0.19)
    s = (v - m * m) / (1 - rho)
    gamma = m * m / (m * m + rho * s)
    assert 0 < gamma < 0.1  # a sign flip: mostly noise, a small step
    assert msvag[0] == pytest.approx(0.95 - LR * gamma * m, abs=1e-12)
    svag_gamma = m * m / (m * m + s)
    assert svag[0] == pytest.approx(0.95 - LR * svag_gamma * -0.3, abs=1e-12)


def test_variance_adaptation_of_a_zero_gradient_is_no_step() -> None:
    theta = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = MSVAG([theta], lr=0.1)
    for _ in range(2):
        theta.grad = torch.tensor([0.0, 1.0])
        optimizer.step()
    assert torch.isfinite(theta).all()
    assert theta[0].item() == 1.0  # gamma = 0/0 -> 0, not NaN


def test_weight_decay_is_added_to_the_gradient() -> None:
    # g + 0.5 theta = [0.5 + 0.5, -1.0 - 1.0]: with SVAG's first step gamma = 1, an SGD step.
    theta = torch.nn.Parameter(torch.tensor(THETA0, dtype=torch.float64))
    optimizer = SVAG([theta], lr=LR, weight_decay=0.5)
    theta.grad = torch.tensor(GRADS[0], dtype=torch.float64)
    optimizer.step()
    assert theta.tolist() == pytest.approx([1.0 - 0.1 * 1.0, -2.0 + 0.1 * 2.0], abs=1e-9)


def test_registry_names_and_paper_defaults() -> None:
    assert list(OPTIMIZERS) == [
        "sgd",
        "momentum",
        "adam",
        "adamw",
        "signsgd",
        "signum",
        "svag",
        "m-svag",
    ]
    params = [torch.nn.Parameter(torch.zeros(2))]

    def group(name: str, momentum: float = 0.0) -> dict[str, object]:
        return build_optimizer(name, params, lr=0.1, momentum=momentum).param_groups[0]

    assert group("momentum")["momentum"] == 0.9 and group("momentum", 0.5)["momentum"] == 0.5
    assert group("sgd")["momentum"] == 0.0
    assert group("signum")["beta"] == 0.9 and group("signum", 0.8)["beta"] == 0.8
    assert group("m-svag")["beta"] == 0.9 and group("svag", 0.5)["beta"] == 0.9
    assert isinstance(build_optimizer("m-svag", params, lr=0.1), MSVAG)


def test_one_line_errors() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match=r"^unknown optimizer 'lion'; use one of sgd, momentum"):
        build_optimizer("lion", params, lr=0.1)
    with pytest.raises(ConfigError, match=r"^lr=0 must be > 0, such as 0.01$"):
        SignSGD(params, lr=0)
    with pytest.raises(ConfigError, match=r"^beta=1.0 must be in \[0, 1\), such as 0.9$"):
        Signum(params, lr=0.1, beta=1.0)
    with pytest.raises(ConfigError, match=r"^beta=0 leaves no average"):
        MSVAG(params, lr=0.1, beta=0)
    with pytest.raises(ConfigError, match=r"--optimizer 'msvag' is invalid; expected one of sgd"):
        UpdateConfig(optimizer="msvag")


# Learning rates of the usual size for each kind of step (sign steps move every weight by lr).
DIGITS_LR = {"momentum": 0.05, "signsgd": 0.002, "signum": 0.002, "svag": 0.1, "m-svag": 0.1}


@pytest.mark.parametrize("name", list(DIGITS_LR))
def test_each_optimizer_trains_digits_above_chance(digits_scenario: Scenario, name: str) -> None:
    updater = Updater(
        method="finetune",
        optimizer=name,
        lr=DIGITS_LR[name],
        epochs=3,
        hidden=(32,),
        progress=False,
        threads=1,
    )
    chunk = digits_scenario.train[0]  # two classes
    updater.update(chunk)
    assert updater.history[-1]["config"]["optimizer"] == name
    accuracy = updater.evaluate(digits_scenario.test[0])["accuracy"]
    assert accuracy > 0.9, (name, accuracy)  # chance is 0.5


@pytest.mark.parametrize("name", ["signum", "m-svag"])
def test_optimizer_state_survives_a_checkpoint(
    digits_scenario: Scenario, tmp_path: Path, name: str
) -> None:
    """Resuming from epoch 1 of 2 gives the weights of a straight run, bit for bit: the state
    (momentum, EMAs, step count) goes through the checkpoint's safetensors and JSON."""
    options = dict(method="finetune", optimizer=name, lr=0.01, epochs=2, hidden=(16,))
    chunk = digits_scenario.train[0]
    straight = Updater(**options, progress=False, threads=1)
    straight.update(chunk)

    class Interrupt(Exception):
        pass

    def stop(end: EpochEnd) -> None:
        end.save(tmp_path / "ckpt")
        raise Interrupt

    with pytest.raises(Interrupt):
        Updater(**options, progress=False, threads=1).update(chunk, on_epoch_end=stop)
    resumed = Updater(**options, progress=False, threads=1)
    resumed.update(chunk, resume_from=tmp_path / "ckpt")
    assert straight.model is not None and resumed.model is not None
    for (key, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), key
    assert not math.isnan(resumed.history[-1]["train"]["final_loss"])
