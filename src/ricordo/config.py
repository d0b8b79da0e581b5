"""UpdateConfig: every option of an update job, validated at construction.

The CLI is a thin layer over this dataclass: each CLI option has the same name as a field here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ricordo.errors import ConfigError

BACKENDS = ("auto", "torch", "fabric")
PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
MEMORY_INSERTS = ("every-epoch", "once")
BATCH_SIZE_SCHEDULES = ("fixed", "cabs")
SELECTIVE_BACKPROP = ("loss", "gradient-matching", "random")  # ricordo.engine.selective
DEFAULT_KEEP_FRACTION = 0.5
EARLY_STOPPING = (None, "none", "validation", "eb")
EB_LAYERS = ("all", "last")
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit; derived per-update seeds stay below this
MAX_THREADS = 1024  # a fixed cap (not this machine's cores): states move between machines

# Fields fixed for a whole lineage: changing them would make the stored state meaningless.
LINEAGE_FIELDS = (
    "model",
    "hidden",
    "config",
    "model_options",
    "method",
    "memory_size",
    "memory_policy",
    "memory_storage",
    "max_classes",
    "num_classes",
    "backbone",
    "max_length",
    "train_backbone",
)


@dataclass(frozen=True)
class UpdateConfig:
    """Options of one update job (model, method, memory, optimisation, devices, seed)."""

    # What is trained (fixed for a lineage).
    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    config: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "er"
    params: dict[str, Any] = field(default_factory=dict)
    memory_size: int = 500
    memory_policy: str = "reservoir"
    # --memory-option K=V values of the memory policy (gradient-matching's initialisations,
    # layers, pool...; ricordo.memory.gradient_matching). Not a lineage field: they steer how
    # the memory is re-selected at the end of each update and may change between updates.
    memory_options: dict[str, Any] = field(default_factory=dict)
    memory_storage: str = "ram"  # "ram" or "mmap" (memory-mapped .npy files: larger than RAM)
    max_classes: int = 1000  # the most classes a growing head may reach (num_classes None)
    # The output layer's width when the classes are known (as Mammoth's networks): N columns from
    # the first update on, never grown; a label >= N is refused. None: the head grows with the
    # labels seen (open-ended streams).
    num_classes: int | None = None
    # A pretrained Hugging Face encoder (hub name or local folder; models.backbone) whose CLS
    # feature feeds the growing linear head; model and hidden are then unused. Text chunks are
    # tokenized to max_length tokens with its tokenizer. train_backbone: train the encoder's
    # weights too (they are saved in the state then); by default it is frozen and not saved.
    backbone: str | None = None
    max_length: int = 128
    train_backbone: bool = False
    # How it is trained (may change from one update to the next).
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 32
    # How many new rows each step takes: "fixed" (batch_size) or "cabs" (from the gradient
    # variance and the loss, coupled to the learning rate: ricordo.optim.cabs; plain SGD only),
    # between cabs_min_batch (also the first step's) and cabs_max_batch rows, the running
    # averages weighting the past by cabs_smoothing (the paper's 16, 2048, 0.95).
    batch_size_schedule: str = "fixed"
    cabs_min_batch: int = 16
    cabs_max_batch: int = 2048
    cabs_smoothing: float = 0.95
    epochs: int = 10
    val_fraction: float = 0.0
    patience: int | None = None
    # How an update stops early: "validation" (the best --val-fraction epoch after --patience
    # epochs without improvement), "eb" (the EB criterion from per-example gradients of the
    # training batches, no rows held out: ricordo.optim.eb) or "none". None: "validation" when
    # --patience is set, else "none" (what configs written before this option meant).
    early_stopping: str | None = None
    # EB criterion: evaluated every eb_every steps; on all trainable parameters or on the output
    # layer only (closed form, cheaper); its values smoothed by an EMA with this weight on the
    # newest value (cockpit's EB gauge: 0.2), stopping once the smoothed value is > 0;
    # eb_epsilon added to each variance (0: the paper's formula, coordinates of variance 0 left
    # out; 1e-5: cockpit's, see ricordo.optim.eb).
    eb_every: int = 1
    eb_layers: str = "all"
    eb_smoothing: float = 0.2
    eb_epsilon: float = 0.0
    # Held-out evaluation rows kept in the state (ricordo.gate.holdout): this share of each
    # chunk, at most holdout_max rows of it, seeded, never trained on, carried across updates;
    # what the regression gate (--gate) compares old and new models on. Off by default: a
    # default share would train every existing lineage on fewer rows and change its results.
    holdout: float = 0.0
    holdout_max: int = 500
    augment: str | None = None  # training-batch augmentation spec, e.g. "crop:4,flip"
    seed: int = 0
    # Where it runs.
    backend: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    # Machines of a --strategy ddp update (devices per node x nodes processes in all).
    num_nodes: int = 1
    precision: str = "32-true"
    strategy: str = "auto"
    threads: int | None = None  # None: auto (engine.backend.resolve_threads)
    # DataLoader processes that read a lazy chunk (ricordo.data.LazyDataset, --lazy);
    # 0 reads it in the training process. In-memory chunks do not use them.
    data_workers: int = 0
    progress: bool = True
    # Where training metrics go (--logger): "csv[:DIR]", "tensorboard[:DIR]", "mlflow[:EXPERIMENT]",
    # "wandb[:PROJECT]" (engine.loggers). Per job: a loaded state does not inherit it.
    logger: tuple[str, ...] = ()
    # Training only: logits of classes in neither the chunk nor the memory are set to -inf.
    mask_unseen: bool = False
    # Working folder of an mmap memory's files (default: the temp folder; avoid a RAM tmpfs).
    memory_dir: str | None = None
    # When the memory sees the chunk's rows: "every-epoch" offers each row once per epoch (the
    # Mammoth default: repeated offers favour the current chunk); "once" offers each row once
    # per update (first epoch), so the memory is a uniform sample of the distinct rows so far.
    memory_insert: str = "every-epoch"
    # Selective backprop (ricordo.engine.selective): forward each new batch without gradients,
    # then train on ceil(keep_fraction * rows) of its rows, chosen by "loss" (highest),
    # "gradient-matching" (a weighted subset matching the mean last-layer gradient) or
    # "random". None: every row.
    selective_backprop: str | None = None
    keep_fraction: float = DEFAULT_KEEP_FRACTION

    def __post_init__(self) -> None:
        _check(
            isinstance(self.hidden, (tuple, list)) and all(_is_int(h) for h in self.hidden),
            "hidden",
            self.hidden,
            "a list of integer layer sizes such as 256,128",
        )
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "model_options", dict(self.model_options))
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "memory_options", dict(self.memory_options))
        object.__setattr__(self, "precision", str(self.precision))
        from ricordo.engine.loggers import logger_specs

        object.__setattr__(self, "logger", logger_specs(self.logger))
        if not isinstance(self.model, str):  # the config is JSON; model code lives in Updater
            raise ConfigError(
                f"model= here takes a built-in model's name, not a {type(self.model).__name__}; "
                "pass your own nn.Module or function when creating the Updater: "
                "Updater(model=...)"
            )
        _check(
            self.backbone is None or (isinstance(self.backbone, str) and bool(self.backbone)),
            "backbone",
            self.backbone,
            "a Hugging Face hub name or a local folder written by save_pretrained",
        )
        _check(
            self.backbone is None or self.config is None,
            "backbone",
            self.backbone,
            "no model code as well: --backbone and --config (model=) both pick the model",
        )
        _check(
            _is_int(self.max_length) and 2 <= self.max_length <= 65536,
            "max_length",
            self.max_length,
            "an integer in [2, 65536]: tokens per text, [CLS] and [SEP] included",
        )
        _check(
            isinstance(self.train_backbone, bool) and (self.backbone or not self.train_backbone),
            "train_backbone",
            self.train_backbone,
            "true only with a --backbone",
        )
        from ricordo.optim.registry import OPTIMIZERS  # the names make_optimizer builds

        _check(
            self.optimizer in OPTIMIZERS,
            "optimizer",
            self.optimizer,
            f"one of {', '.join(OPTIMIZERS)}",
        )
        _check(self.backend in BACKENDS, "backend", self.backend, f"one of {BACKENDS}")
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        # Numbers: type, finiteness and range, so a typo fails here and not as a loss of 4.8e34
        # (--momentum 5), a traceback (--seed 2**70) or a crash at exit (--threads 100000).
        _check(_finite(self.lr) and self.lr > 0, "lr", self.lr, "a finite learning rate > 0")
        _check(
            _finite(self.momentum) and 0 <= self.momentum < 1,
            "momentum",
            self.momentum,
            "a value in [0, 1), such as 0.9",
        )
        _check(
            _finite(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            self.weight_decay,
            "a finite value >= 0",
        )
        _check(
            _finite(self.val_fraction) and 0 <= self.val_fraction < 1,
            "val_fraction",
            self.val_fraction,
            "a value in [0, 1)",
        )
        _check(
            _finite(self.holdout) and 0 <= self.holdout < 1,
            "holdout",
            self.holdout,
            "a share of each chunk in [0, 1), such as 0.1 (0: keep no held-out rows)",
        )
        for name, low in (
            ("batch_size", 1),
            ("epochs", 1),
            ("memory_size", 0),
            ("holdout_max", 1),
        ):
            value = getattr(self, name)
            _check(_is_int(value) and value >= low, name, value, f"an integer >= {low}")
        _check(
            self.patience is None or (_is_int(self.patience) and self.patience >= 1),
            "patience",
            self.patience,
            "an integer >= 1 (it needs --val-fraction > 0)",
        )
        _check(
            self.patience is None or self.val_fraction > 0,
            "patience",
            self.patience,
            "a validation split as well: add --val-fraction 0.1",
        )
        _check(
            self.early_stopping in EARLY_STOPPING,
            "early_stopping",
            self.early_stopping,
            "'validation' (needs --patience and --val-fraction), 'eb' (no validation set) or "
            "'none'",
        )
        _check(
            self.early_stopping != "validation" or self.patience is not None,
            "early_stopping",
            self.early_stopping,
            "a --patience as well: add --patience 3 --val-fraction 0.1",
        )
        _check(
            self.early_stopping not in ("eb", "none") or self.patience is None,
            "patience",
            self.patience,
            f"no value with --early-stopping {self.early_stopping}: --patience counts "
            "validation epochs (--early-stopping validation)",
        )
        _check(
            _is_int(self.eb_every) and self.eb_every >= 1,
            "eb_every",
            self.eb_every,
            "an integer >= 1 (evaluate the EB criterion every N steps)",
        )
        _check(
            self.eb_layers in EB_LAYERS,
            "eb_layers",
            self.eb_layers,
            "'all' (every trainable parameter) or 'last' (the output layer, closed form)",
        )
        _check(
            _finite(self.eb_smoothing) and 0 < self.eb_smoothing <= 1,
            "eb_smoothing",
            self.eb_smoothing,
            "a weight in (0, 1] on the newest EB value (1: no smoothing)",
        )
        _check(
            _finite(self.eb_epsilon) and self.eb_epsilon >= 0,
            "eb_epsilon",
            self.eb_epsilon,
            "a value >= 0 added to each gradient variance (0: the paper; cockpit: 1e-5)",
        )
        _check(
            _is_int(self.seed) and 0 <= self.seed <= MAX_SEED,
            "seed",
            self.seed,
            f"an integer in [0, 2**63 - 1 = {MAX_SEED}]",
        )
        _check(
            self.memory_storage in ("ram", "mmap"),
            "memory_storage",
            self.memory_storage,
            "'ram' or 'mmap' (memory-mapped files for memories larger than RAM)",
        )
        self._check_batch_size_schedule()
        _check(
            self.memory_insert in MEMORY_INSERTS,
            "memory_insert",
            self.memory_insert,
            "'every-epoch' (offer each row to the memory every epoch, as Mammoth) or 'once' "
            "(each row once per update: a uniform sample of the distinct rows)",
        )
        _check(
            self.memory_dir is None or self.memory_storage == "mmap",
            "memory_dir",
            self.memory_dir,
            "no folder unless --memory-storage mmap",
        )
        from ricordo.memory.policies import POLICIES

        if self.memory_policy in POLICIES:  # an unknown name is refused when the memory is built
            POLICIES.get(self.memory_policy).check_options(self.memory_options)
        _check(
            _is_int(self.max_classes) and self.max_classes >= 1,
            "max_classes",
            self.max_classes,
            "an integer >= 1",
        )
        _check(
            self.num_classes is None or (_is_int(self.num_classes) and self.num_classes >= 1),
            "num_classes",
            self.num_classes,
            "an integer >= 1: the number of classes, labels 0..N-1 (or none: a growing head)",
        )
        if self.num_classes is not None:  # a numpy integer would not go into the JSON state
            object.__setattr__(self, "num_classes", int(self.num_classes))
        _check(all(h >= 1 for h in self.hidden), "hidden", self.hidden, "positive layer sizes")
        _check(
            _is_int(self.devices) and self.devices >= 1, "devices", self.devices, "an integer >= 1"
        )
        _check(
            _is_int(self.num_nodes) and self.num_nodes >= 1,
            "num_nodes",
            self.num_nodes,
            "an integer >= 1",
        )
        if self.augment is not None:
            from ricordo.data.augment import training_augment_spec

            object.__setattr__(self, "augment", training_augment_spec(self.augment))
        _check(
            self.threads is None or (_is_int(self.threads) and 1 <= self.threads <= MAX_THREADS),
            "threads",
            self.threads,
            f"an integer in [1, {MAX_THREADS}]",
        )
        _check(
            _is_int(self.data_workers) and 0 <= self.data_workers <= MAX_THREADS,
            "data_workers",
            self.data_workers,
            f"an integer in [0, {MAX_THREADS}] (DataLoader processes; 0: none)",
        )
        _check(
            self.selective_backprop is None or self.selective_backprop in SELECTIVE_BACKPROP,
            "selective_backprop",
            self.selective_backprop,
            "loss, gradient-matching or random (or leave it out to train on every row)",
        )
        _check(
            _finite(self.keep_fraction) and 0 < self.keep_fraction <= 1,
            "keep_fraction",
            self.keep_fraction,
            "a share of each batch in (0, 1], such as 0.5",
        )
        _check(
            self.selective_backprop is not None or self.keep_fraction == DEFAULT_KEEP_FRACTION,
            "keep_fraction",
            self.keep_fraction,
            "--selective-backprop loss, gradient-matching or random as well (it chooses the "
            "rows kept)",
        )

    def _check_batch_size_schedule(self) -> None:
        _check(
            self.batch_size_schedule in BATCH_SIZE_SCHEDULES,
            "batch_size_schedule",
            self.batch_size_schedule,
            "'fixed' (--batch-size rows every step) or 'cabs' (adaptive, coupled to --lr)",
        )
        for name in ("cabs_min_batch", "cabs_max_batch"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 2, name, value, "an integer >= 2")
        _check(
            self.cabs_max_batch >= self.cabs_min_batch,
            "cabs_max_batch",
            self.cabs_max_batch,
            f"at least --cabs-min-batch ({self.cabs_min_batch})",
        )
        _check(
            _finite(self.cabs_smoothing) and 0 <= self.cabs_smoothing < 1,
            "cabs_smoothing",
            self.cabs_smoothing,
            "a weight in [0, 1) on the past, such as the paper's 0.95",
        )
        if self.batch_size_schedule == "cabs":
            _check(
                self.optimizer == "sgd" and self.momentum == 0,
                "batch_size_schedule",
                self.batch_size_schedule,
                "plain SGD (--optimizer sgd --momentum 0): the CABS rule couples the batch "
                "size to SGD's learning rate",
            )

    @property
    def stopping_rule(self) -> str:
        """The early stopping in effect: ``early_stopping``, or what ``None`` means."""
        if self.early_stopping is not None:
            return self.early_stopping
        return "validation" if self.patience is not None else "none"

    def replace(self, **changes: Any) -> UpdateConfig:
        """A copy with some fields changed (validated again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {field_names()}")
        if changes.get("early_stopping") in ("eb", "none") and "patience" not in changes:
            # Choosing another rule for a later update drops the inherited --patience, which
            # only the validation rule reads (the CLI has no way to unset it).
            changes["patience"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hidden"] = list(self.hidden)
        data["logger"] = list(self.logger)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpdateConfig:
        """Rebuild from ``to_dict`` output: unknown keys fail, missing ones take defaults."""
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; valid options: {field_names()}")
        return cls(**data)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(UpdateConfig)]


def _is_int(value: object) -> bool:
    """A whole number given as an integer (numpy integers too; not a bool or a float)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    """A real, finite number (not a bool, a string or NaN/inf)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} {value!r} is invalid; expected {expected}")
