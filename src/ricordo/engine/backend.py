"""Execution backends: a plain PyTorch loop, or Lightning Fabric for devices/precision/strategy.

``auto`` takes the plain loop for one device at full precision (Fabric's wrappers cost ~10% per
step on small models, see benchmarks/README.md) and Fabric for everything else.

Also where the CPU thread count of training is chosen (:func:`resolve_threads`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ricordo.config import UpdateConfig
from ricordo.engine.distributed import DATA_PARALLEL
from ricordo.errors import ConfigError

FULL_PRECISION = ("32-true", "32")


class Backend(Protocol):
    device: torch.device

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, wrap_model: bool = True
    ) -> tuple[Any, Any]: ...

    def backward(self, loss: Tensor) -> None: ...

    def autocast(self) -> contextlib.AbstractContextManager[None]: ...


class TorchBackend:
    """Plain PyTorch on one device, float32."""

    name = "torch"
    rank = 0
    world_size = 1

    def __init__(self, accelerator: str) -> None:
        self.device = _resolve_device(accelerator)

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, wrap_model: bool = True
    ) -> tuple[Any, Any]:
        return model, optimizer

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class FabricBackend:
    """Lightning Fabric: accelerator, precision and strategy come from Fabric."""

    name = "fabric"

    def __init__(self, config: UpdateConfig) -> None:
        try:  # heavy (seconds) and an extra: imported only when this backend is used
            from lightning.fabric import Fabric
        except ImportError:  # the `fabric` extra is not installed
            if config.backend == "fabric":
                asked = "--backend fabric"
            elif config.precision not in FULL_PRECISION:
                asked = f"--precision {config.precision}"
            else:
                asked = f"--strategy {config.strategy}"
            raise ConfigError(
                f'{asked} needs Lightning Fabric, which is not installed; pip install "ricordo'
                '[fabric]", or train at float32 on one device (--precision 32-true, --backend auto)'
            ) from None

        key = (config.accelerator, config.devices, config.num_nodes, config.precision)
        launched = _LAUNCHED.get(key + (config.strategy,))
        try:
            self.fabric = launched or Fabric(
                accelerator=config.accelerator,
                devices=config.devices,
                num_nodes=config.num_nodes,
                precision=config.precision,  # type: ignore[arg-type]
                strategy=config.strategy,
            )
            if config.strategy in DATA_PARALLEL and launched is None:
                _check_started_processes(self.fabric, config)
                # Once per process: rank 0 starts ranks 1..N-1 (they re-run this command) unless
                # torchrun or SLURM started them; then every rank joins the process group.
                self.fabric.launch()
                _LAUNCHED[key + (config.strategy,)] = self.fabric
        except ConfigError:
            raise  # ours (_check_started_processes), already one line with its fix
        except (ValueError, RuntimeError, TypeError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            # Fabric names its Python arguments; the user typed the CLI's flags.
            first = re.sub(r"`devices=(\d+)`", r"`--devices \1`", first)
            first = re.sub(r"`num_nodes=(\d+)`", r"`--num-nodes \1`", first)
            if _slurm_launched():
                first = f"{first.rstrip('.')}; {SLURM_FIX}"
            raise ConfigError(f"Lightning Fabric rejected the device options: {first}") from None
        self.device = self.fabric.device
        self.rank = self.fabric.global_rank
        self.world_size = self.fabric.world_size

    def setup(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, *, wrap_model: bool = True
    ) -> tuple[Any, Any]:
        """The model and optimizer prepared by Fabric. ``wrap_model=False`` (data-parallel
        methods that call parts of the model themselves, ``Method.ddp_wraps_model``): the model
        stays as it is, on the device, and only the optimizer is set up; the caller averages
        the gradients (engine.distributed.average_gradients)."""
        if not wrap_model:
            return model.to(self.device), self.fabric.setup_optimizers(optimizer)
        return self.fabric.setup(model, optimizer)

    def backward(self, loss: Tensor) -> None:
        self.fabric.backward(loss)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        # Fabric's own context, not wrapped in a generator: entered every step.
        return self.fabric.autocast()


# The data-parallel Fabric of this process, launched once (its ranks and process group persist).
_LAUNCHED: dict[tuple[object, ...], Any] = {}

SLURM_FIX = (
    "under SLURM run one task per device: --devices = the job's --ntasks-per-node and "
    "--num-nodes = its --nodes (srun starts --devices x --num-nodes tasks)"
)


def _slurm_launched() -> bool:
    """Whether Fabric takes this process for a SLURM task (its SLURMEnvironment.detect rule:
    SLURM_NTASKS set, and the job not named bash/interactive)."""
    name = os.environ.get("SLURM_JOB_NAME")
    return "SLURM_NTASKS" in os.environ and name not in ("bash", "interactive")


def _check_started_processes(fabric: Any, config: UpdateConfig) -> None:
    """Refuse SLURM tasks other than --devices x --num-nodes. Fabric checks the count for
    torchrun but, under SLURM, only tasks per node and nodes: with more SLURM_NTASKS than that,
    the process group waits 30 minutes for ranks that never come; with fewer, the update
    silently runs on fewer devices than asked. (Fabric's own launcher starts as many as asked;
    its re-run ranks know the world size only after launch, so they are not checked here.)"""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(fabric.strategy, "cluster_environment", None)
    if not isinstance(environment, SLURMEnvironment):
        return
    started, asked = environment.world_size(), config.devices * config.num_nodes
    if started != asked:
        raise ConfigError(
            f"--strategy ddp: SLURM started {started} tasks but --devices {config.devices} x "
            f"--num-nodes {config.num_nodes} = {asked}; {SLURM_FIX}"
        )


# Fabric strategies that shard the model's parameters across devices (prefixes of its names).
SHARDED = ("fsdp", "deepspeed", "model_parallel")


def make_backend(config: UpdateConfig) -> TorchBackend | FabricBackend:
    """Pick the backend the config asks for (``auto``: plain loop when Fabric adds nothing)."""
    if config.strategy.startswith(SHARDED):
        # The methods read and copy whole parameters (penalties, teachers, EMA models, saved
        # states); under sharding each rank holds a slice. Lightning's FSDP also needs GPUs.
        raise ConfigError(
            f"--strategy {config.strategy} shards the model across devices, which Ricordo does "
            "not support (its methods and states need whole parameters); use --strategy ddp, "
            "or a PEFT method on a frozen --backbone with --precision bf16-mixed (docs/scaling.md)"
        )
    if config.strategy in DATA_PARALLEL:
        if config.backend == "torch":
            raise ConfigError(
                f"--strategy {config.strategy} runs through Lightning Fabric; drop --backend torch"
            )
        return FabricBackend(config)
    if config.devices != 1 or config.num_nodes != 1:
        flag = f"--devices {config.devices}" if config.devices != 1 else "--num-nodes"
        raise ConfigError(
            f"{flag}: one process trains on one device; use --devices 1, or --strategy ddp for "
            "data-parallel processes"
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


# ------------------------------------------------------------------------------------ threads

# Below this many multiply-adds per training step (forward pass), one thread is fastest: the ops
# are too small to split, and every extra OpenMP thread waits at each op's barrier, which on a
# busy machine (a thread descheduled) turns a 0.03 s update into 2 s (benchmarks/threads.py).
# Digits' MLP (256,128) at batch 32 is 1.6 M; an MLP (1024,1024) is 36 M and gains ~1.5x from a
# second idle core.
SMALL_STEP_MACS = 20_000_000


def resolve_threads(
    threads: int | None, model: nn.Module, input_shape: Sequence[int], batch_size: int
) -> int:
    """CPU threads for training: ``threads`` when given, else the ``auto`` rule.

    ``auto``: one thread when a step is small (:data:`SMALL_STEP_MACS`, estimated by
    :func:`step_macs`); otherwise one per core not busy with other work right now (the cores this
    process may use, minus the other runnable processes), at least 1 and at most torch's current
    setting (its default: the physical cores, or ``OMP_NUM_THREADS``; in a benchmark worker the
    worker's share of the cores). So a small model never collapses on a busy machine, and a large
    one does not start more threads than there are idle cores when its update starts.
    """
    if threads is not None:
        return threads
    if step_macs(model, input_shape, batch_size) < SMALL_STEP_MACS:
        return 1
    idle = _usable_cores() - _other_runnable()
    return max(1, min(torch.get_num_threads(), idle))


def step_macs(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> int:
    """Rough multiply-adds of one forward pass over ``batch_size`` rows of ``input_shape``.

    Linear layers count their weights once per row; convolutions once per position of the
    input's spatial size (an upper bound: strides and pooling shrink later layers). Other layers
    are ignored; the result only needs to tell a small step from a large one.
    """
    positions = math.prod(input_shape[2:])  # (rows, channels, *spatial): 1 for flat features
    per_row = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if isinstance(module, nn.Linear):
            per_row += weight.numel()
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_row += weight.numel() * positions
    return per_row * max(1, batch_size)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _other_runnable() -> int:
    """Processes other than this one that want a CPU now (Linux: /proc/loadavg's running count,
    an instant sample; elsewhere the 1-minute load average; 0 when neither is known)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            running = int(handle.read().split()[3].split("/")[0])
        return max(0, running - 1)  # this process is running: it is reading the file
    except (OSError, ValueError, IndexError):
        pass
    try:
        return round(os.getloadavg()[0])
    except (AttributeError, OSError):  # Windows
        return 0
