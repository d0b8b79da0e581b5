"""The training loop of one update: seeded batches, early stopping, a divergence guard."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ricordo.config import UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.data.lazy import EpochOrder, LazyDataset, loaded, training_transform
from ricordo.engine.backend import make_backend, resolve_threads
from ricordo.engine.checkpoint import (
    EarlyStopping,
    EpochEnd,
    UpdateCheckpoint,
    restore_checkpoint,
    write_checkpoint,
)
from ricordo.engine.distributed import average_gradients, mean_across_ranks
from ricordo.engine.evaluate import evaluate_logits
from ricordo.engine.loggers import open_loggers
from ricordo.engine.progress import Progress
from ricordo.engine.selective import SelectiveBackprop
from ricordo.errors import ConfigError, TrainingDivergedError
from ricordo.methods.base import Batch, Method, UpdateContext
from ricordo.optim.cabs import CABSSchedule, gradient_variance_trace
from ricordo.optim.eb import EBStopper, batch_eb
from ricordo.optim.registry import build_optimizer

# The divergence rule of DivergenceGuard (documented in the README, section Errors).
DIVERGED_LOSS_FLOOR = 1e4
DIVERGED_LOSS_FACTOR = 1e3
REFERENCE_STEPS = 10


# A chunk in memory, or one read sample by sample (ricordo.data.lazy).
Chunk = ArrayDataset | LazyDataset


@dataclass
class TrainReport:
    """What one update's training did (recorded in the state's history)."""

    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    final_loss: float = float("nan")
    best_epoch: int | None = None
    val_accuracy: list[float] = field(default_factory=list)
    # --selective-backprop: the strategy and the new rows seen, forwarded for selection only and
    # back-propagated (engine.selective); None without the option.
    selective_backprop: dict[str, object] | None = None
    # --batch-size-schedule cabs: the new rows of each step, in order, and the rule's running
    # averages after the last epoch (ricordo.optim.cabs); empty and None with fixed batches.
    batch_sizes: list[int] = field(default_factory=list)
    batch_schedule: dict[str, float | int] | None = None
    backend: str = ""
    # Parameters the update's optimizer trained (the model's that require grad + the method's).
    trainable_parameters: int = 0
    # Why the update ended before its last epoch ("validation": --patience epochs without a
    # better validation accuracy; "eb": the EB criterion), and after how many steps; None: it
    # ran every epoch.
    stop_reason: str | None = None
    stopped_step: int | None = None
    # --early-stopping eb: the smoothed EB value at the end of each epoch (> 0 means stop).
    eb_values: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 4),
            "final_loss": self.final_loss,
            "best_epoch": self.best_epoch,
            "val_accuracy": self.val_accuracy,
            "selective_backprop": self.selective_backprop,
            "batch_sizes": self.batch_sizes,
            "batch_schedule": self.batch_schedule,
            "backend": self.backend,
            "trainable_parameters": self.trainable_parameters,
            "stop_reason": self.stop_reason,
            "stopped_step": self.stopped_step,
            "eb_values": self.eb_values,
        }


def make_optimizer(
    model: nn.Module, config: UpdateConfig, extra: Sequence[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """The configured optimizer (``--optimizer``, a name of ``ricordo.optim.OPTIMIZERS``) over
    ``model``'s parameters that require grad, plus ``extra`` (parameters a method owns outside
    the model: ``Method.extra_parameters``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    known = {id(p) for p in params}
    params += [p for p in extra if id(p) not in known]
    return build_optimizer(
        config.optimizer,
        params,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


def split_validation(
    data: Chunk, fraction: float, generator: torch.Generator
) -> tuple[Chunk, Chunk | None]:
    """Hold out a seeded random ``fraction`` of the chunk for validation / early stopping."""
    if fraction <= 0 or len(data) < 2:
        return data, None
    order = torch.randperm(len(data), generator=generator)
    n_val = max(1, int(round(fraction * len(data))))
    n_val = min(n_val, len(data) - 1)
    return data.subset(order[n_val:]), data.subset(order[:n_val])


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op CPU threads inside the block (None: leave torch's setting).

    Small models run fastest on one thread; several threads on a busy machine can make them
    10x slower (OpenMP spin-waiting), so this is worth setting for tiny models and in CI.
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_update(
    model: nn.Module,
    method: Method,
    data: Chunk,
    ctx: UpdateContext,
    *,
    on_epoch_end: Callable[[EpochEnd], None] | None = None,
    resume: UpdateCheckpoint | None = None,
) -> TrainReport:
    """Run the configured epochs of one update; the method supplies the loss of each step.

    ``on_epoch_end`` is called after each epoch (after validation) with an :class:`EpochEnd`
    that can score the model and save a checkpoint. ``resume``: a checkpoint of this same update
    (``engine.checkpoint``): training continues after its last epoch, exactly as if it had not
    stopped (tuning trials that a scheduler pauses).
    """
    config = ctx.config
    shape = (len(data), *data.feature_shape)
    threads = resolve_threads(config.threads, model, shape, config.batch_size)
    with cpu_threads(threads):
        return _train_update(model, method, data, ctx, on_epoch_end, resume)


def _train_update(
    model: nn.Module,
    method: Method,
    data: Chunk,
    ctx: UpdateContext,
    on_epoch_end: Callable[[EpochEnd], None] | None = None,
    resume: UpdateCheckpoint | None = None,
) -> TrainReport:
    config = ctx.config
    # torch.optim imports torch._dynamo on the first step (1-3 s once per process); import it
    # before the clock starts so a process's first update is timed like the others.
    import torch._dynamo  # noqa: F401

    started = time.perf_counter()
    backend = make_backend(config)
    model.to(backend.device)
    ctx.device = backend.device
    ctx.rank, ctx.world_size = backend.rank, backend.world_size
    if ctx.world_size > 1:
        _check_data_parallel(method, config)
    # PEFT methods inject this update's adapter and pick the trainable parts before the
    # optimizer sees the parameters; the ones they own outside the model join it.
    method.prepare_model(model, ctx)
    extra = method.extra_parameters(ctx)
    optimizer = make_optimizer(model, config, extra)
    # --strategy ddp: DDP wraps the model, unless the method reaches its trained parameters
    # without the model's forward (PEFT); then the loop averages their gradients itself.
    wrap = ctx.world_size == 1 or type(method).ddp_wraps_model
    wrapped, optimizer = backend.setup(model, optimizer, wrap_model=wrap)
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    ctx.model = wrapped
    report = TrainReport(backend=backend.name)
    selective = (
        None
        if config.selective_backprop is None
        else SelectiveBackprop(config.selective_backprop, config.keep_fraction)
    )
    report.trainable_parameters = sum(p.numel() for p in trained)

    train_data, val_data = split_validation(data, config.val_fraction, ctx.generator)
    method.begin_update(train_data, ctx)
    iterate = method.training_data(train_data, ctx)
    if config.mask_unseen:
        ctx.train_classes = _training_classes(method, iterate)
    schedule = _batch_schedule(config)  # None: --batch-size rows every step
    batches = _batch_source(iterate, ctx, schedule)
    # With CABS the number of steps is not known in advance: at most one per --cabs-min-batch.
    smallest = config.batch_size if schedule is None else schedule.min_batch
    steps_per_epoch = math.ceil(len(iterate) / smallest)
    epochs = method.epochs(iterate, ctx)
    stopping = EarlyStopping()
    if config.stopping_rule == "eb":
        stopping.eb = EBStopper(config.eb_smoothing)

    total = ctx.total_steps = steps_per_epoch * epochs
    guard = DivergenceGuard(ctx.update_index, config.lr)
    start_epoch = 0
    if resume is not None:  # after the set-up above, which drew from the generator as before
        start_epoch = restore_checkpoint(
            resume,
            model=model,
            optimizer=optimizer,
            method=method,
            ctx=ctx,
            report=report,
            guard=guard,
            stopping=stopping,
        )
        if selective is not None and report.selective_backprop is not None:
            selective.restore(report.selective_backprop)

    if schedule is not None and report.batch_schedule is not None:  # resumed: continue it
        schedule.load_state_dict(report.batch_schedule)

    def evaluate(chunk: Chunk) -> dict[str, float]:
        return evaluate_logits(
            lambda x: method.predict(x, ctx),
            chunk,
            config.batch_size * 4,
            backend.device,
            wrapped,
            workers=config.data_workers,
        )

    def save(directory: str | os.PathLike[str]) -> None:
        write_checkpoint(
            directory,
            model=model,
            optimizer=optimizer,
            method=method,
            ctx=ctx,
            report=report,
            guard=guard,
            stopping=stopping,
        )

    description = f"update {ctx.update_index} ({method.name})"
    with (
        Progress(total, description, enabled=config.progress) as progress,
        # One set of log files: rank 0 writes them (every rank logs the same global loss).
        open_loggers(
            config.logger if ctx.rank == 0 else (), ctx.update_index, config.to_dict()
        ) as logs,
    ):
        # What options add to every step is decided here, once: the step loop runs thousands of
        # times and its Python lines are Ricordo's cost over a plain loop (benchmarks/overhead.py).
        show_loss = progress.mode == "bar"  # only a bar shows each step's loss
        log_steps = bool(logs.loggers)
        for epoch in range(start_epoch, epochs):
            epoch_loss, epoch_steps = 0.0, 0  # the epoch's mean loss, for progress and loggers
            for group in optimizer.param_groups:  # the method's schedule (default: --lr)
                group["lr"] = method.learning_rate(epoch, epochs, config.lr)
            wrapped.train()
            after_step = _after_step(method, config, epoch)
            order = torch.randperm(len(iterate), generator=ctx.generator)
            # The new rows are augmented for the loss only; after_step (memories) sees them raw.
            for batch, seen in batches(order):
                if ctx.world_size > 1 and len(batch.y) < ctx.world_size:
                    continue  # a last batch some rank has no row of
                # EB, selective backprop and CABS decide from the global batch: under
                # --strategy ddp every rank takes the same decision from the same rows.
                if stopping.eb is not None and _eb_says_stop(stopping.eb, model, method, seen, ctx):
                    report.stop_reason, report.stopped_step = "eb", report.steps
                    break
                step_rows = batch
                with backend.autocast():
                    if selective is not None:  # the loss sees the kept rows only
                        seen, step_rows = selective.subset(seen, batch, ctx)
                    whole = seen
                    if ctx.world_size > 1:
                        if len(seen.y) < ctx.world_size:  # too few kept rows to share
                            continue
                        seen = _shard_batch(seen, ctx)
                    loss = method.loss(seen, ctx)
                # The global batch's loss (the ranks' mean): every rank judges the same value.
                value = mean_across_ranks(loss, ctx.world_size)
                guard.check(value, epoch, report.steps)
                optimizer.zero_grad(set_to_none=True)
                backend.backward(loss)
                if not wrap:
                    average_gradients(trained, ctx.world_size)
                # before_step: the rows whose gradients are in p.grad; after_step (memories):
                # the whole batch, so a memory samples the stream as without the option.
                method.before_step(step_rows, ctx)
                # CABS: the gradient variance at the weights this step's gradient was taken at.
                variance = (
                    0.0
                    if schedule is None
                    else gradient_variance_trace(
                        model, whole.x, whole.y, allowed_classes=ctx.train_classes
                    )
                )
                optimizer.step()
                if schedule is not None:
                    report.batch_sizes.append(len(batch.y))
                    schedule.observe(variance, value, optimizer.param_groups[0]["lr"])
                after_step(batch, ctx)
                report.steps += 1
                ctx.step = report.steps
                report.final_loss = value
                progress.advance(status=f"loss {value:.4f}" if show_loss else "")
                epoch_loss, epoch_steps = epoch_loss + value, epoch_steps + 1
                if log_steps:
                    lr = optimizer.param_groups[0]["lr"]
                    logs.step(report.steps, epoch, value, lr, time.perf_counter() - started)
            if selective is not None:  # each epoch, so that a checkpoint carries the counts
                report.selective_backprop = selective.to_dict()
            report.epochs = epoch + 1
            if schedule is not None:  # each epoch, so that a checkpoint continues the rule
                report.batch_schedule = schedule.state_dict()
            if stopping.eb is not None and stopping.eb.smoothed is not None:
                report.eb_values.append(stopping.eb.smoothed)
            accuracy: float | None = None
            if val_data is not None:
                accuracy = evaluate(val_data)["accuracy"]
                report.val_accuracy.append(accuracy)
            # Reported before early stopping may end the loop: the last epoch gets its line too.
            mean_loss = epoch_loss / max(epoch_steps, 1)
            rate = progress.epoch_end(epoch, epochs, mean_loss, accuracy)
            logs.epoch(
                epoch,
                {
                    "steps": report.steps,
                    "loss": mean_loss,
                    "steps_per_s": round(rate, 3),
                    "seconds": round(time.perf_counter() - started, 4),
                    "val_accuracy": accuracy,
                },
            )
            stop = False
            if accuracy is not None:
                if accuracy > stopping.best_accuracy:
                    stopping.best_accuracy, stopping.bad_epochs = accuracy, 0
                    report.best_epoch = epoch
                    if config.patience is not None:
                        stopping.best_state = copy.deepcopy(model.state_dict())
                        stopping.best_extra = [p.detach().clone() for p in extra]
                else:
                    stopping.bad_epochs += 1
                    stop = config.patience is not None and stopping.bad_epochs >= config.patience
                    if stop:
                        report.stop_reason, report.stopped_step = "validation", report.steps
            if on_epoch_end is not None:
                on_epoch_end(EpochEnd(epoch + 1, epochs, mean_loss, accuracy, evaluate, save))
            if stop or report.stop_reason == "eb":
                break
    if stopping.best_state is not None:
        # Early stopping restores the weights of the best validation epoch.
        model.load_state_dict(stopping.best_state)
        with torch.no_grad():  # and the method's own trained parameters of that epoch
            for parameter, saved in zip(extra, stopping.best_extra, strict=True):
                parameter.copy_(saved)
    ctx.model = model
    ctx.train_classes = None
    ctx.sample_transform = None
    method.end_update(train_data, ctx)
    _reselect_memory(method, train_data, ctx)
    report.seconds = time.perf_counter() - started
    return report


def _shard_batch(batch: Batch, ctx: UpdateContext) -> Batch:
    """--strategy ddp: this rank's rows of a global batch (the raw batch goes whole to the
    memory, so every rank's memory takes the same rows)."""
    return Batch(
        ctx.shard(batch.x),
        ctx.shard(batch.y),
        None if batch.index is None else ctx.shard(batch.index),
        None if batch.weight is None else ctx.shard(batch.weight),
    )


def _check_data_parallel(method: Method, config: UpdateConfig) -> None:
    """Refuse, in one line, a method --strategy ddp has not been verified with."""
    if not type(method).__dict__.get("supports_ddp", False):
        raise ConfigError(
            f"--strategy {config.strategy}: method {method.name!r} is not verified under "
            "data-parallel training (every built-in method is; a plugin method declares "
            "supports_ddp = True once checked, see docs/scaling.md); drop --strategy"
        )


def _eb_says_stop(
    eb: EBStopper, model: nn.Module, method: Method, batch: Batch, ctx: UpdateContext
) -> bool:
    """--early-stopping eb: measure the criterion on the step's batch (every --eb-every steps),
    at the weights the step would start from; True stops the update before that step.

    With a rehearsal memory the batch is joined by as many memory rows (methods.md 6.2: the
    mixed batch is what the update fits; on the new rows alone, the pull of the replayed classes
    keeps their gradient from ever looking like noise). Those rows are drawn with a generator
    seeded by the update's seed and the step, so the training's own draws are untouched and a
    resumed update draws the same ones.
    """
    config = ctx.config
    if ctx.step % config.eb_every or len(batch.y) < 2:
        return False
    x, y = batch.x, batch.y
    memory = method.memory
    if memory is not None and len(memory) and {"x", memory.label_field} <= set(memory.fields):
        draw = torch.Generator().manual_seed(ctx.generator.initial_seed() + 3 + ctx.step)
        index = torch.randperm(len(memory), generator=draw)[: len(y)]
        rows = memory.get(index)
        labels = rows[memory.label_field]
        if not labels.dtype.is_floating_point and rows["x"].shape[1:] == x.shape[1:]:
            x = torch.cat([x, rows["x"].to(x.device, x.dtype)])
            y = torch.cat([y, labels.to(y.device, y.dtype)])
    value = batch_eb(
        model,
        x,
        y,
        layers=config.eb_layers,
        allowed_classes=ctx.train_classes,
        epsilon=config.eb_epsilon,
    )
    return eb.observe(value, ctx.step)


BatchSource = Callable[[torch.Tensor], Iterator[tuple[Batch, Batch]]]
AfterStep = Callable[[Batch, UpdateContext], None]


def _batch_schedule(config: UpdateConfig) -> CABSSchedule | None:
    """--batch-size-schedule: None for fixed batches, else the CABS rule (first batch: min)."""
    if config.batch_size_schedule == "fixed":
        return None
    return CABSSchedule(
        min_batch=config.cabs_min_batch,
        max_batch=config.cabs_max_batch,
        smoothing=config.cabs_smoothing,
        next_batch=config.cabs_min_batch,
    )


def _batch_source(
    data: Chunk, ctx: UpdateContext, schedule: CABSSchedule | None = None
) -> BatchSource:
    """order -> the epoch's (raw, augmented) batches: what ``method.loss`` sees is augmented,
    what ``after_step`` (memories) sees is raw. ``schedule``: batch sizes chosen step by step."""
    if not isinstance(data, LazyDataset):
        return lambda order: _array_batches(data, order, ctx, schedule)
    if schedule is not None:  # its DataLoader fetches batches ahead of the step that sizes them
        raise ConfigError(
            "--batch-size-schedule cabs needs the chunk in memory; drop --lazy or use fixed batches"
        )
    config = ctx.config
    transform = training_transform(data.transform, config.augment)
    ctx.sample_transform = transform  # replayed rows get the same per-sample transform
    sampler = EpochOrder(len(data), config.batch_size)
    # One DataLoader for the update: its --data-workers processes persist across epochs. Their
    # random numbers come from a seed of the update, not drawn from its generator (that would
    # shift every later draw and break lazy = in-memory without a transform).
    loader = data.loader(
        sampler,
        transform=transform,
        workers=config.data_workers,
        seed=ctx.generator.initial_seed() + 2,
        pin_memory=ctx.device.type == "cuda",
        persistent=True,
    )

    def epoch(order: torch.Tensor) -> Iterator[tuple[Batch, Batch]]:
        sampler.order = order
        for piece in loader:
            rows = loaded(piece, "the chunk")
            y = rows.y.to(ctx.device)
            raw = Batch(rows.raw.to(ctx.device), y, rows.index)
            seen = rows.seen.to(ctx.device) if rows.seen is not rows.raw else raw.x
            yield raw, Batch(seen, y, rows.index) if seen is not raw.x else raw

    return epoch


def _array_batches(
    data: ArrayDataset,
    order: torch.Tensor,
    ctx: UpdateContext,
    schedule: CABSSchedule | None = None,
) -> Iterator[tuple[Batch, Batch]]:
    """An in-memory chunk in ``order``: ``--augment`` runs batched on the device, drawing from
    the update's generator. Lazy chunks: the same order, read by a DataLoader (above), with
    the dataset's transform and ``--augment`` applied per sample in its workers. With a
    ``schedule`` each batch takes the size it chose after the previous step (read when the step
    asks for the batch); the epoch still covers every row once."""
    device = ctx.device
    # Decided once: even a no-op .to() costs a microsecond a step.
    move = data.x.device != device or data.y.device != device
    augment = ctx.config.augment is not None
    start = 0
    while start < len(data):
        size = ctx.config.batch_size if schedule is None else schedule.next_batch
        index = order[start : start + size]
        start += size
        x, y = data.x[index], data.y[index]
        if move:
            x, y = x.to(device), y.to(device)
        batch = Batch(x, y, index)
        yield batch, Batch(ctx.augment(x), y, index) if augment else batch


class DivergenceGuard:
    """Stops an update whose loss is not finite or has diverged, before a state is written.

    Diverged means: above ``DIVERGED_LOSS_FLOOR`` and above ``DIVERGED_LOSS_FACTOR`` times the
    lowest loss of the update's first ``REFERENCE_STEPS`` steps. Both must hold, so an update
    that starts with a small loss (data it already fits) is not stopped by a normal rise, and
    a loss that starts large and falls never is. The lowest, not the mean, so that a loss that
    explodes within those steps does not raise its own bar. A cross-entropy, or the penalties
    of the methods here, stays orders of magnitude below both in normal training; with
    --momentum 5 the loss reached 4.8e34, with --lr 1000 1.5e8 in the third step.
    """

    def __init__(self, update_index: int, lr: float) -> None:
        self.update_index = update_index
        self.lr = lr
        self.first: list[float] = []

    def check(self, loss: float, epoch: int, step: int) -> None:
        if not math.isfinite(loss):
            raise TrainingDivergedError(f"the loss became {loss} {self._where(epoch, step)}")
        if self.first and loss > DIVERGED_LOSS_FLOOR:  # messages only on failure: runs every step
            reference = min(self.first)
            if loss > DIVERGED_LOSS_FACTOR * reference:
                raise TrainingDivergedError(
                    f"the loss diverged to {loss:.3g} {self._where(epoch, step, reference)}"
                )
        if len(self.first) < REFERENCE_STEPS:
            self.first.append(loss)

    def _where(self, epoch: int, step: int, reference: float | None = None) -> str:
        where = f"at update {self.update_index}, epoch {epoch}, step {step}"
        if reference is not None:
            where += (
                f", over {DIVERGED_LOSS_FACTOR:g} times its lowest in the first steps "
                f"({reference:.3g})"
            )
        return f"{where}; lower --lr (now {self.lr}) or check the data; no state was written"


def _after_step(method: Method, config: UpdateConfig, epoch: int) -> AfterStep:
    """The epoch's ``method.after_step``: with --memory-insert once, the memory takes rows in
    the update's first epoch only (later epochs call it with the memory closed)."""
    memory = method.memory
    if memory is None or epoch == 0 or config.memory_insert == "every-epoch":
        return method.after_step

    def closed(batch: Batch, ctx: UpdateContext) -> None:
        with memory.closed():
            method.after_step(batch, ctx)

    return closed


def _training_classes(method: Method, data: ArrayDataset) -> list[int]:
    """--mask-unseen: the classes that may compete while training (the data's and the memory's)."""
    classes = set(data.classes())
    memory = method.memory
    if memory is not None and len(memory) and memory.label_field in memory.fields:
        labels = memory.get()[memory.label_field]
        if not labels.dtype.is_floating_point:
            classes.update(int(c) for c in torch.unique(labels).tolist())
    return sorted(classes)


def _reselect_memory(method: Method, data: ArrayDataset, ctx: UpdateContext) -> None:
    """Offline memory policies select at the end of the update: herding from the features of
    the trained model; gradient-matching from gradients at fresh initialisations of the model's
    architecture (the policy's own embedding, seeded by the lineage's --seed)."""
    memory = method.memory
    if memory is None or not memory.policy.offline:
        return
    from ricordo.models.head import unwrap

    policy = memory.policy
    policy.configure(ctx.config.memory_options)
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        embed = policy.embedding(unwrap(model), seed=ctx.config.seed, device=ctx.device)
        if embed is None:
            embed = lambda x: ctx.features_and_logits(x.to(ctx.device))[0]  # noqa: E731
        with torch.no_grad():
            memory.reselect(
                embed,
                method.memory_candidates(data, ctx),
                batch_size=4 * ctx.config.batch_size,
            )
    finally:
        model.train(was_training)
