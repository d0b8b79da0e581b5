"""CL methods, one file each, found through the ``METHODS`` registry."""

from ricordo.methods import (  # noqa: F401  (registration side effects)
    agem,
    bic,
    cls_er,
    color,
    der,
    er,
    er_ace,
    ewc,
    finetune,
    gdumb,
    icarl,
    joint,
    l2l,
    l2p,
    lwf,
    offline_er,
    pod_er,
    rd,
    s_lora,
    s_prompts,
    si,
    super_er,
)
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
