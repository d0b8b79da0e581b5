"""Plain-dict registries filled by decorators (methods, models, policies, datasets, scenarios).

A registry given an entry-point group (``plugins="ricordo.methods"``) also holds what installed
packages register there; they are loaded on the first lookup or listing (see ``ricordo.plugins``),
never at import, so ``import ricordo`` and ``ricordo --help`` stay fast. Built-ins always win: a
plugin name that is already a built-in is refused with a one-line error and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ricordo.errors import ConfigError

T = TypeVar("T")

log = logging.getLogger("ricordo.plugins")


class Registry(Generic[T]):
    """A named mapping ``name -> object`` with a helpful error for unknown names."""

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugin_group = plugins
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # plugin name -> the distribution that provided it
        self._plugins_loaded = plugins is None
        self._lock = threading.RLock()
        # The distribution whose entry point is being imported: a plugin module that uses the
        # registering decorator itself (``@register``) is recorded as that plugin, not a built-in.
        self.loading: str | None = None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("er")``."""

        def add(obj: T) -> T:
            if self.loading is not None and not _is_builtin(obj):
                self.add_plugin(name, obj, self.loading)
                return obj
            if name in self._origin:
                # A built-in registered after the plugins were loaded still wins.
                log.error(clash_message(self.kind, name, self._origin.pop(name)))
                del self._items[name]
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name")
            self._items[name] = obj
            return obj

        return add

    def add_plugin(self, name: str, obj: T, distribution: str) -> None:
        """Register ``obj`` from plugin package ``distribution``, unless the name is taken: a
        built-in (or an earlier plugin) keeps it and the clash is logged as one line."""
        with self._lock:
            if self._items.get(name) is obj:
                return  # registered by its own decorator, then named again by its entry point
            if name in self._items:
                if name in self._origin:
                    log.error(
                        f"plugin package {distribution!r} registers {self.kind} {name!r}, which "
                        f"plugin package {self._origin[name]!r} already registered: refused, the "
                        f"first is used; uninstall one of them"
                    )
                else:
                    log.error(clash_message(self.kind, name, distribution))
                return
            self._items[name] = obj
            self._origin[name] = distribution

    def origin(self, name: str) -> str | None:
        """The package that provided plugin ``name``; None for a built-in (or unknown) name."""
        self._load_plugins()
        return self._origin.get(name)

    def reset_plugins(self) -> None:
        """Forget the plugins loaded so far: the next lookup reads the entry points again (for
        tests, or after installing a plugin package in a running interpreter)."""
        with self._lock:
            for name in self._origin:
                self._items.pop(name, None)
            self._origin.clear()
            self._plugins_loaded = self.plugin_group is None

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        with self._lock:
            if self._plugins_loaded:
                return
            # Set first: a plugin that looks this registry up while it is imported must not
            # start loading the plugins again.
            self._plugins_loaded = True
            from ricordo.plugins import load_plugins

            load_plugins(self)

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise ConfigError(f"unknown {self.kind} {name!r}; choose one of: {known}") from None

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def clash_message(kind: str, name: str, distribution: str) -> str:
    """The one line logged when a plugin names a built-in."""
    return (
        f"plugin package {distribution!r} registers {kind} {name!r}, a built-in name: refused, "
        f"the built-in {name!r} is used; rename it in the package's entry points"
    )


def _is_builtin(obj: object) -> bool:
    """Whether ``obj`` is defined inside the ``ricordo`` package itself."""
    module = getattr(obj, "__module__", None) or ""
    return module == "ricordo" or module.startswith("ricordo.")
