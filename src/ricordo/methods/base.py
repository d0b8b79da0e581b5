"""The method contract: a small class with explicit state; the engine owns loop and optimizer."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ricordo.errors import ConfigError
from ricordo.registry import Registry

if TYPE_CHECKING:
    from ricordo.config import UpdateConfig
    from ricordo.data.dataset import ArrayDataset
    from ricordo.memory import TensorMemory


@dataclass
class Batch:
    """One training batch on the training device (``x`` features, ``y`` class ids); ``index``
    holds the rows' positions in the method's ``training_data`` (on the CPU), when the engine
    built the batch from it (replayed batches have none)."""

    x: Tensor
    y: Tensor
    index: Tensor | None = None
    # Per-row loss weights (None: all 1), set by --selective-backprop gradient-matching: a
    # loss reads them with ``weighted_cross_entropy``; methods that do set ``reads_row_weights``.
    weight: Tensor | None = None


@dataclass
class UpdateContext:
    """What a method may read during one update (it never reaches into the engine itself)."""

    model: nn.Module
    config: UpdateConfig
    update_index: int
    device: torch.device
    generator: torch.Generator
    seen_classes: list[int]
    chunk_classes: list[int]
    step: int = 0
    # Steps this update will take (epochs x batches of the method's training data), set by the
    # engine before the first step; early stopping may end the update sooner.
    total_steps: int = 0
    # --mask-unseen: the classes the engine lets compete while training (chunk + memory); None
    # means no mask. Set by the engine for the training steps only.
    train_classes: list[int] | None = None
    # A lazy chunk's per-sample training transform (its own, then --augment), set by the engine
    # while it trains on one: ``augment`` then applies it to each replayed row too.
    sample_transform: Callable[[Tensor], Tensor] | None = None
    # --strategy ddp: this process's rank and the number of processes (engine.distributed);
    # each trains on its ``shard`` of every global batch. 0 and 1 in one process.
    rank: int = 0
    world_size: int = 1

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's rows of a batch every rank built alike (all of them in one process).

        Methods build replayed batches from identical memories and generators on every rank,
        then train on their shard, so the ranks together see the batch one process would."""
        if self.world_size == 1:  # returned at once: methods call this every step
            return rows
        from ricordo.engine.distributed import shard

        return shard(rows, self.rank, self.world_size)

    def logits(self, x: Tensor) -> Tensor:
        return self.mask_unseen(self.model(x))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The input of the output layer (penultimate features) and the logits, in one pass."""
        from ricordo.models.head import features_and_logits

        features, logits = features_and_logits(self.model, x)
        return features, self.mask_unseen(logits)

    def mask_unseen(self, logits: Tensor) -> Tensor:
        """``logits`` with the classes outside ``train_classes`` set to -inf, while the model
        trains (--mask-unseen); unchanged in eval mode (validation, prediction) or without a
        mask. Methods that store logits as targets (DER) should store ``self.model(x)``."""
        allowed = self.train_classes
        if allowed is None or not self.model.training:
            return logits
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[[c for c in allowed if c < logits.shape[-1]]] = True
        return logits.masked_fill(~keep, float("-inf"))

    def augment(self, x: Tensor) -> Tensor:
        """``x`` with the training augmentation ``config.augment`` applied (identity if none).

        The engine augments each new batch; methods call this on replayed rows. Evaluation and
        prediction never augment, and memories store the un-augmented rows. While the engine
        trains on a lazy chunk, each row gets that chunk's per-sample transform instead.
        """
        if self.sample_transform is not None:
            if len(x) == 0:
                return x
            # On the CPU, as in the DataLoader's workers: the transform is written for samples.
            rows = [self.sample_transform(row) for row in x.cpu()]
            return torch.stack(rows).to(x.device, x.dtype)
        spec = getattr(self.config, "augment", None)
        if spec is None:
            return x
        from ricordo.data.augment import parse_augmentation

        return parse_augmentation(spec)(x, self.generator)


@dataclass(frozen=True)
class NoParams:
    """Hyperparameters of a method that has none."""


class Method:
    """Base class. Subclasses set ``name``, optionally ``Params`` and ``memory_spec``."""

    name: ClassVar[str]
    Params: ClassVar[type] = NoParams
    summary: ClassVar[str] = ""
    memory_note: ClassVar[str] = ""  # how the method fills its memory, if not by the policy
    # Where the Params defaults come from (a named setting, never our own test accuracy); shown
    # by ``ricordo methods NAME`` and the README's Methods table.
    defaults_from: ClassVar[str] = ""
    # Whether the method trains on a lazy chunk (ricordo.data.LazyDataset, --lazy): its hooks
    # read the chunk batch by batch, never as one tensor. The Updater refuses the others.
    supports_lazy_data: ClassVar[bool] = False
    # --strategy ddp was verified for this method (engine.distributed: its loss reads the
    # rank's shard, its memory inserts whole global batches). Read from the class itself, not
    # inherited: a subclass that changes the loss or the memory must be verified on its own.
    supports_ddp: ClassVar[bool] = False
    # How --strategy ddp averages this method's gradients. True: the model is wrapped in
    # DistributedDataParallel (its forward is how the loss reaches every trained parameter).
    # False: the method calls parts of the model and its own parameters directly (the PEFT
    # methods: the encoder, their heads, prompts and keys), so the model stays unwrapped and the
    # loop averages every trained parameter's gradient across ranks after backward
    # (engine.distributed.average_gradients).
    ddp_wraps_model: ClassVar[bool] = True
    # Whether the method trains parts of a pretrained transformer (``--backbone``) and cannot
    # run without one (PEFT methods); ``check_config`` then refuses a config without it.
    needs_backbone: ClassVar[bool] = False
    # Whether the class's own ``loss`` applies ``Batch.weight`` (needed by --selective-backprop
    # gradient-matching). Read from the class that defines ``loss`` (``reads_row_weights``), so
    # a subclass that overrides ``loss`` does not inherit it.
    loss_reads_row_weights: ClassVar[bool] = True

    def __init__(self, params: Any, memory: TensorMemory | None) -> None:
        self.params = params
        self.memory = memory

    # -- memory ------------------------------------------------------------------------------
    @classmethod
    def memory_spec(cls, config: UpdateConfig) -> tuple[int | None, str] | None:
        """(capacity, policy) of the rehearsal memory this method needs, or None for none."""
        return None

    # -- lifecycle hooks -----------------------------------------------------------------------
    def begin_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        """A new chunk arrives (before training)."""

    def training_data(self, data: ArrayDataset, ctx: UpdateContext) -> ArrayDataset:
        """The data the engine iterates over in this update (default: the new chunk)."""
        return data

    def epochs(self, data: ArrayDataset, ctx: UpdateContext) -> int:
        """Epochs over ``data`` (what ``training_data`` returned) in this update (default:
        ``--epochs``). Methods that fit a fresh model to the memory (GDumb) set their own."""
        return ctx.config.epochs

    def learning_rate(self, epoch: int, epochs: int, lr: float) -> float:
        """The learning rate of ``epoch`` (of ``epochs``), given ``--lr`` (default: constant)."""
        return lr

    def loss(self, batch: Batch, ctx: UpdateContext) -> Tensor:
        """The training loss of one step (default: cross-entropy on the batch)."""
        return weighted_cross_entropy(ctx.logits(batch.x), batch.y, batch.weight)

    def before_step(self, batch: Batch, ctx: UpdateContext) -> None:
        """Called between backward and the optimizer step: gradients are in ``p.grad``
        (e.g. A-GEM projects them, SI reads them)."""

    def after_step(self, batch: Batch, ctx: UpdateContext) -> None:
        """Called after each optimizer step (e.g. reservoir insertion), with the batch as it
        was before augmentation."""

    def end_update(self, data: ArrayDataset, ctx: UpdateContext) -> None:
        """Training on the chunk has finished."""

    def memory_candidates(self, data: ArrayDataset, ctx: UpdateContext) -> dict[str, Tensor]:
        """Rows an offline memory policy (``herding``) may select at the end of the update, with
        the memory's fields; the engine calls ``memory.reselect`` after ``end_update``. Methods
        that store more than ``x`` and ``y`` (e.g. logits) override this to supply them."""
        return {"x": data.x, "y": data.y}

    def predict(self, x: Tensor, ctx: UpdateContext) -> Tensor:
        """Logits used for prediction and evaluation."""
        return ctx.logits(x)

    # -- methods that train parts of their own (PEFT: adapters, prompts, task heads) -----------
    # Order in an update: check_config (when the Updater is built), prepare_model, then the
    # optimizer is built over the model's parameters that require grad plus extra_parameters,
    # then begin_update ... end_update as above. After a state is loaded: load_state, attach.
    @classmethod
    def check_config(cls, config: UpdateConfig) -> None:
        """Refuse in one line (ConfigError) a configuration the method cannot run with, e.g. a
        PEFT method (``needs_backbone``) without ``--backbone``. Called when the Updater is
        built; overrides call ``super().check_config(config)``."""
        if getattr(config, "selective_backprop", None) == "gradient-matching" and not (
            reads_row_weights(cls)
        ):
            raise ConfigError(
                f"--selective-backprop gradient-matching weights the rows it keeps, but method "
                f"{cls.name!r}'s loss does not read row weights; use it with a method whose "
                f"loss does ({', '.join(weighted_methods())}) or choose --selective-backprop "
                "loss or random"
            )
        if cls.needs_backbone and getattr(config, "backbone", None) is None:
            raise ConfigError(
                f"method {cls.name!r} trains small parts of a frozen pretrained transformer; "
                "pass --backbone NAME_OR_PATH (Python: backbone=...), a ViT or BERT-like "
                "encoder's hub name or folder"
            )

    def prepare_model(self, model: nn.Module, ctx: UpdateContext) -> None:
        """Change the model in place before this update's optimizer is built: inject a new LoRA
        adapter, set which parameters require grad. ``model`` is on ``ctx.device``."""

    def extra_parameters(self, ctx: UpdateContext) -> list[nn.Parameter]:
        """Parameters the method owns outside the model (a new prompt set, a new task head)
        that this update's optimizer trains, on ``ctx.device``. Called after prepare_model."""
        return []

    def attach(self, model: nn.Module) -> None:
        """After ``load_state``: put back into the freshly built ``model`` what the method keeps
        inside it (LoRA adapters into the rebuilt encoder, whose weights a state never holds)."""

    def predict_with_tasks(self, x: Tensor, ctx: UpdateContext) -> tuple[Tensor, Tensor | None]:
        """``predict``'s logits and, for methods that route each row to a task's expert, the
        task id chosen per row (None otherwise); benchmarks log task-identification accuracy
        from it."""
        return self.predict(x, ctx), None

    # -- state ---------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        """Method tensors (old logits, Fisher, ...) to save; the memory is saved separately."""
        return {}

    def state_json(self) -> dict[str, Any]:
        """JSON-able method state other than hyperparameters."""
        return {}

    def load_state(self, tensors: dict[str, Tensor], data: dict[str, Any]) -> None:
        """Restore what ``state_tensors``/``state_json`` returned."""


