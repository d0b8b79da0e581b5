"""Models: built-in backbones, user models from config files, output-layer growth."""

from ricordo.models.builtin import MODELS
from ricordo.models.head import (
    features_and_logits,
    grow_output_layer,
    num_outputs,
    output_layer,
    unwrap,
)
from ricordo.models.spec import build_model, make_spec

__all__ = [
    "MODELS",
    "features_and_logits",
    "build_model",
    "grow_output_layer",
    "make_spec",
    "num_outputs",
    "output_layer",
    "unwrap",
]
