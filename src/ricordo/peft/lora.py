"""LoRA adapters through ``peft``: several named adapters in one Hugging Face model.

Each adapter adds ``ΔW = (alpha / rank) · B A`` to every targeted ``nn.Linear`` (Hu et al. 2021);
``A`` starts random (peft's Kaiming-uniform) and ``B`` at zero, so a new adapter leaves the model's
output unchanged until it is trained. One adapter (or none) is active at a time, or several,
whose updates then add up (L2L's additive combination of a pool's selected adapters); only
adapters activated with ``trainable=True`` have ``requires_grad``, so an optimizer built
afterwards trains them alone while the base weights and every other adapter stay bit-identical.

The adapters are injected with ``peft.inject_adapter_in_model`` into the plain HF model (no
``PeftModel`` wrapper), switched with ``peft.functional.set_adapter``, read with
``get_peft_model_state_dict`` and restored with ``set_peft_model_state_dict``. The functions take
the model as an argument and keep nothing: a method stores the tensors ``adapter_state`` returns
(small, on the CPU) and calls ``load_adapter`` to put them back into a freshly loaded backbone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ricordo.errors import ConfigError, StateCorruptError


@dataclass(frozen=True)
class LoraSettings:
    """Shape of every adapter of one method: rank r, scale alpha / r, dropout on the adapter's
    input, and the names of the ``nn.Linear`` modules it adapts (matched as peft does: a module
    whose qualified name ends with one of them)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value", "q_proj", "v_proj")

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"LoRA rank={self.rank!r} must be an integer >= 1")
        if not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError(f"LoRA alpha={self.alpha!r} must be a number > 0")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoRA dropout={self.dropout!r} must be in [0, 1)")
        targets = parse_targets(self.target_modules)
        object.__setattr__(self, "target_modules", targets)

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )


def parse_targets(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Target module names from ``"query,value"`` or a sequence; at least one."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(str(item).strip() for item in items if str(item).strip())
    if not names:
        raise ConfigError(
            f"LoRA target_modules={value!r} names no module; e.g. query,value (BERT/ViT "
            "attention projections)"
        )
    return names


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters injected into ``model``, in injection order."""
    return list(getattr(model, "peft_config", {}) or {})


def add_adapter(model: nn.Module, name: str, settings: LoraSettings) -> None:
    """Inject a new adapter ``name`` into ``model`` (B = 0: the output does not change).

    Its ``A`` is drawn from torch's global RNG (peft's initialisation). Afterwards no adapter is
    trainable and the previously active adapter (or none) is active again.
    """
    if name in adapter_names(model):
        raise ConfigError(f"the model already has a LoRA adapter named {name!r}")
    previous = active_adapters(model)
    with warnings.catch_warnings():
        # peft warns that a second adapter joins the first: several adapters is the point here.
        warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
        from peft import inject_adapter_in_model

        try:
            inject_adapter_in_model(settings.peft_config(), model, adapter_name=name)
        except ValueError as error:  # peft's NoMatchingPeftModuleError is a ValueError
            getattr(model, "peft_config", {}).pop(name, None)
            raise ConfigError(
                f"LoRA target_modules {list(settings.target_modules)} match no nn.Linear of the "
                f"backbone ({type(model).__name__}; {str(error).splitlines()[0]}); its linear "
                f"layers end in: {', '.join(linear_names(model)[:12])}"
            ) from None
    activate(model, previous)


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's ``nn.Linear`` modules (for error messages)."""
    names: list[str] = []
    for qualified, module in model.named_modules():
        last = qualified.rpartition(".")[2]
        if isinstance(module, nn.Linear) and last not in names and not last.startswith("lora_"):
            names.append(last)
    return names


def _layers(model: nn.Module) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def activate(
    model: nn.Module, name: str | Sequence[str] | None, *, trainable: bool = False
) -> None:
    """Make adapter ``name`` the only active one (None: none, i.e. the base model; a list of
    names: all of them, their updates summed).

    Only with ``trainable=True`` do they get ``requires_grad``; every other adapter is frozen.
    """
    from peft.functional import set_adapter

    names = _names(name)
    missing = [n for n in names if n not in adapter_names(model)]
    if missing:
        raise ConfigError(f"the model has no LoRA adapter {missing}; it has {adapter_names(model)}")
    if not _layers(model):
        return
    set_adapter(model, names, inference_mode=not trainable)


def _names(name: str | Sequence[str] | None) -> list[str]:
    if name is None:
        return []
    return [name] if isinstance(name, str) else list(name)


def active_adapters(model: nn.Module) -> list[str]:
    """The active adapters' names (empty when the base model runs alone)."""
    for layer in _layers(model):
        return list(layer.active_adapters)
    return []


def active_adapter(model: nn.Module) -> str | None:
    """The (first) active adapter's name, or None when the base model runs alone."""
    active = active_adapters(model)
    return active[0] if active else None


@contextlib.contextmanager
def using_adapter(model: nn.Module, name: str | Sequence[str] | None) -> Iterator[None]:
    """Run the block with adapter(s) ``name`` (None: the base model) active and frozen; the
    previously active adapters and their trainability are restored afterwards."""
    previous = active_adapters(model)
    trainable = any(p.requires_grad for n in previous for p in adapter_parameters(model, n))
    activate(model, name)
    try:
        yield
    finally:
        activate(model, previous, trainable=trainable)


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The parameters of adapter ``name`` (its A and B of every adapted layer)."""
    found: list[nn.Parameter] = []
    for layer in _layers(model):
        for attribute in layer.adapter_layer_names:
            per_adapter = getattr(layer, attribute)
            if name in per_adapter:
                found.extend(per_adapter[name].parameters())
    return found


def train_dropout(model: nn.Module, name: str) -> None:
    """Put adapter ``name``'s dropout in training mode (every other module keeps its mode).

    A frozen ``TransformerEncoder`` holds its HF model in eval mode all the time, which would
    switch LoRA dropout off for good; a method calls this before each training forward pass.
    Evaluation (``model.eval()``) turns it off again."""
    for layer in _layers(model):
        dropout = getattr(layer, "lora_dropout", {})
        if name in dropout:
            dropout[name].train(True)


def adapter_state(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Detached CPU copies of adapter ``name``'s tensors, keyed without the adapter name."""
    from peft import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, adapter_name=name)
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in tensors.items()}


def load_adapter(
    model: nn.Module, name: str, settings: LoraSettings, tensors: dict[str, Tensor]
) -> None:
    """Inject adapter ``name`` and set its tensors to ``tensors`` (from ``adapter_state``),
    exactly; a set of keys that does not fit the model is a one-line error."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    # The random A drawn at injection is overwritten: keep the caller's RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        add_adapter(model, name, settings)
    expected = set(get_peft_model_state_dict(model, adapter_name=name))
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        extra = sorted(set(tensors) - expected)[:3]
        raise StateCorruptError(
            f"the saved LoRA adapter {name!r} does not fit the backbone (missing {missing}, "
            f"unexpected {extra}); load the state with the backbone it was trained on"
        )
    device = next((p.device for p in adapter_parameters(model, name)), torch.device("cpu"))
    with torch.no_grad():
        set_peft_model_state_dict(
            model, {k: v.to(device) for k, v in tensors.items()}, adapter_name=name
        )
    activate(model, active_adapters(model))  # set_peft_model_state_dict may touch requires_grad
