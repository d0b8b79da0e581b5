"""Third-party methods, models and datasets, registered through package entry points.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."ricordo.methods"]
    plugin-er = "my_package:PluginER"          # a Method subclass, registered under its ``name``
    [project.entry-points."ricordo.models"]
    tiny-mlp = "my_package:tiny_mlp"           # factory(input_shape, num_classes, hidden=..., ...)
    [project.entry-points."ricordo.datasets"]
    blobs = "my_package:load_blobs"            # loader(root, download, **options) -> (train, test)

Each group is read when its registry is first looked up or listed (``Registry._load_plugins``),
so ``import ricordo`` and ``ricordo --help`` import no plugin. A plugin that fails to import or
names the wrong kind of object is skipped with a one-line warning naming its package and the
error; the other plugins still load. A name that is a built-in is refused (built-ins win).

Plugins are code the user installed, run because the user's environment holds them; a state
only names its method and model, and loading it imports nothing it names.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ricordo.registry import Registry

log = logging.getLogger("ricordo.plugins")

GROUPS = ("ricordo.methods", "ricordo.models", "ricordo.datasets")


class PluginError(TypeError):
    """An entry point names an object of the wrong kind (the message says which is needed)."""


def load_plugins(registry: Registry[Any]) -> None:
    """Import every entry point of ``registry.plugin_group`` and register what it names."""
    from importlib.metadata import entry_points

    group = registry.plugin_group
    if group is None:
        return
    for point in entry_points(group=group):
        distribution = point.dist.name if point.dist is not None else point.module
        where = f"{registry.kind} entry point {point.name!r} ({point.value})"
        registry.loading = distribution
        try:
            obj = point.load()
            name = _checked_name(group, point.name, obj)
        except Exception as error:  # a broken plugin must not break Ricordo or the others
            detail = " ".join(f"{type(error).__name__}: {error}".split())
            log.warning(
                f"plugin package {distribution!r} skipped: its {where} failed: {detail}; fix or "
                "uninstall the package"
            )
            continue
        finally:
            registry.loading = None
        registry.add_plugin(name, obj, distribution)


def _checked_name(group: str, entry_name: str, obj: Any) -> str:
    """The name ``obj`` registers under, after checking it is what ``group`` takes."""
    if group == "ricordo.methods":
        from ricordo.methods.base import Method

        if not (inspect.isclass(obj) and issubclass(obj, Method)):
            raise PluginError(f"{obj!r} is not a ricordo.methods.Method subclass")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"method class {obj.__name__} sets no `name`")
        return name
    if not callable(obj):
        kind = "model factory" if group == "ricordo.models" else "dataset loader"
        raise PluginError(f"{obj!r} is not a callable {kind}")
    return entry_name


def plugin_record(method: str, model: str | None) -> dict[str, dict[str, str]]:
    """For a state's manifest: the plugin packages its method and built-in-style model come
    from, e.g. ``{"method": {"name": "plugin-er", "package": "ricordo-plugin-example"}}``
    (empty when both are built-ins), so a machine without them can say what to install."""
    from ricordo.methods.base import METHODS
    from ricordo.models.builtin import MODELS

    record: dict[str, dict[str, str]] = {}
    for kind, registry, name in (("method", METHODS, method), ("model", MODELS, model)):
        package = registry.origin(name) if name else None
        if package:
            record[kind] = {"name": name, "package": package}  # type: ignore[dict-item]
    return record


def check_installed(record: object, url: str) -> None:
    """Refuse, in one line naming the package to install, a state whose plugin method or model
    (as :func:`plugin_record` wrote it) is not registered here."""
    from ricordo.errors import ConfigError
    from ricordo.methods.base import METHODS
    from ricordo.models.builtin import MODELS

    if not isinstance(record, dict):
        return
    for kind, registry in (("method", METHODS), ("model", MODELS)):
        entry = record.get(kind)
        if not isinstance(entry, dict) or entry.get("name") in registry:
            continue
        name, package = entry.get("name"), entry.get("package")
        raise ConfigError(
            f"the state at {url} uses the {kind} {name!r} of the plugin package {package!r}, "
            f"which is not installed here; install it (pip install {package}) to continue it"
        )
