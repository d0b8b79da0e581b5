"""User model code: a Python file, an importable ``module:function``, or (in Python) a callable or
an ``nn.Module``, that builds the model of a lineage.

A state records which code built its model as a portable reference (the file's base name, or
``module:function``) plus the sha256 of the source file that defines it, never where the code
lives on this machine; and Ricordo never imports code a state names. Whoever loads such a state
passes the model definition themselves and its sha256 must match (see ``models.spec.bind_code``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from torch import nn

from ricordo.errors import ConfigError
from ricordo.models.builtin import MODELS

#: The function a model file must define.
MODEL_FN = "model_fn"

_MODULE_REF = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

#: What may be passed as model code: a file path, "module:function", a callable or a module.
ModelSource = Union[str, "os.PathLike[str]", Callable[..., nn.Module], nn.Module]


def is_module_reference(text: str) -> bool:
    """True for ``pkg.module:function`` (an importable builder) rather than a file path."""
    return bool(_MODULE_REF.match(text)) and not os.path.exists(text)


@dataclass
class ModelCode:
    """Model code the user supplied: what a state records about it, and how to build with it."""

    source: str  # the file's base name, the module's dotted name, or a callable's module
    function: str  # the builder's name (``model_fn`` for files)
    source_type: str  # "file", "module", "python" (a callable) or "instance" (an nn.Module)
    sha256: str | None  # of the source file defining it; None when there is no such file
    where: str  # where it is on this machine: for messages only, never recorded
    _source_bytes: bytes | None = field(default=None, repr=False)
    _builder: Callable[..., Any] | None = field(default=None, repr=False)
    instance: nn.Module | None = field(default=None, repr=False)

    @property
    def reference(self) -> str:
        """How to name it again: ``custom_model.py`` or ``pkg.mod:make_model``."""
        return self.source if self.source_type == "file" else f"{self.source}:{self.function}"

    def record(self) -> dict[str, Any]:
        """The fields a model spec stores: portable, no path of this machine."""
        return {
            "source": self.source,
            "function": self.function,
            "source_type": self.source_type,
            "sha256": self.sha256,
        }

    def builder(self) -> Callable[..., Any]:
        """The function that builds the model, importing the user's code on first use."""
        if self._builder is None:
            if self.source_type == "file":
                assert self._source_bytes is not None
                module = _exec_file(Path(self.where), self._source_bytes, self.sha256 or "")
                label = f"model file {self.where}"
            else:
                module = _import_module(self.source)
                label = f"module {self.source}"
            builder = getattr(module, self.function, None)
            if not callable(builder):
                raise ConfigError(
                    f"{label} has no function {self.function}(**kwargs); add one that returns "
                    "the nn.Module"
                )
            self._builder = builder
        return self._builder

    def build(
        self, options: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
    ) -> nn.Module:
        """A new model from the user's builder (or the module instance passed in Python).

        ``input_shape`` and ``num_classes`` are passed when the builder accepts them.
        """
        if self.instance is not None:
            return self.instance
        builder = self.builder()
        options = dict(options)
        try:
            accepted = dict(inspect.signature(builder).parameters)
            takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        except (TypeError, ValueError):  # no signature to read: assume it takes **kwargs
            accepted, takes_kwargs = {}, True
        injected = {"input_shape": tuple(input_shape), "num_classes": num_classes}
        for key, value in injected.items():
            if key in accepted or takes_kwargs:
                options.setdefault(key, value)
        unknown = [k for k in options if k not in accepted and not takes_kwargs]
        if unknown:
            raise ConfigError(
                f"{self.function} in {self.reference} does not accept option(s) {unknown}; "
                f"it takes: {list(accepted)}"
            )
        try:
            model = builder(**options)
        except Exception as exc:  # the user's code: one line naming where it failed
            raise code_error(f"{self.function} in {self.reference}", exc, self.where) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(
                f"{self.function} in {self.reference} returned {type(model).__name__}, "
                "not an nn.Module"
            )
        return model


