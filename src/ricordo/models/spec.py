"""Model specs: the JSON that rebuilds a model (built-in or from a user's config file) on load."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ricordo.errors import ConfigError
from ricordo.models.builtin import MODELS, build_builtin
from ricordo.models.head import grow_output_layer, num_outputs

log = logging.getLogger(__name__)


def make_spec(
    *,
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...],
    config: str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Describe a model so that :func:`build_model` can rebuild it in another process."""
    spec: dict[str, Any] = {
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "options": dict(options),
    }
    if config is not None:
        path = Path(config).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model config file {config!r} not found; pass an existing .py file")
        spec.update(kind="config", path=str(path), sha256=_sha256(path))
    else:
        MODELS.get(model)  # unknown names fail here, with the list of known ones
        spec.update(kind="builtin", name=model, hidden=list(hidden))
    return spec


def build_model(spec: dict[str, Any], generator_seed: int) -> nn.Module:
    """Instantiate the model a spec describes, with its output layer sized to ``num_classes``.

    Initialisation draws from a private RNG seeded with ``generator_seed`` (the global RNG of the
    caller is left untouched), so the same seed builds the same weights.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if spec["kind"] == "builtin":
            # Options and size are checked before anything is allocated (models.builtin).
            model = build_builtin(
                spec["name"],
                spec["input_shape"],
                spec["num_classes"],
                spec["hidden"],
                spec["options"],
            )
        else:
            model = _model_from_config(spec)
            generator = torch.Generator().manual_seed(generator_seed)
            if num_outputs(model) < spec["num_classes"]:
                grow_output_layer(model, spec["num_classes"], generator)
    return model


def _model_from_config(spec: dict[str, Any]) -> nn.Module:
    path = Path(spec["path"])
    if not path.is_file():
        raise ConfigError(
            f"model config file {str(path)!r} recorded in the state no longer exists; "
            "restore it at that path"
        )
    if spec.get("sha256") and _sha256(path) != spec["sha256"]:
        log.warning("model config %s changed since the state was written; rebuilding anyway", path)
    module_spec = importlib.util.spec_from_file_location(f"ricordo_user_config_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import model config {str(path)!r}; is it a Python file?")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    model_fn = getattr(module, "model_fn", None)
    if not callable(model_fn):
        raise ConfigError(f"model config {str(path)!r} has no function model_fn(**kwargs); add one")
    options = dict(spec["options"])
    accepted = inspect.signature(model_fn).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    for injected in ("input_shape", "num_classes"):
        if injected in accepted or takes_kwargs:
            options.setdefault(
                injected, spec[injected] if injected != "input_shape" else tuple(spec[injected])
            )
    unknown = [k for k in options if k not in accepted and not takes_kwargs]
    if unknown:
        raise ConfigError(
            f"model_fn in {str(path)!r} does not accept option(s) {unknown}; "
            f"it takes: {list(accepted)}"
        )
    model = model_fn(**options)
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model_fn in {str(path)!r} returned {type(model).__name__}, not nn.Module"
        )
    return model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
