"""Plugin manager: discovers backends through the ``qdcavity`` entry-point group.

Built-in backends (entry points of the ``qdcavity`` distribution itself) are registered exactly
like third-party ones. A plugin that fails to import, to register or to return valid backends is
recorded in :attr:`Registry.failures` and skipped: it can never take the host down.

Third-party plugins can be limited with an allow-list: the ``QDCAVITY_PLUGINS`` environment
variable (comma-separated entry-point names; empty string = none) or the ``allow`` argument.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points

import pluggy

from . import hookspecs
from .backend import Backend
from .errors import BackendError

ENTRY_POINT_GROUP = "qdcavity"
ALLOW_ENV = "QDCAVITY_PLUGINS"
BUILTIN_DISTRIBUTION = "qdcavity"


# What a plugin may raise while it is imported or registers without taking the host down:
# every Exception, and SystemExit (a plugin calling sys.exit() at import). KeyboardInterrupt
# still interrupts.
_PLUGIN_ERRORS = (Exception, SystemExit)


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    target: str
    reason: str


@dataclass
class Registry:
    """The loaded backends by name, and the plugins that failed or were not allowed."""

    backends: dict[str, Backend] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def get(self, name: str) -> Backend:
        if name not in self.backends:
            known = ", ".join(sorted(self.backends)) or "none"
            broken = [f.plugin for f in self.failures]
            extra = f" (plugins that failed to load: {', '.join(broken)})" if broken else ""
            raise BackendError(f"unknown backend '{name}'; available: {known}{extra}",
                               field="backend")
        return self.backends[name]


def _is_builtin(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name == BUILTIN_DISTRIBUTION


def _allowed_names(allow: Iterable[str] | None) -> set[str] | None:
    if allow is not None:
        return set(allow)
    raw = os.environ.get(ALLOW_ENV)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _collect(pm: pluggy.PluginManager, plugin: str, registry: Registry, target: str) -> None:
    impls = [impl for impl in pm.hook.qdcavity_backends.get_hookimpls()
             if impl.plugin_name == plugin]
    for impl in impls:
        try:
            provided = impl.function()
            for backend in provided:
                if not isinstance(backend, Backend):
                    raise TypeError(f"{backend!r} is not a qdcavity.backend.Backend")
                for attr in ("name", "version", "analyses"):
                    if not getattr(backend, attr, None):
                        raise TypeError(f"backend {backend!r} declares no '{attr}'")
                if backend.name in registry.backends:
                    raise ValueError(
                        f"backend name '{backend.name}' already registered by "
                        f"'{registry.origins[backend.name]}'"
                    )
                registry.backends[backend.name] = backend
                registry.origins[backend.name] = plugin
        except _PLUGIN_ERRORS as exc:  # a broken plugin must not take the host down
            registry.failures.append(PluginFailure(plugin, target, f"{type(exc).__name__}: {exc}"))


def build_registry(allow: Iterable[str] | None = None,
                   extra_plugins: Iterable[tuple[str, object]] = ()) -> Registry:
    """Load every entry point of the ``qdcavity`` group (and ``extra_plugins``)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    allowed = _allowed_names(allow)
    eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (not _is_builtin(e), e.name))
    for ep in eps:
        if not _is_builtin(ep) and allowed is not None and ep.name not in allowed:
            registry.skipped.append(ep.name)
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except _PLUGIN_ERRORS as exc:
            registry.failures.append(PluginFailure(ep.name, ep.value,
                                                   f"{type(exc).__name__}: {exc}"))
            continue
        _collect(pm, ep.name, registry, ep.value)
    for name, plugin in extra_plugins:
        try:
            pm.register(plugin, name=name)
        except _PLUGIN_ERRORS as exc:
            registry.failures.append(PluginFailure(name, repr(plugin), str(exc)))
            continue
        _collect(pm, name, registry, repr(plugin))
    return registry


@cache
def default_registry() -> Registry:
    """The process-wide registry (built once; tests build their own)."""
    return build_registry()


def get_backend(name: str) -> Backend:
    return default_registry().get(name)
