"""A pretrained transformer backbone under a growing linear head (``--backbone NAME_OR_PATH``).

The model is ``BackboneClassifier(encoder, head)``: the frozen encoder's CLS feature feeds the
``nn.Linear`` head that ``models.head`` grows and ``features_and_logits`` reads its input from,
so every method (baselines, iCaRL's class means, feature distillation) works unchanged.

A state never holds the backbone: its spec records the reference as given (hub name or folder)
and the sha256 fingerprint of its files; the saved weights leave out everything under an
encoder (LoRA adapters a PEFT method injected there included; the method saves those itself).
Loading re-reads the backbone from the reference, or from one the caller passes, and refuses a
different fingerprint unless the change is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from ricordo.errors import ConfigError, StateError
from ricordo.models.transformer import (
    TEXT,
    TransformerEncoder,
    backbone_fingerprint,
    load_encoder,
    tokenize,
)

log = logging.getLogger(__name__)

KIND = "backbone"  # the model spec's kind


class BackboneClassifier(nn.Module):
    """A pretrained encoder's CLS feature (N, D) -> a linear head (N, classes)."""

    def __init__(self, encoder: TransformerEncoder, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        # Registered after the encoder: the last nn.Linear, the layer that grows.
        self.head = nn.Linear(encoder.hidden_size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def backbone_spec(
    backbone: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    train_backbone: bool,
) -> dict[str, Any]:
    """The model spec of a backbone model: the reference as given and its fingerprint."""
    return {
        "kind": KIND,
        "backbone": str(backbone),
        "backbone_fingerprint": backbone_fingerprint(backbone),
        "train_backbone": bool(train_backbone),
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "options": {},
    }


def is_backbone_spec(spec: dict[str, Any] | None) -> bool:
    """Whether a model spec describes a backbone model (built by :func:`build_backbone_model`)."""
    return spec is not None and spec.get("kind") == KIND


def build_backbone_model(spec: dict[str, Any]) -> BackboneClassifier:
    """Load the spec's backbone (frozen unless ``train_backbone``) under a new head.

    The head draws its initial weights from the global RNG; ``build_model`` seeds it.
    """
    encoder = load_encoder(spec["backbone"], trainable=bool(spec.get("train_backbone")))
    return BackboneClassifier(encoder, int(spec["num_classes"]))


def bind_backbone(
    spec: dict[str, Any], backbone: str | None, *, accept_change: bool, url: str
) -> dict[str, Any]:
    """The spec to rebuild a state's model from, with the backbone it will be loaded from.

    ``backbone`` (None: the recorded reference) must have the recorded fingerprint, unless
    ``accept_change``: then its fingerprint is recorded and a warning logged.
    """
    recorded = str(spec.get("backbone"))
    expected = spec.get("backbone_fingerprint")
    reference = recorded if backbone is None else str(backbone)
    try:
        found = backbone_fingerprint(reference)
    except ConfigError as error:
        if backbone is not None:
            raise
        raise ConfigError(
            f"the state at {url} needs its backbone {recorded!r} (sha256 {_short(expected)}), "
            f"which cannot be read here ({error}); pass where it is: "
            "Updater.load(url, backbone=PATH) (CLI: --backbone PATH)"
        ) from None
    if found != expected:
        if not accept_change:
            raise StateError(
                f"the backbone {reference!r} has sha256 {_short(found)} but the state at {url} "
                f"was trained on {recorded!r} (sha256 {_short(expected)}); pass that backbone "
                "(backbone=..., CLI: --backbone), or accept the change with "
                "accept_model_change=True (CLI: --accept-model-change)"
            )
        log.warning(
            "backbone %s (sha256 %s) differs from %s (sha256 %s) the state at %s was trained "
            "on; using it as accepted: the next state records it",
            reference,
            _short(found),
            recorded,
            _short(expected),
            url,
        )
    return {**spec, "backbone": reference, "backbone_fingerprint": found}


def _short(sha: object) -> str:
    return sha[:12] if isinstance(sha, str) and sha else "unknown"


def encoder_prefixes(model: nn.Module, *, frozen_only: bool = True) -> list[str]:
    """State-dict prefixes (``"encoder."``) of the transformer encoders inside ``model``."""
    return [
        f"{name}." if name else ""
        for name, module in model.named_modules()
        if isinstance(module, TransformerEncoder) and not (frozen_only and module.trainable)
    ]


def saved_weights(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` (the model's state dict) without anything under a frozen encoder: the
    backbone is re-read from its reference, and adapters injected into it belong to the
    method's state. An unfrozen encoder (``train_backbone``) is trained, so it is kept."""
    prefixes = tuple(encoder_prefixes(model))
    if not prefixes:
        return state
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def load_saved_weights(model: nn.Module, weights: dict[str, Tensor]) -> None:
    """Load weights written by :func:`saved_weights`: every key outside the frozen encoders
    must be present, and no other key."""
    prefixes = tuple(encoder_prefixes(model))
    if not prefixes:
        model.load_state_dict(weights)
        return
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise RuntimeError(
            f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def text_tokenizer(
    backbone: str | None, max_length: int
) -> Callable[[Sequence[str]], Tensor] | None:
    """texts -> token ids (N, max_length) with the backbone's tokenizer; None without one."""
    if backbone is None:
        return None
    return partial(tokenize, name_or_path=backbone, max_length=max_length)


def is_text_model(model: nn.Module | None) -> bool:
    return isinstance(model, BackboneClassifier) and model.encoder.kind == TEXT
