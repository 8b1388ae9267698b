"""Name -> builder registries for the plug-in packages.

The core never imports a concrete teacher, student, upsampler, data source or eval
task by module path. Each plug-in module registers its builders by name, and a
registry imports its plug-in package the first time it is asked for a name::

    from radiosharp.registry import TEACHERS

    @TEACHERS.register("dinov2")
    def build_dinov2(size: str = "real", model: str = "...", ...) -> Teacher: ...

    teacher = TEACHERS.build("dinov2", size="tiny")
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, Iterable


class UnknownNameError(ValueError):
    """A name that no registry entry answers to; the message lists the valid names."""


class BadOptionError(ValueError):
    """A keyword a builder does not take; the message lists the keywords it does take."""


def import_submodules(package_name: str) -> None:
    """Import every module of a package, so that their ``register`` calls run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


class Registry:
    """A named collection of builders, filled by the plug-in package ``package``."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = package is None

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries and self._entries[name] is not builder:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = builder
            return builder

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_submodules(self.package)  # type: ignore[arg-type]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str, where: str | None = None) -> Callable[..., Any]:
        self._load()
        if name not in self._entries:
            at = f" at '{where}'" if where else ""
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{at}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments the builder ``name`` accepts."""
        sig = inspect.signature(self.get(name))
        return {
            k: p
            for k, p in sig.parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    def check_options(self, name: str, keys: Iterable[str], where: str = "") -> None:
        """Raise BadOptionError naming the first key the builder does not take."""
        valid = self.options(name)
        for key in keys:
            if key not in valid:
                path = f"{where}.{key}" if where else key
                raise BadOptionError(
                    f"unknown key '{path}' for {self.kind} '{name}'; valid keys: "
                    f"{', '.join(sorted(valid)) or '(none)'}"
                )

    def build(self, name: str, where: str = "", **kwargs: Any) -> Any:
        self.check_options(name, kwargs, where)
        return self.get(name, where)(**kwargs)


TEACHERS = Registry("teacher", "teachers")
UPSAMPLERS = Registry("upsampler", "upsamplers")
STUDENTS = Registry("student", "students")
DATASETS = Registry("data source", "radiosharp.data")
TASKS = Registry("eval task", "radiosharp.eval.tasks")
