"""The Updater: load a state, update the model on a new chunk, evaluate, predict, save.

One ``Updater`` is one lineage of model versions. Each ``update`` is a continual-learning step;
``save`` writes a self-contained, checksummed state (see ``ricordo.state``) that ``load`` reads
back in another process and continues from bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor, nn

from ricordo import __version__
from ricordo.config import LINEAGE_FIELDS, UpdateConfig
from ricordo.data.dataset import ArrayDataset
from ricordo.data.lazy import LazyDataset
from ricordo.data.loaders import load_data, load_features
from ricordo.engine.checkpoint import EpochEnd, UpdateCheckpoint, load_checkpoint
from ricordo.engine.evaluate import evaluate_logits, input_dtype
from ricordo.engine.loop import TrainReport, train_update
from ricordo.errors import (
    ConfigError,
    DataError,
    RicordoError,
    StateCorruptError,
    StateError,
    UpdateRejectedError,
)
from ricordo.gate.check import Gate, GateResult, compare_predictions, judge, nothing_to_compare
from ricordo.gate.holdout import HOLDOUT_FILE, HeldOut, split_holdout
from ricordo.memory import TensorMemory
from ricordo.methods import METHODS, Method, UpdateContext, params_to_dict, parse_params
from ricordo.models import (
    ModelCode,
    bind_code,
    build_model,
    grow_output_layer,
    make_spec,
    num_outputs,
    resolve_code,
)
from ricordo.models.backbone import (
    BackboneClassifier,
    bind_backbone,
    is_backbone_spec,
    load_saved_weights,
    saved_weights,
    text_tokenizer,
)
from ricordo.models.code import ModelSource, resolve_model_argument
from ricordo.models.spec import code_reference, recorded_code
from ricordo.state import LoadedState, read_state, resolve_alias, state_changed, write_state
from ricordo.state.fs import same_location

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
METHOD_TENSORS = "method.safetensors"
METHOD_JSON = "method.json"
HISTORY_FILE = "history.json"
# A load whose lazily read memory files change under it (a writer replaced the state) starts over.
LOAD_ATTEMPTS = 5


class Updater:
    """A model plus its CL method and memory, updated chunk by chunk.

    >>> updater = Updater(method="er", memory_size=200, epochs=5)   # doctest: +SKIP
    >>> updater.update(train_chunk); updater.save("state/v0")      # doctest: +SKIP

    ``config`` is an UpdateConfig, or (like the CLI's ``--config``) your model code: a .py file
    defining ``model_fn(**kwargs)`` or ``"module:function"``.

    ``model`` is a built-in model's name (``"mlp"``, ``"cnn"``, ``"resnet18"``) or your own
    model: an ``nn.Module`` (the lineage trains a copy of it; yours is left as passed), a function
    that returns one, ``"module:function"`` or a .py file. The state records a portable reference
    to it (``module:qualname``, sha256 of its source file) and reloads only from the code you
    pass to :meth:`load`.
    """

    def __init__(
        self, config: UpdateConfig | str | os.PathLike[str] | None = None, **options: Any
    ) -> None:
        if isinstance(config, (str, os.PathLike)):  # Updater(config="custom_model.py")
            options = {"config": os.fspath(config), **options}
            config = None
        # Model code passed as model= stays here (a callable or module is not JSON); the config
        # records its portable reference, as for config= (see _take_model_code).
        self._code: ModelCode | None = None
        if "model" in options:
            options = self._take_model_code(options, config)
        base = config or UpdateConfig()
        self.config = base.replace(**options) if options else base
        method_cls = METHODS.get(self.config.method)
        self._method_cls = method_cls
        self.params = parse_params(method_cls, self.config.params)
        method_cls.check_config(self.config)  # e.g. a PEFT method needs --backbone
        # Store typed values ("0.5" from the CLI becomes 0.5) so the state records real numbers.
        self.config = self.config.replace(params=params_to_dict(self.params))
        self.model: nn.Module | None = None
        self.model_spec: dict[str, Any] | None = None
        self.seen_classes: list[int] = []
        self.history: list[dict[str, Any]] = []
        self.source_url: str | None = None
        # Rows of earlier chunks never trained on (config.holdout > 0): what a gate compares on.
        self.holdout = HeldOut.empty()
        memory = self._new_memory()
        self.method: Method = method_cls(self.params, memory)

    # -- construction --------------------------------------------------------------------------
    def _take_model_code(
        self, options: dict[str, Any], config: UpdateConfig | None
    ) -> dict[str, Any]:
        """Options with ``model=<your code>`` moved to ``self._code`` (a built-in name stays)."""
        code = resolve_model_argument(options["model"])
        if code is None:
            return options
        if options.get("config") is not None or (config is not None and config.config):
            raise ConfigError(
                f"model={code.reference!r} and config= both name model code; pass your model "
                "once, as model= (config= is the older spelling of the same)"
            )
        self._code = code
        rest = {k: v for k, v in options.items() if k != "model"}
        return {**rest, "config": code.reference}

    def _new_memory(self) -> TensorMemory | None:
        spec = self._method_cls.memory_spec(self.config)
        if spec is None:
            return None
        capacity, policy = spec
        return TensorMemory(
            capacity,
            policy=policy,
            seed=self.config.seed,
            storage=self.config.memory_storage,
            directory=self.config.memory_dir,
        )

    @property
    def updates(self) -> int:
        """How many updates this lineage has had."""
        return len(self.history)

    @property
    def memory(self) -> TensorMemory | None:
        return self.method.memory

    @property
    def tokenizer(self) -> Callable[[list[str]], Tensor] | None:
        """texts -> token ids (N, max_length) int64 with the backbone's tokenizer (None without
        a backbone): how text chunks become the model's inputs (``load_data(tokenize=...)``)."""
        return text_tokenizer(self.config.backbone, self.config.max_length)

    @property
    def feature_names(self) -> list[str] | None:
        """The feature columns of the table the model was first trained on (None: the data
        had no column names). Later tables are read by these names, in this order."""
        names = (self.model_spec or {}).get("feature_names")
        return None if names is None else [str(n) for n in names]

    def initialize(self, data: Any, y: Any = None) -> nn.Module:
        """Build the model for data shaped like ``data`` without training (also done by update)."""
        chunk = self._load_chunk(data, y)
        if self.model is None:
            self._check_chunk(chunk)
            self._build_first_model(chunk)
        assert self.model is not None
        return self.model

    def _build_first_model(self, chunk: ArrayDataset | LazyDataset) -> None:
        """Build the lineage's model for ``chunk``: ``num_classes`` outputs when it is known,
        else as many as the chunk's largest label needs (the head grows later)."""
        fixed = self.config.num_classes
        num_classes = fixed if fixed is not None else max(chunk.classes()) + 1
        code = self._code
        if code is None and self.config.config is not None:
            code = resolve_code(self.config.config)
        elif code is not None and code.instance is not None:
            # Train a copy: the caller's module stays as passed, and a first update that fails
            # (the Updater is restored to no model) starts again from the same weights.
            code = dataclasses.replace(code, instance=_copy_module(code.instance))
        self.model_spec = make_spec(
            model=self.config.model,
            input_shape=chunk.feature_shape,
            num_classes=num_classes,
            hidden=self.config.hidden,
            config=code,
            options=self.config.model_options,
            backbone=self.config.backbone,
            train_backbone=self.config.train_backbone,
        )
        model = build_model(self.model_spec, generator_seed=self.config.seed, code=code)
        if fixed is not None and num_outputs(model) != fixed:
            # Narrower code models were widened by build_model; a wider one is not N columns.
            raise ConfigError(
                f"the model built by {code.reference if code else self.config.model} has "
                f"{num_outputs(model)} outputs but num_classes={fixed} (CLI: --num-classes); "
                + (
                    f"build the nn.Module with a last nn.Linear of {fixed} outputs"
                    if code is not None and code.instance is not None
                    else "size its output layer with the num_classes argument model_fn receives"
                )
                + ", or leave num_classes unset"
            )
        self.model = model
        self.model_spec["num_classes"] = num_outputs(self.model)
        if code is not None:
            # The state and its history record the portable reference (custom_model.py or
            # pkg.mod:make_model), never where the file is on this machine.
            self.config = self.config.replace(config=code.reference)
        if chunk.feature_names is not None:  # later tables are matched by column name
            self.model_spec["feature_names"] = list(chunk.feature_names)

    # -- the update ----------------------------------------------------------------------------
    def update(
        self,
        data: Any,
        y: Any = None,
        *,
        on_epoch_end: Callable[[EpochEnd], None] | None = None,
        resume_from: str | os.PathLike[str] | None = None,
        gate: Gate | bool | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Train on a new chunk; on any error the Updater is left exactly as before.

        ``gate``: a :class:`ricordo.gate.Gate` (``True``: ``Gate()``, max_regression 0.02)
        compares the current model and the candidate on the held-out rows of earlier updates
        (``holdout`` > 0) or on ``Gate.data``; a drop in accuracy above ``max_regression``
        raises :class:`ricordo.errors.UpdateRejectedError`, whose ``candidate`` is the refused
        Updater (save it aside to inspect it) and ``result`` the verdict; this Updater stays as
        it was. The verdict (with the negative-flip rate) is the record's ``"gate"`` either way.

        ``overrides`` change training options (lr, epochs, ...) from this update on; the fields
        that define the lineage (model, method, memory) cannot change.

        ``on_epoch_end(EpochEnd)`` is called after each epoch; its ``save(folder)`` writes a
        mid-update checkpoint. ``resume_from`` such a folder (same state, chunk and options):
        the update continues after the checkpoint's epoch, bit for bit as if uninterrupted.

        ``data`` larger than memory: a ``LazyDataset``, or a map-style torch ``Dataset`` (not a
        ``TensorDataset``), is read batch by batch through a DataLoader (``data_workers``
        processes) by the methods that support it (``supports_lazy_data``); other methods
        refuse a ``LazyDataset`` and read a plain ``Dataset`` into memory, as before.
        """
        chunk = self._load_chunk(data, y).validate(name="the chunk")
        previous_config, previous_params = self.config, self.params
        if overrides:
            self.config = self._with_overrides(overrides)
        snapshot = self._snapshot()
        try:
            resume = None if resume_from is None else load_checkpoint(resume_from)
            plan = self._gate_plan(gate)  # the current model's predictions, before training
            record = self._update(chunk, on_epoch_end, resume)
            if plan is not None:
                self._apply_gate(plan, record)
            return record
        except BaseException:
            self._restore(snapshot)
            # A refused params override is undone too (the snapshot holds the new params).
            self.config, self.params = previous_config, previous_params
            self.method.params = previous_params
            raise

    def _gate_plan(self, gate: Gate | bool | None) -> _GatePlan | None:
        """What the gate compares on and the current model's predictions there (None: no gate).
        Refuses, before any training, a gate that has nothing to compare on."""
        if gate is None or gate is False:
            return None
        if gate is True:
            gate = Gate()
        if not isinstance(gate, Gate):
            raise ConfigError(
                f"gate={gate!r} is invalid; pass ricordo.gate.Gate(max_regression=...), True "
                "or None"
            )
        if self.model is None:
            why = "nothing (the lineage's first update: no model to regress from)"
            return _GatePlan(gate, None, None, nothing_to_compare(gate.max_regression, why))
        if gate.data is not None:
            rows = load_data(
                gate.data, gate.y, columns=self.feature_names, tokenize=self.tokenizer
            ).validate(name="the gate data")
            where = "the gate data"
        else:
            earlier = self.holdout.before(self.updates)
            if len(earlier) == 0:
                raise ConfigError(
                    "the gate has nothing to compare on: the state holds no held-out rows of "
                    "earlier updates (they were trained with holdout 0); pass labelled gate "
                    "data (CLI: --gate-data FILE; Python: Gate(data=...)) or keep held-out rows "
                    "from now on (--holdout 0.1) and gate the updates after this one"
                )
            rows = ArrayDataset(earlier.x, earlier.y)
            where = "held-out rows of updates " + ",".join(map(str, sorted(earlier.per_update())))
        return _GatePlan(gate, rows, self.predict(rows.x), where)

    def _apply_gate(self, plan: _GatePlan, record: dict[str, Any]) -> None:
        """Judge the candidate (this Updater, just trained); raise UpdateRejectedError with a
        shallow copy of it attached when the gate refuses it (update() then restores self)."""
        if plan.rows is None:
            assert isinstance(plan.where, GateResult)
            result = plan.where
        else:
            assert plan.old is not None and isinstance(plan.where, str)
            flips = compare_predictions(plan.old, self.predict(plan.rows.x), plan.rows.y)
            result = judge(flips, plan.gate.max_regression, plan.where)
        record["gate"] = result.to_dict()  # the record is the history's last entry
        if not result.passed:
            candidate = copy.copy(self)  # holds the trained model; self is restored from here
            raise UpdateRejectedError(
                f"update {record['update']} was refused: {result.summary()}; the Updater is "
                "unchanged, the refused model is this error's candidate (save it aside to "
                "inspect it)",
                result=result,
                candidate=candidate,
            )

    def _with_overrides(self, overrides: dict[str, Any]) -> UpdateConfig:
        fixed = sorted(
            k for k in overrides if k in LINEAGE_FIELDS and overrides[k] != getattr(self.config, k)
        )
        if fixed and self.model is not None:
            raise ConfigError(
                f"option(s) {fixed} are fixed for this lineage (stored in the state); "
                "start a new lineage (a new Updater; CLI: without --state) to change them"
            )
        new = self.config.replace(**overrides)
        if "params" in overrides:
            self.params = parse_params(self._method_cls, {**self.config.params, **new.params})
            self.method.params = self.params
            new = new.replace(params=params_to_dict(self.params))
        return new

    def _load_chunk(self, data: Any, y: Any) -> ArrayDataset | LazyDataset:
        """``data`` as an in-memory chunk, or lazily (see :meth:`update`)."""
        if isinstance(data, LazyDataset):
            if y is not None:
                raise DataError("a LazyDataset carries its own labels; drop the separate y")
            self._check_lazy_support()
            return data
        plain = (
            isinstance(data, torch.utils.data.Dataset)
            and not isinstance(data, torch.utils.data.IterableDataset)
            and not isinstance(getattr(data, "tensors", None), tuple)  # TensorDataset: arrays
        )
        if plain and y is None and self._lazy_supported():
            return LazyDataset(data)
        return load_data(data, y, columns=self.feature_names, tokenize=self.tokenizer)

    def _lazy_supported(self) -> bool:
        memory = self.method.memory
        offline = memory is not None and memory.policy.offline
        return self._method_cls.supports_lazy_data and not offline

    def _check_lazy_support(self) -> None:
        """Refuse a lazy chunk, in one line, for a method that needs it whole in memory."""
        name = self.config.method
        if not self._method_cls.supports_lazy_data:
            able = sorted(n for n in METHODS.names() if METHODS.get(n).supports_lazy_data)
            raise ConfigError(
                f"method {name!r} needs the whole chunk in memory and cannot train on lazy data "
                f"(a LazyDataset, --lazy); methods that can: {', '.join(able)}; or load the "
                "chunk into memory (without --lazy)"
            )
        if not self._lazy_supported():
            raise ConfigError(
                f"memory policy {self.config.memory_policy!r} selects from the whole chunk at "
                "the end of the update and cannot use lazy data (a LazyDataset, --lazy); use "
                "another --memory-policy, or load the chunk into memory (without --lazy)"
            )

    def _check_chunk(self, chunk: ArrayDataset | LazyDataset) -> None:
        x = getattr(chunk, "x", None)
        if self.config.augment is not None and x is not None and not x.is_floating_point():
            raise ConfigError(
                f"--augment {self.config.augment!r} transforms images, but the chunk holds "
                f"{str(x.dtype).removeprefix('torch.')} token ids (text); drop --augment"
            )
        top = max(chunk.classes())
        fixed = self.config.num_classes
        if fixed is not None and top >= fixed:
            raise DataError(
                f"the chunk has label {top} but the model's output layer has num_classes="
                f"{fixed} columns (labels 0..{fixed - 1}), fixed for this lineage; remap the "
                "labels, or start a new lineage with a larger num_classes (CLI: --num-classes)"
            )
        if fixed is None and top >= self.config.max_classes:
            raise DataError(
                f"the chunk has label {top} but the model can grow to at most "
                f"{self.config.max_classes} classes (0..{self.config.max_classes - 1}); "
                "remap the labels or start a lineage with a larger max_classes "
                "(CLI: --max-classes)"
            )
        if self.model_spec is not None:
            expected = tuple(self.model_spec["input_shape"])
            if chunk.feature_shape != expected:
                raise DataError(
                    f"the chunk has feature shape {chunk.feature_shape} but the model expects "
                    f"{expected}; reshape the data to match the first chunk"
                )

    def _update(
        self,
        chunk: ArrayDataset | LazyDataset,
        on_epoch_end: Callable[[EpochEnd], None] | None = None,
        resume: UpdateCheckpoint | None = None,
    ) -> dict[str, Any]:
        self._check_chunk(chunk)
        index = self.updates
        generator = torch.Generator().manual_seed(_derive_seed(self.config.seed, index))
        if self.model is None:
            self._build_first_model(chunk)
        assert self.model is not None and self.model_spec is not None
        full = chunk
        chunk, held = self._split_holdout(full, index)  # held-out rows are never trained on
        seen = sorted(set(self.seen_classes) | set(chunk.classes()))
        if self.config.num_classes is None:  # a known class count fixed the head's width
            grow_output_layer(self.model, max(seen) + 1, generator)
        self.model_spec["num_classes"] = num_outputs(self.model)
        ctx = UpdateContext(
            model=self.model,
            config=self.config,
            update_index=index,
            device=torch.device("cpu"),
            generator=generator,
            seen_classes=seen,
            chunk_classes=chunk.classes(),
        )
        # Dropout and other global-RNG users draw from a seed of this update only, so the same
        # lineage gives the same numbers whether or not it was saved and reloaded in between.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(self.config.seed, index) + 1)
            report: TrainReport = train_update(
                self.model, self.method, chunk, ctx, on_epoch_end=on_epoch_end, resume=resume
            )
        self.model.to("cpu")
        self.seen_classes = seen
        self.holdout = self.holdout.add(held, index)
        record: dict[str, Any] = {
            "update": index,
            "finished": _now(),
            "library_version": __version__,
            "data": {
                "samples": len(chunk),
                "classes": chunk.classes(),
                "fingerprint": fingerprint(full),  # of the chunk as given, held-out rows included
            },
            "config": self.config.to_dict(),
            "train": report.to_dict(),
        }
        if len(held):
            record["data"]["held_out"] = len(held)
        if len(self.holdout):
            # The new model on every held-out row so far: the history's accuracy over time.
            right = self.predict(self.holdout.x) == self.holdout.y
            record["holdout"] = {
                "rows": len(self.holdout),
                "accuracy": float(right.double().mean()),
            }
        self.history.append(record)
        return record

    def _split_holdout(
        self, chunk: ArrayDataset | LazyDataset, index: int
    ) -> tuple[ArrayDataset | LazyDataset, ArrayDataset]:
        """The rows to train on and the rows held out (config.holdout of the chunk, at most
        config.holdout_max), from a seed of this update's own."""
        seed = _derive_seed(self.config.seed, index) + 2  # +1 seeds the global RNG in training
        train, held = split_holdout(chunk.y, self.config.holdout, self.config.holdout_max, seed)
        if len(held) == 0:
            return chunk, ArrayDataset(chunk.y.new_empty(0), chunk.y.new_empty(0))
        rows = chunk.load(held) if isinstance(chunk, LazyDataset) else chunk.subset(held)
        return chunk.subset(train), ArrayDataset(rows.x, rows.y)

    def _snapshot(self) -> tuple[Any, ...]:
        # One memo for the whole copy: a method that refers to the model refers to the copy.
        # A frozen pretrained encoder is shared, not copied (hundreds of MB for a ViT-B): no
        # update changes a tensor that does not require grad under it (see _frozen_tensors).
        memo: dict[int, Any] = {id(t): t for t in _frozen_tensors(self.model)}
        model, spec, method, history = copy.deepcopy(
            (self.model, self.model_spec, self.method, self.history), memo
        )
        # The held-out set is never changed in place (add returns a new one): no copy needed.
        return model, spec, method, list(self.seen_classes), history, self.holdout

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        (
            self.model,
            self.model_spec,
            self.method,
            self.seen_classes,
            self.history,
            self.holdout,
        ) = snapshot

    # -- inference -----------------------------------------------------------------------------
    def _require_model(self) -> nn.Module:
        if self.model is None:
            raise ConfigError("the model has not been trained yet; call update() or load a state")
        return self.model

    def _inference_inputs(self, x: Any) -> Tensor:
        self._require_model()
        assert self.model_spec is not None
        tensor = load_features(
            x, name="inputs", columns=self.feature_names, tokenize=self.tokenizer
        )
        expected = tuple(self.model_spec["input_shape"])
        if tuple(tensor.shape[1:]) != expected:
            raise DataError(
                f"inputs have feature shape {tuple(tensor.shape[1:])} but the model expects "
                f"{expected}; reshape them"
            )
        if not torch.isfinite(tensor).all():
            raise DataError("inputs contain NaN or infinite values; clean them before predicting")
        return tensor

    def predict_logits(self, x: Any, batch_size: int = 1024) -> Tensor:
        """Logits (N, classes) for inputs shaped like the training features."""
        return self.predict_routed(x, batch_size)[0]

    @torch.no_grad()
    def predict_routed(self, x: Any, batch_size: int = 1024) -> tuple[Tensor, Tensor | None]:
        """Logits (N, classes) and, for a method that routes each row to one task's expert
        (s-prompts, s-lora, color), the task id (N,) it chose per row (pool methods l2p, l2l:
        the update whose training used the row's selected entries most); None for other
        methods. Benchmarks compare those ids with the true task to log task-identification
        accuracy."""
        model = self._require_model()
        inputs = self._inference_inputs(x)
        ctx = self._inference_context(model)
        was_training = model.training
        model.eval()
        if inputs.is_floating_point():  # token ids (text backbones) stay integers
            inputs = inputs.to(input_dtype(model))
        outputs, tasks = [], []
        for i in range(0, len(inputs), batch_size):
            logits, routed = self.method.predict_with_tasks(inputs[i : i + batch_size], ctx)
            outputs.append(logits.float())
            if routed is not None:
                tasks.append(routed.to("cpu", torch.long))
        model.train(was_training)
        if not outputs:
            return torch.empty(0, num_outputs(model)), None
        return torch.cat(outputs), torch.cat(tasks) if tasks else None

    def predict(self, x: Any, batch_size: int = 1024) -> Tensor:
        """Predicted class ids (N,)."""
        return self.predict_logits(x, batch_size).argmax(1)

    def predict_proba(self, x: Any, batch_size: int = 1024) -> Tensor:
        """Class probabilities (N, classes)."""
        return self.predict_logits(x, batch_size).softmax(1)

    def evaluate(
        self,
        data: Any,
        y: Any = None,
        batch_size: int = 1024,
        *,
        classes: Sequence[int] | None = None,
        task: int | None = None,
    ) -> dict[str, float]:
        """Accuracy and cross-entropy on labelled data, with the row counts behind them.

        Returns ``accuracy`` over all ``samples`` rows; ``loss``, the mean cross-entropy over
        the ``loss_samples`` rows whose class the model has been trained on; and
        ``unseen_label_rows``, the rows of classes it has never seen: they count as wrong in
        ``accuracy`` and are left out of ``loss`` (``samples = loss_samples + unseen_label_rows``
        without ``classes``). ``classes``: score among these classes only (other logits set to
        -inf; rows of other classes count as wrong and leave the loss), e.g. a chunk's classes
        for task-incremental evaluation where the task id is known. ``task``: the update
        (task) the data comes from; for a method that routes rows to task experts (s-prompts,
        s-lora, color; or to pool entries: l2p, l2l) the result adds ``task_id_accuracy``,
        the share of rows routed to it.
        """
        model = self._require_model()
        if isinstance(data, LazyDataset):  # read in order, untransformed
            chunk: ArrayDataset | LazyDataset = data.validate(name="the evaluation data")
            self._inference_inputs(data.load(torch.tensor([0])).x)
        else:
            chunk = load_data(data, y, columns=self.feature_names, tokenize=self.tokenizer)
            chunk = chunk.validate(name="the evaluation data")
            self._inference_inputs(chunk.x[:1])
        ctx = self._inference_context(model)
        routed: list[Tensor] = []

        def predict(x: Tensor) -> Tensor:
            logits, tasks = self.method.predict_with_tasks(x, ctx)
            if tasks is not None:
                routed.append(tasks.to("cpu", torch.long))
            return logits

        result = evaluate_logits(
            predict,
            chunk,
            batch_size,
            torch.device("cpu"),
            model,
            classes=classes,
            known_classes=self.seen_classes,
            workers=self.config.data_workers,
        )
        report = {
            "accuracy": result["accuracy"],
            "loss": result["loss"],
            "samples": len(chunk),
            "loss_samples": int(result["loss_samples"]),
            "unseen_label_rows": int(result["unseen_label_rows"]),
        }
        if task is not None and routed:
            report["task_id_accuracy"] = float((torch.cat(routed) == int(task)).double().mean())
        return report

    def _inference_context(self, model: nn.Module) -> UpdateContext:
        return UpdateContext(
            model=model,
            config=self.config,
            update_index=self.updates,
            device=torch.device("cpu"),
            generator=torch.Generator().manual_seed(0),
            seen_classes=self.seen_classes,
            chunk_classes=[],
        )

    # -- state ---------------------------------------------------------------------------------
    def save(self, url: str, *, overwrite: bool = False) -> dict[str, Any]:
        """Write the state atomically to ``url`` (path or fsspec URL); returns the manifest.

        ``overwrite=True`` replaces a state at ``url``, but never the state this Updater was
        loaded from: the new state records it as its parent.

        Under ``--strategy ddp`` only rank 0 writes (every rank holds the same model and
        memory); the other ranks write nothing and get an empty dict.
        """
        from ricordo.engine.distributed import is_writer

        if not is_writer():
            return {}
        model = self._require_model()
        if self.source_url is not None and same_location(url, self.source_url):
            raise StateError(
                f"cannot save to {url}: it is the state this Updater was loaded from, the new "
                "state's parent, which must stay intact; save to a new location "
                "(CLI: a --next-state other than --state)"
            )
        files: dict[str, bytes] = {
            # A frozen backbone is not saved: the spec names it and its fingerprint.
            MODEL_FILE: save_tensors(_contiguous(saved_weights(model, model.state_dict()))),
            METHOD_TENSORS: save_tensors(_contiguous(self.method.state_tensors())),
            METHOD_JSON: _json_bytes(self.method.state_json()),
            HISTORY_FILE: _json_bytes(self.history),
        }
        if self.memory is not None:
            files.update(self.memory.to_files())
        if len(self.holdout):
            files[HOLDOUT_FILE] = self.holdout.to_bytes()
        meta: dict[str, Any] = {
            "method": self.config.method,
            "params": params_to_dict(self.params),
            "config": self.config.to_dict(),
            "model_spec": self.model_spec,
            "seen_classes": self.seen_classes,
            "updates": self.updates,
            "memory": None
            if self.memory is None
            else {
                "policy": self.memory.policy_name,
                "capacity": self.memory.capacity,
                "size": len(self.memory),
            },
        }
        if len(self.holdout):
            per_update = {str(u): n for u, n in self.holdout.per_update().items()}
            meta["holdout"] = {"rows": len(self.holdout), "per_update": per_update}
        if self.history and "gate" in self.history[-1]:  # ricordo list marks refused ones
            meta["gate"] = self.history[-1]["gate"]
        # A plugin's method or model is recorded with its package, so that loading the state
        # where it is missing names the package to install (ricordo.plugins).
        from ricordo.plugins import plugin_record

        spec = self.model_spec or {}
        plugins = plugin_record(
            self.config.method, spec.get("name") if spec.get("kind") == "builtin" else None
        )
        if plugins:
            meta["plugins"] = plugins
        try:
            return write_state(url, files, meta, parent=self.source_url, overwrite=overwrite)
        finally:
            if self.memory is not None:
                self.memory.release_exports()

    @classmethod
    def load(
        cls,
        url: str,
        *,
        model: ModelSource | None = None,
        backbone: str | None = None,
        accept_model_change: bool = False,
    ) -> Updater:
        """Read a state written by :meth:`save`, verifying every checksum; ``url`` may be an
        alias (``models/latest``, see ``ricordo.state.alias``), which is followed.

        A state never runs code. If its model was built by your code, pass that code as
        ``model``: a .py file defining ``model_fn``, ``"module:function"``, a callable, or an
        ``nn.Module`` (the state's weights are loaded into it). Its sha256 (of the source file)
        must equal the one the state recorded; ``accept_model_change=True`` takes different code
        anyway (logged), and the next saved state records it.

        A state of a pretrained ``backbone`` re-reads it from the recorded hub name or folder, or
        from ``backbone`` (e.g. where it lies on this machine); its files' sha256 must be the
        recorded one (``accept_model_change=True`` takes another, logged and recorded).
        """
        code = None if model is None else resolve_code(model)
        # An alias (models/latest, ricordo.state.alias) is followed: the Updater records the
        # state it points at as its source, so the next state's parent is a state, not a name.
        url = resolve_alias(url)
        for attempt in range(1, LOAD_ATTEMPTS + 1):
            # The memory's files (local states) are verified in chunks and come back as paths:
            # an mmap memory maps its .npy files instead of reading them whole.
            state = read_state(url, lazy_prefixes=("memory/",))
            try:
                updater = cls._from_state(state, code, accept_model_change, backbone)
            except (StateCorruptError, OSError):
                # The memory's files are read only now: if a writer replaced the state since,
                # they belong to another state; start over rather than report corruption.
                if attempt == LOAD_ATTEMPTS or not state_changed(state):
                    raise
                continue
            updater.source_url = url
            return updater
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _from_state(
        cls,
        state: LoadedState,
        code: ModelCode | None,
        accept_model_change: bool,
        backbone: str | None = None,
    ) -> Updater:
        url, meta = state.url, state.meta
        spec = meta.get("model_spec")
        if not isinstance(spec, dict):
            raise _unreadable(url, "its manifest has no model spec")
        # Before anything is built: the user's code must be the code the state was trained with.
        if is_backbone_spec(spec):
            if code is not None:
                raise ConfigError(
                    f"the state at {url} is the backbone {spec.get('backbone')!r} under a "
                    "linear head and needs no model code; drop model= (CLI: --config)"
                )
            # Loaded from the recorded reference or the one passed; same fingerprint needed.
            spec = bind_backbone(spec, backbone, accept_change=accept_model_change, url=url)
        else:
            if backbone is not None:
                raise ConfigError(
                    f"the state at {url} has no pretrained backbone; drop backbone= "
                    "(CLI: --backbone)"
                )
            spec = bind_code(spec, code, accept_change=accept_model_change, url=url)
        from ricordo.plugins import check_installed

        check_installed(meta.get("plugins"), url)  # a missing plugin: name the package
        try:
            config = UpdateConfig.from_dict(meta["config"])
            recorded = recorded_code(spec)
            # Record the portable reference (older states kept an absolute path here).
            config = config.replace(config=None if recorded is None else code_reference(recorded))
            # Loggers are per job: a state never makes a later job write logs it did not ask for.
            config = config.replace(logger=())
            if is_backbone_spec(spec):  # where the backbone is read from on this machine
                config = config.replace(backbone=spec["backbone"])
            updater = cls(config)
            updater.model_spec = spec
            updater.seen_classes = [int(c) for c in meta["seen_classes"]]
            updater.history = _read_history(state)
            if HOLDOUT_FILE in state.files:  # states written without held-out rows have none
                data = state.files[HOLDOUT_FILE]
                assert isinstance(data, bytes)  # only memory/ files are read lazily
                updater.holdout = HeldOut.from_bytes(data, tuple(spec["input_shape"]))
            model = build_model(spec, generator_seed=config.seed, code=code)
            weights = _read_tensors(state, MODEL_FILE)
            # A model trained at --precision bf16-true / 16-true was saved in that dtype.
            dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
            if len(dtypes) == 1 and torch.float32 not in dtypes:
                model.to(dtypes.pop())
            _load_weights(model, weights, code, url)
            updater.model = model
            updater.method.load_state(
                _read_tensors(state, METHOD_TENSORS), json.loads(state.files[METHOD_JSON])
            )
            updater.method.attach(model)  # e.g. LoRA adapters back into the rebuilt encoder
            if updater.memory is not None:
                updater.method.memory = TensorMemory.from_files(
                    state.files,
                    storage=config.memory_storage,
                    directory=config.memory_dir,
                )
        except (KeyError, TypeError, AttributeError, RuntimeError, ValueError) as error:
            if isinstance(error, RicordoError):
                raise
            raise _unreadable(
                url,
                f"cannot be rebuilt: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}",
            ) from None
        return updater


@dataclasses.dataclass(frozen=True)
class _GatePlan:
    """A gate's rows and the current model's predictions on them, taken before training
    (``rows`` None: nothing to compare, ``where`` is then the verdict)."""

    gate: Gate
    rows: ArrayDataset | None
    old: Tensor | None
    where: str | GateResult


def _frozen_tensors(model: nn.Module | None) -> list[Tensor]:
    """The parameters and buffers of a frozen pretrained encoder in ``model`` that do not
    require grad: its pretrained weights, and adapters of earlier experts, which no update
    changes. Empty for every other model (a method may update a no-grad tensor in place,
    e.g. an EMA copy, so only the encoder's are trusted to stay as they are)."""
    encoder = getattr(model, "encoder", None)
    if not isinstance(model, BackboneClassifier) or getattr(encoder, "trainable", True):
        return []
    assert encoder is not None
    return [t for t in (*encoder.parameters(), *encoder.buffers()) if not t.requires_grad]


def _copy_module(module: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(module)
    except Exception as exc:  # a module holding a lock, a file handle, a generator...
        raise ConfigError(
            f"cannot copy the {type(module).__name__} passed as model= "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass the "
            "function that builds it instead (model=make_model)"
        ) from None


def _unreadable(url: str, what: str) -> StateCorruptError:
    return StateCorruptError(
        f"state at {url} has valid checksums but {what}; was it written by another program? "
        "Restore it from a backup or re-run the update that wrote it"
    )


def _read_history(state: LoadedState) -> list[dict[str, Any]]:
    """The update records of history.json: a JSON list of objects, or StateCorruptError."""
    try:
        history = json.loads(state.files[HISTORY_FILE])
    except (UnicodeDecodeError, ValueError):
        raise _unreadable(state.url, f"{HISTORY_FILE} is not valid JSON") from None
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise _unreadable(
            state.url, f"{HISTORY_FILE} is not a list of update records ({type(history).__name__})"
        )
    return history


def _read_tensors(state: LoadedState, name: str) -> dict[str, Tensor]:
    try:
        return load_tensors(state.files[name])
    except KeyError:
        raise
    except Exception as error:  # SafetensorError, which safetensors does not export everywhere
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise _unreadable(state.url, f"{name} is not a safetensors file ({detail})") from None


def _load_weights(
    model: nn.Module, weights: dict[str, Tensor], code: ModelCode | None, url: str
) -> None:
    try:
        load_saved_weights(model, weights)  # a frozen backbone's weights are not in a state
    except RuntimeError as error:
        if code is None:
            raise
        detail = " ".join(str(error).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise ConfigError(
            f"the model built by {code.reference} does not fit the weights of the state at "
            f"{url} ({detail}); pass the model code the state was trained with"
        ) from None


def fingerprint(data: ArrayDataset | LazyDataset) -> str:
    """sha256 of the chunk's tensors: identifies the data an update saw, without storing it.
    A lazy chunk's is of its name, size and labels (``LazyDataset.fingerprint``)."""
    if isinstance(data, LazyDataset):
        return data.fingerprint()
    digest = hashlib.sha256()
    for tensor in (data.x, data.y):
        buffer = io.BytesIO(tensor.contiguous().numpy().tobytes())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(buffer.getbuffer())
    return digest.hexdigest()


def _derive_seed(seed: int, update_index: int) -> int:
    return (seed * 1_000_003 + update_index * 7_919) % (2**63 - 1)


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
