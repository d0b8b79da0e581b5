"""Model specs: the JSON that rebuilds a model (built-in, or from the user's own code) on load.

A built-in model is rebuilt from its name and sizes. A model built by user code is rebuilt only
from code the loader passes (``--config`` / ``Updater.load(url, model=...)``): the spec records a
portable reference to it and its sha256, never a path to import (see ``models.code``).
"""

from __future__ import annotations

import logging
import posixpath
from typing import Any

import torch
from torch import nn

from ricordo.errors import ConfigError, ModelCodeError
from ricordo.models.backbone import backbone_spec, build_backbone_model, is_backbone_spec
from ricordo.models.builtin import MODELS, build_builtin
from ricordo.models.code import MODEL_FN, ModelCode, resolve_code
from ricordo.models.head import grow_output_layer, num_outputs

log = logging.getLogger(__name__)

_CODE_KEYS = ("source", "function", "source_type", "sha256")


def make_spec(
    *,
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...],
    config: str | ModelCode | None,
    options: dict[str, Any],
    backbone: str | None = None,
    train_backbone: bool = False,
) -> dict[str, Any]:
    """Describe a model so that :func:`build_model` can rebuild it in another process.

    ``config`` is the user's model code (a .py file, ``module:function``, or a resolved
    :class:`ModelCode`); None selects the built-in ``model``. ``backbone`` (a pretrained
    encoder's hub name or folder) selects a backbone model instead (``models.backbone``).
    """
    if backbone is not None:
        return backbone_spec(
            backbone,
            input_shape=input_shape,
            num_classes=num_classes,
            train_backbone=train_backbone,
        )
    spec: dict[str, Any] = {
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "options": dict(options),
    }
    if config is not None:
        code = config if isinstance(config, ModelCode) else resolve_code(config)
        spec.update(kind="code", **code.record())
    else:
        MODELS.get(model)  # unknown names fail here, with the list of known ones
        spec.update(kind="builtin", name=model, hidden=list(hidden))
    return spec


def recorded_code(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The user code a spec names (``source``, ``function``, ``source_type``, ``sha256``), or
    None for a built-in model.

    Older states (kind ``"config"``) recorded an absolute ``path``: only its base name is
    used, as a name in messages; it is never imported.
    """
    kind = spec.get("kind")
    if kind == "code":
        return {key: spec.get(key) for key in _CODE_KEYS}
    if kind == "config":
        path = str(spec.get("path") or "model.py").replace("\\", "/")
        return {
            "source": posixpath.basename(path),
            "function": MODEL_FN,
            "source_type": "file",
            "sha256": spec.get("sha256"),
        }
    return None


def code_reference(record: dict[str, Any]) -> str:
    """How the user names recorded code: ``custom_model.py`` or ``pkg.mod:make_model``."""
    if record.get("source_type") == "file":
        return str(record.get("source"))
    return f"{record.get('source')}:{record.get('function')}"


def describe_code(record: dict[str, Any]) -> str:
    """``custom_model.py (sha256 0123456789ab)``: the reference and its hash's first 12 hex."""
    return f"{code_reference(record)} (sha256 {_short(record.get('sha256'))})"


def _short(sha: object) -> str:
    return sha[:12] if isinstance(sha, str) and sha else "unknown"


def bind_code(
    spec: dict[str, Any], code: ModelCode | None, *, accept_change: bool, url: str
) -> dict[str, Any]:
    """Check the model code the user passed against what the state at ``url`` recorded and
    return the spec to build from (and record in the next state).

    A built-in model takes no code. A model built by user code needs it, with the recorded
    sha256, unless ``accept_change``: then the new code's reference and hash are recorded and a
    warning is logged. Nothing is imported here.
    """
    recorded = recorded_code(spec)
    if recorded is None:
        if code is not None:
            raise ConfigError(
                f"the state at {url} uses the built-in model {spec.get('name')!r} and needs no "
                "model code; drop model= (CLI: --config)"
            )
        return spec
    needed = describe_code(recorded)
    if code is None and recorded.get("source_type") == "instance":
        # Trained from an nn.Module passed in Python: no builder was recorded, only its class.
        raise ModelCodeError(
            f"the state at {url} needs its model, an instance of {code_reference(recorded)}, "
            "and a state never runs code: pass the model yourself, built as for training "
            "(the state's weights must fit it): Updater.load(url, model=<a new instance>) "
            "(CLI: --config with a model_fn that builds it, and --accept-model-change)"
        )
    if code is None:
        ref = code_reference(recorded)
        raise ModelCodeError(
            f"the state at {url} needs its model code {needed}, and a state never runs code: "
            f"pass the model definition yourself, e.g. Updater.load(url, model={ref!r}) "
            f"(CLI: --config {ref})"
        )
    bound = {k: v for k, v in spec.items() if k != "path"}
    bound["kind"] = "code"
    if code.instance is not None:
        # An nn.Module built by the caller: nothing is left to run, and its class (often
        # nn.Sequential) names no code of the user's; the state's weights must fit it exactly
        # (names and shapes), which loading them checks. The recorded code stays recorded.
        bound.update(recorded)
        return bound
    same = code.sha256 is not None and code.sha256 == recorded["sha256"]
    if not same and not accept_change:
        instead = (
            "pass a new instance of the model (its weights must fit) or the code it was "
            "trained with"
            if recorded.get("source_type") == "instance"
            else "pass the code it was trained with"
        )
        raise ModelCodeError(
            f"the model code {code.reference} has sha256 {_short(code.sha256)} but the state at "
            f"{url} was trained with {needed}; {instead}, or accept the change with "
            "accept_model_change=True (CLI: --accept-model-change)"
        )
    if same:
        bound.update(recorded)  # keep the recorded name: the content is what must match
    else:
        log.warning(
            "model code %s (sha256 %s) differs from the %s the state at %s was trained with; "
            "using it as accepted: the next state records it",
            code.reference,
            _short(code.sha256),
            needed,
            url,
        )
        bound.update(code.record())
    return bound


def build_model(
    spec: dict[str, Any], generator_seed: int, code: ModelCode | None = None
) -> nn.Module:
    """Instantiate the model a spec describes, with its output layer sized to ``num_classes``.

    A spec of user code needs ``code`` with the recorded sha256 (see :func:`bind_code`).
    Initialisation draws from a private RNG seeded with ``generator_seed`` (the global RNG of the
    caller is left untouched), so the same seed builds the same weights.
    """
    if is_backbone_spec(spec):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator_seed)  # the head's initial weights
            return build_backbone_model(spec)
    recorded = recorded_code(spec)
    if recorded is not None and (
        code is None or (code.instance is None and code.sha256 != recorded["sha256"])
    ):
        raise ModelCodeError(
            f"this model needs its model code {describe_code(recorded)}, which was not passed "
            "or differs; a state never runs code it names"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        if recorded is None or code is None:
            # Options and size are checked before anything is allocated (models.builtin).
            model = build_builtin(
                spec["name"],
                spec["input_shape"],
                spec["num_classes"],
                spec["hidden"],
                spec["options"],
            )
        else:
            model = code.build(spec["options"], tuple(spec["input_shape"]), spec["num_classes"])
            generator = torch.Generator().manual_seed(generator_seed)
            if num_outputs(model) < spec["num_classes"]:
                grow_output_layer(model, spec["num_classes"], generator)
    return model