METHODS: Registry[type[Method]] = Registry("method", plugins="ricordo.methods")


def weighted_cross_entropy(logits: Tensor, y: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the rows, each row's term times its ``weight`` when given
    (``Batch.weight``: mean over rows of ``weight_i * loss_i``, not divided by the weights' sum)."""
    if weight is None:
        return F.cross_entropy(logits, y)
    return (F.cross_entropy(logits, y, reduction="none") * weight).mean()


def reads_row_weights(method: type[Method]) -> bool:
    """Whether ``method``'s ``loss`` applies ``Batch.weight``: the flag of the class that
    defines the ``loss`` it runs."""
    owner = next(c for c in method.__mro__ if "loss" in c.__dict__)
    return bool(owner.__dict__.get("loss_reads_row_weights", False))


def weighted_methods() -> list[str]:
    """Registered methods whose loss reads row weights."""
    return sorted(name for name in METHODS.names() if reads_row_weights(METHODS.get(name)))


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method to the registry under its ``name``."""
    return METHODS.register(cls.name)(cls)


def parse_params(method: type[Method], values: dict[str, Any]) -> Any:
    """Build the method's Params dataclass from strings or values, rejecting unknown names."""
    fields = {f.name: f for f in dataclasses.fields(method.Params)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise ConfigError(
            f"method {method.name!r} has no parameter(s) {unknown}; its parameters: {valid}"
        )
    hints = typing.get_type_hints(method.Params)
    converted = {k: _convert(method.name, k, v, hints[k]) for k, v in values.items()}
    try:
        return method.Params(**converted)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {method.name!r}: {error}") from None


def params_to_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


def _convert(method: str, name: str, value: Any, hint: Any) -> Any:
    """Convert a CLI string to the annotated type (int, float, bool, str, or Optional of one)."""
    if not isinstance(value, str):
        return value
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if type(None) in options and value.lower() in ("none", "null", ""):
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            if option is bool:
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return option(value)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"method {method!r} parameter {name}={value!r} is not a valid {hint}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
