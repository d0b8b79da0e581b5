"""Execution backends: a plain PyTorch loop, or Lightning Fabric for devices/precision/strategy.

``auto`` takes the plain loop for one device at full precision (Fabric's wrappers cost ~10% per
step on small models, see benchmarks/README.md) and Fabric for everything else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ricordo.config import UpdateConfig
from ricordo.errors import ConfigError

FULL_PRECISION = ("32-true", "32")


class Backend(Protocol):
    device: torch.device

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]: ...

    def backward(self, loss: Tensor) -> None: ...

    def autocast(self) -> contextlib.AbstractContextManager[None]: ...


class TorchBackend:
    """Plain PyTorch on one device, float32."""

    name = "torch"

    def __init__(self, accelerator: str) -> None:
        self.device = _resolve_device(accelerator)

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return model, optimizer

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FabricBackend:
    """Lightning Fabric: accelerator, precision and strategy come from Fabric."""

    name = "fabric"

    def __init__(self, config: UpdateConfig) -> None:
        from lightning.fabric import Fabric  # heavy: imported only when this backend is used

        try:
            self.fabric = Fabric(
                accelerator=config.accelerator,
                devices=config.devices,
                precision=config.precision,  # type: ignore[arg-type]
                strategy=config.strategy,
            )
        except (ValueError, RuntimeError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ConfigError(f"Lightning Fabric rejected the device options: {first}") from None
        self.device = self.fabric.device

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        return self.fabric.setup(model, optimizer)

    def backward(self, loss: Tensor) -> None:
        self.fabric.backward(loss)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        with self.fabric.autocast():
            yield


def make_backend(config: UpdateConfig) -> TorchBackend | FabricBackend:
    """Pick the backend the config asks for (``auto``: plain loop when Fabric adds nothing)."""
    if config.devices != 1:
        raise ConfigError(
            f"--devices {config.devices}: one update runs on one device in this version; "
            "use --devices 1 (multi-device updates are planned)"
        )
    simple = config.precision in FULL_PRECISION and config.strategy in ("auto", "single_device")
    if config.backend == "torch" or (config.backend == "auto" and simple):
        if config.backend == "torch" and not simple:
            raise ConfigError(
                f"--backend torch runs float32 on one device only; for --precision "
                f"{config.precision} / --strategy {config.strategy} use --backend fabric"
            )
        return TorchBackend(config.accelerator)
    return FabricBackend(config)


def _resolve_device(accelerator: str) -> torch.device:
    if accelerator == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if accelerator in ("cuda", "gpu"):
        if not torch.cuda.is_available():
            raise ConfigError("--accelerator cuda was asked for but no GPU is visible; use cpu")
        return torch.device("cuda")
    if accelerator == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--accelerator mps was asked for but MPS is not available; use cpu")
        return torch.device("mps")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--accelerator {accelerator!r} is unknown; use auto, cpu, cuda or mps")
