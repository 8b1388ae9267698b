"""Name -> builder registries for the plug-in packages.

The core never imports a concrete teacher, student, upsampler, data source or eval
task by module path. Each plug-in module registers its builders by name, and a
registry imports its plug-in package the first time it is asked for a name::

    from radiosharp.registry import TEACHERS

    @TEACHERS.register("dinov2")
    def build_dinov2(size: str = "real", model: str = "...", ...) -> Teacher: ...

    teacher = TEACHERS.build("dinov2", size="tiny")

A registry made with ``records=True`` (upsamplers, students) wraps each builder so
that what it returns carries ``build_config``: the registry name and every option the
builder was called with, defaults filled in (its bound signature), minus the
``structural`` arguments the system passes itself (an upsampler's ``factor``, ``dim``
and ``patch_size``). An export stores that config to rebuild the module; the builder
itself never hand-keeps the list.

A builder parameter annotated with an option-group dataclass (:mod:`radiosharp.option_groups`)
is registered as that group's fields: options several builders share are declared once.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from radiosharp.option_groups import builder_type_hints, expand_option_groups

Builder = TypeVar("Builder", bound=Callable[..., Any])


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

    def __init__(
        self, kind: str, package: str | None = None, records: bool = False, structural: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.package = package
        self.records = records
        self.structural = structural
        self._entries: dict[str, Callable[..., Any]] = {}
        self._loaded = package is None

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def decorator(builder: Builder) -> Builder:
            expanded: Callable[..., Any] = expand_option_groups(builder)
            entry = self._recording(name, expanded) if self.records else expanded
            known = self._entries.get(name)
            if known is not None and inspect.unwrap(known) is not inspect.unwrap(builder):
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = entry
            return entry  # type: ignore[return-value]

        return decorator

    def _recording(self, name: str, builder: Callable[..., Any]) -> Callable[..., Any]:
        """``builder`` that also sets ``build_config`` on what it returns (see the module docstring)."""
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build_and_record(*args: Any, **kwargs: Any) -> Any:
            module = builder(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            config: dict[str, Any] = {"name": name}
            for key, value in bound.arguments.items():
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    config.update(value)
                elif key not in self.structural:
                    config[key] = value
            module.build_config = config
            return module

        return build_and_record

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
            raise UnknownNameError(f"unknown {self.kind} '{name}'{at}; valid {self.kind}s: {', '.join(self.names())}")
        return self._entries[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword arguments the builder ``name`` accepts."""
        sig = inspect.signature(self.get(name))
        return {k: p for k, p in sig.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def check_options(self, name: str, keys: Iterable[str], where: str = "") -> None:
        """Raise BadOptionError naming the first key the builder does not take.

        Given a mapping of options, a value that is not a number for an option the
        builder types as ``int`` / ``float`` (by its annotation, else its default) is
        refused too, naming the key and the value (``data.num_images=abc``).
        """
        valid = self.options(name)
        signature = inspect.signature(self.get(name))
        if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return  # the builder takes any keyword and checks its own
        for key in keys:
            if key not in valid:
                path = f"{where}.{key}" if where else key
                raise BadOptionError(
                    f"unknown key '{path}' for {self.kind} '{name}'; valid keys: {', '.join(sorted(valid)) or '(none)'}"
                )
        if isinstance(keys, Mapping):
            numeric = _numeric_options(self.get(name), valid)
            for key, value in keys.items():
                wanted = numeric.get(key)
                if wanted is None or value is None or _is_number(value, integer=wanted == "an integer"):
                    continue
                path = f"{where}.{key}" if where else key
                raise BadOptionError(f"bad value at '{path}': {self.kind} '{name}' takes {wanted} there, got {value!r}")

    def build(self, name: str, where: str = "", **kwargs: Any) -> Any:
        self.check_options(name, kwargs, where)
        return self.get(name, where)(**kwargs)


def _is_number(value: Any, integer: bool = False) -> bool:
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _numeric_options(builder: Callable[..., Any], params: dict[str, inspect.Parameter]) -> dict[str, str]:
    """``{option: "an integer" | "a number"}`` for the builder's options typed int or float.

    The type is the annotation when it is ``int`` / ``float`` (or either or None), else
    the type of a numeric default (the annotations: :func:`~radiosharp.option_groups.builder_type_hints`);
    options typed otherwise are not checked here. An integer option takes only an integer (``3.5`` is
    refused), a number option either.
    """
    import types
    import typing

    hints = builder_type_hints(builder)  # {} when they do not resolve: the defaults decide
    out: dict[str, str] = {}
    for key, param in params.items():
        hint = hints.get(key)
        if hint is not None:
            args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            kinds = [a for a in args if a is not type(None)]
            if kinds and all(a in (int, float) for a in kinds):
                out[key] = "an integer" if kinds == [int] else "a number"
            continue
        if _is_number(param.default):
            out[key] = "an integer" if isinstance(param.default, int) else "a number"
    return out


TEACHERS = Registry("teacher", "teachers")
UPSAMPLERS = Registry("upsampler", "upsamplers", records=True, structural=("factor", "dim", "patch_size"))
STUDENTS = Registry("student", "students", records=True)
DATASETS = Registry("data source", "radiosharp.data")
TASKS = Registry("eval task", "radiosharp.eval.tasks")
