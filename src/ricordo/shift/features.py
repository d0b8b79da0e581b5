"""The features a shift test compares: the current model's penultimate layer, a pretrained
encoder's CLS feature, or the raw inputs flattened.

Raw inputs suit low-dimensional tables; for images and texts, features of a network that
knows the domain make a shift visible that pixels or token ids hide (Rabanser et al. 2019;
Renate's docs recommend a pretrained network's penultimate layer).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ricordo.errors import ConfigError, DataError

if TYPE_CHECKING:
    from ricordo.updater import Updater

FEATURE_SOURCES = ("model", "encoder", "raw")
BATCH_SIZE = 256


def shift_features(
    source: str,
    updater_or_state: Updater | str | os.PathLike[str] | None,
    x: Any,
    *,
    batch_size: int = BATCH_SIZE,
    backbone: str | None = None,
    model: Any = None,
    accept_model_change: bool = False,
) -> Tensor:
    """Features (N, F) float32 of the inputs ``x`` for a shift test.

    ``source``: ``"model"``, the input of the model's output layer (its penultimate features);
    ``"encoder"``, the CLS feature of the state's pretrained ``--backbone`` as published (no
    LoRA adapter active; a backbone trained with the model is read again from its reference);
    ``"raw"``, the inputs flattened (a state is optional then: with one, tables are read by its
    columns). ``updater_or_state``: an Updater, or a state's path/URL loaded with ``backbone``,
    ``model`` and ``accept_model_change`` as :meth:`Updater.load` takes them. ``x``: a tensor
    or anything :func:`ricordo.shift.inputs.read_inputs` reads.
    """
    check_source(source, has_state=updater_or_state is not None)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    updater = load_updater(
        updater_or_state, backbone=backbone, model=model, accept_model_change=accept_model_change
    )
    if not isinstance(x, Tensor):
        from ricordo.shift.inputs import read_inputs

        x = read_inputs(x, updater=updater)[0]
    if x.shape[0] == 0:
        raise DataError("the inputs are empty (0 samples); pass rows to compare")
    if source == "raw":
        return _raw(x, updater)
    assert updater is not None
    _check_shape(x, updater)
    if source == "model":
        return _batched(_penultimate(updater), x, batch_size)
    return _encoder_features(updater, x, batch_size)


def check_source(source: str, *, has_state: bool = True) -> str:
    """``source`` if it names a feature source that can be computed (all but ``"raw"`` need a
    state), else a one-line ConfigError."""
    if source not in FEATURE_SOURCES:
        raise ConfigError(f"features={source!r} is not one of {', '.join(FEATURE_SOURCES)}")
    if not has_state and source != "raw":
        raise ConfigError(
            f"features={source!r} come from a model: pass a state (CLI: --state DIR), or "
            "compare the inputs themselves with features='raw' (CLI: --features raw)"
        )
    return source


def load_updater(
    updater_or_state: Any,
    *,
    backbone: str | None = None,
    model: Any = None,
    accept_model_change: bool = False,
) -> Updater | None:
    """An Updater as given, or loaded from a state's path/URL (None stays None)."""
    from ricordo.updater import Updater

    if updater_or_state is None or isinstance(updater_or_state, Updater):
        return updater_or_state
    if not isinstance(updater_or_state, (str, os.PathLike)):
        raise ConfigError(
            f"state is a {type(updater_or_state).__name__}; pass an Updater or a state's "
            "path or URL"
        )
    return Updater.load(
        os.fspath(updater_or_state),
        model=model,
        backbone=backbone,
        accept_model_change=accept_model_change,
    )


def _raw(x: Tensor, updater: Updater | None) -> Tensor:
    if not x.is_floating_point() or (updater is not None and updater.tokenizer is not None):
        raise ConfigError(
            "features='raw' on texts would compare token ids, whose distances mean nothing; "
            "use features='model' or 'encoder' (CLI: --features model)"
        )
    return x.flatten(1).float()


def _check_shape(x: Tensor, updater: Updater) -> None:
    expected = tuple((updater.model_spec or {}).get("input_shape", ()))
    if tuple(x.shape[1:]) != expected:
        raise DataError(
            f"inputs have feature shape {tuple(x.shape[1:])} but the state's model expects "
            f"{expected}; pass data shaped like its training data"
        )
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError("inputs contain NaN or infinite values; clean them first")


def _penultimate(updater: Updater) -> Any:
    from ricordo.models.head import features_and_logits

    model = _model(updater)
    return model, lambda batch: features_and_logits(model, batch)[0]


def _model(updater: Updater) -> torch.nn.Module:
    if updater.model is None:
        raise ConfigError("the Updater has no model yet; update it once or load a state")
    return updater.model


def _encoder_features(updater: Updater, x: Tensor, batch_size: int) -> Tensor:
    from ricordo.models.backbone import is_backbone_spec
    from ricordo.peft.lora import adapter_names, using_adapter

    spec = updater.model_spec
    if not is_backbone_spec(spec):
        raise ConfigError(
            "features='encoder' reads a pretrained --backbone, but this state's model has "
            "none; use features='model' (its penultimate layer) or 'raw'"
        )
    assert spec is not None
    if spec.get("train_backbone"):  # trained with the model: read the published one again
        from ricordo.models.transformer import load_encoder

        encoder = load_encoder(str(spec["backbone"]))
    else:
        encoder = _model(updater).encoder
    hf_model = encoder.model
    # The published encoder: LoRA adapters a PEFT method injected are switched off meanwhile.
    base = using_adapter(hf_model, None) if adapter_names(hf_model) else contextlib.nullcontext()
    with base:
        return _batched((encoder, encoder), x, batch_size)


def _batched(model_and_fn: tuple[torch.nn.Module, Any], x: Tensor, batch_size: int) -> Tensor:
    """``fn`` over ``x`` in batches, in eval mode and without gradients, as float32."""
    from ricordo.engine.evaluate import input_dtype

    module, fn = model_and_fn
    was_training = module.training
    module.eval()
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                batch = x[start : start + batch_size]
                if batch.is_floating_point():  # token ids stay integers
                    batch = batch.to(input_dtype(module))
                outputs.append(fn(batch).flatten(1).float())
    finally:
        module.train(was_training)
    return torch.cat(outputs)