def resolve_code(value: ModelSource) -> ModelCode:
    """Describe the model code the user passed (hashing it; a file is not imported yet)."""
    if isinstance(value, nn.Module):
        # Built by the caller: its code has run already. The state records its class
        # (module:qualname) and the sha256 of the class's source file, so the class itself
        # (``model=MyNet``) reloads it; an instance passed on load is bound by its weights,
        # which must fit it exactly (its class is often a plain nn.Sequential).
        cls = type(value)
        return ModelCode(
            source=cls.__module__,
            function=cls.__qualname__,
            source_type="instance",
            sha256=_file_sha256(_source_file(cls)),
            where=cls.__module__,
            instance=value,
        )
    if callable(value) and not isinstance(value, (str, os.PathLike)):
        where = _source_file(value)
        return ModelCode(
            source=getattr(value, "__module__", None) or "__main__",
            function=getattr(value, "__qualname__", None) or type(value).__name__,
            source_type="python",
            sha256=_file_sha256(where),
            where=where or "<no source file>",
            _builder=value,
        )
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(
            f"model code must be a .py file, 'module:function', a callable or an nn.Module, "
            f"got {type(value).__name__}"
        )
    text = os.fspath(value)
    if is_module_reference(text):
        module, function = text.split(":")
        where = _module_file(module)
        return ModelCode(
            source=module,
            function=function,
            source_type="module",
            sha256=_file_sha256(where),
            where=where or module,
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model config file {text!r} not found; pass an existing .py file defining "
            f"{MODEL_FN}(**kwargs), or an importable module:function"
        )
    source = path.read_bytes()  # hashed, and later executed, from these very bytes
    return ModelCode(
        source=path.name,
        function=MODEL_FN,
        source_type="file",
        sha256=hashlib.sha256(source).hexdigest(),
        where=str(path.resolve()),
        _source_bytes=source,
    )


def resolve_model_argument(value: object) -> ModelCode | None:
    """``Updater(model=...)``: None for a built-in model's name (it stays in
    ``UpdateConfig.model``; an unknown name fails later with the list of known ones), else the
    user's model code: an nn.Module, a callable that returns one, ``"module:function"`` or a
    .py file defining ``model_fn``."""
    if isinstance(value, str) and (value in MODELS or not _names_code(value)):
        return None
    if isinstance(value, (str, os.PathLike, nn.Module)) or callable(value):
        return resolve_code(value)
    raise ConfigError(
        f"model= got a {type(value).__name__} ({_short_repr(value)}); pass a built-in model "
        f"name ({', '.join(MODELS.names())}), an nn.Module, a function that returns one, "
        f"'module:function', or a .py file defining {MODEL_FN}(**kwargs)"
    )


def _names_code(text: str) -> bool:
    """A string that names code (a module reference or a file), not a model name."""
    return (
        is_module_reference(text)
        or text.endswith(".py")
        or "/" in text
        or os.sep in text
        or os.path.isfile(text)
    )


def _short_repr(value: object) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _source_file(obj: Any) -> str | None:
    try:
        path = inspect.getsourcefile(inspect.unwrap(obj))
    except (TypeError, OSError):
        return None
    return path if path and os.path.isfile(path) else None


def _file_sha256(path: str | None) -> str | None:
    if path is None:
        return None
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _module_file(module: str) -> str | None:
    """The source file of an importable module, found without running the module itself
    (its parent packages are imported, as any import would)."""
    try:
        spec = importlib.util.find_spec(module)
    except Exception as exc:  # a parent package that fails to import, or is missing
        raise code_error(f"module {module}", exc, None) from None
    if spec is None:
        raise ConfigError(
            f"cannot find module {module!r}; install it or add its folder to PYTHONPATH"
        )
    origin = spec.origin
    return origin if origin and os.path.isfile(origin) else None


def _exec_file(path: Path, source: bytes, sha256: str) -> types.ModuleType:
    """Run a model file from the bytes that were hashed, as a module of its own."""
    try:
        compiled = compile(source, str(path), "exec")
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes in the source
        raise code_error(f"model file {path}", exc, str(path)) from None
    name = f"ricordo_user_model_{sha256[:16]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling inside the file look themselves up
    try:
        exec(compiled, module.__dict__)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise code_error(f"model file {path}", exc, str(path)) from None
    return module


def _import_module(module: str) -> types.ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise code_error(f"module {module}", exc, _module_file_quietly(module)) from None


def _module_file_quietly(module: str) -> str | None:
    try:
        return _module_file(module)
    except ConfigError:
        return None


def code_error(what: str, exc: BaseException, source_file: str | None) -> ConfigError:
    """One line for an exception raised by (or while compiling) the user's model code, naming
    the file and line where it happened instead of showing a traceback."""
    if isinstance(exc, SyntaxError):
        where = f"{exc.filename or source_file}, line {exc.lineno}"
        return ConfigError(
            f"{what} does not compile: syntax error at {where}: {exc.msg}; fix the model code"
        )
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if source_file and f.filename == source_file]
    frame = (mine or frames or [None])[-1]
    where = f" at {frame.filename}, line {frame.lineno}" if frame is not None else ""
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return ConfigError(f"{what} raised {type(exc).__name__}: {detail}{where}; fix the model code")
