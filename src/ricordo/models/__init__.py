"""Models: built-in backbones, user model code (files, module:function), output-layer growth."""

from ricordo.models.builtin import MODELS
from ricordo.models.code import ModelCode, resolve_code
from ricordo.models.head import (
    features_and_logits,
    grow_output_layer,
    num_outputs,
    output_layer,
    unwrap,
)
from ricordo.models.spec import bind_code, build_model, make_spec

__all__ = [
    "MODELS",
    "ModelCode",
    "bind_code",
    "features_and_logits",
    "build_model",
    "grow_output_layer",
    "make_spec",
    "num_outputs",
    "output_layer",
    "resolve_code",
    "unwrap",
]
