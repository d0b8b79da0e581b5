"""CL methods, one file each, found through the ``METHODS`` registry."""

from ricordo.methods import er, finetune, joint  # noqa: F401  (registration side effects)
from ricordo.methods.base import (
    METHODS,
    Batch,
    Method,
    UpdateContext,
    params_to_dict,
    parse_params,
    register,
)

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "UpdateContext",
    "params_to_dict",
    "parse_params",
    "register",
]
