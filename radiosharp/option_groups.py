"""Option groups: options that several builders share, declared once as a dataclass.

A builder parameter annotated with a dataclass (an *option group*) stands for that dataclass's
fields: :func:`expand_option_groups` gives the builder a flat signature (the group's fields in
its place, with their defaults and types), so callers, recipes and the registry's option checks
see plain keyword options; a call gathers the group's fields into one instance and passes it
under the parameter's name::

    @dataclass(frozen=True)
    class WeightOptions:
        size: str = "real"
        seed: int = 0

    @expand_option_groups
    def build_sam(weights: WeightOptions, model: str = "facebook/sam-vit-huge") -> Teacher: ...

    build_sam(size="tiny", model="facebook/sam-vit-base")  # weights=WeightOptions("tiny", 0)

The group's defaults, types and checks then live in one place instead of in every builder.
:class:`~radiosharp.registry.Registry` expands every builder it registers.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


def builder_type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of a builder's options: an expanded builder's flat ones (through any
    wrapper that copied them), else a class builder's ``__init__``'s, else the function's own; ``{}``
    when an annotation does not resolve."""
    owner: Any = inspect.unwrap(builder, stop=lambda f: "__signature__" in getattr(f, "__dict__", {}))
    try:
        return typing.get_type_hints(owner.__init__ if isinstance(owner, type) else owner)
    except Exception:  # an annotation that does not resolve: nothing can be read from it
        return {}


def expand_option_groups(builder: Builder) -> Builder:
    """``builder`` with each option-group parameter shown as the group's fields (module docstring).

    A builder without option groups is returned as it is. Two groups (or a group and the
    builder) that declare the same option name are refused when the builder is defined.
    """
    signature = inspect.signature(builder)
    hints = builder_type_hints(builder)
    groups = {
        key: hint for key, hint in hints.items() if key in signature.parameters and dataclasses.is_dataclass(hint)
    }
    if not groups:
        return builder
    params: list[inspect.Parameter] = []
    annotations: dict[str, Any] = {}
    for key, param in signature.parameters.items():
        if key not in groups:
            params.append(param.replace(annotation=hints.get(key, param.annotation)))
            annotations[key] = hints.get(key, param.annotation)
            continue
        group_hints = typing.get_type_hints(groups[key])
        for field in dataclasses.fields(groups[key]):  # type: ignore[arg-type]
            default = field.default if field.default is not dataclasses.MISSING else inspect.Parameter.empty
            kind = (
                param.kind if param.kind is inspect.Parameter.KEYWORD_ONLY else inspect.Parameter.POSITIONAL_OR_KEYWORD
            )
            params.append(inspect.Parameter(field.name, kind, default=default, annotation=group_hints[field.name]))
            annotations[field.name] = group_hints[field.name]
    names = [p.name for p in params]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TypeError(f"{builder.__qualname__}: option groups repeat the option(s) {', '.join(repeated)}")
    flat = signature.replace(parameters=params, return_annotation=hints.get("return", signature.return_annotation))
    fields = {key: [f.name for f in dataclasses.fields(group)] for key, group in groups.items()}  # type: ignore[arg-type]

    @functools.wraps(builder)
    def build(*args: Any, **kwargs: Any) -> Any:
        bound = flat.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        call: dict[str, Any] = {}
        for key, param in signature.parameters.items():
            if key in groups:
                call[key] = groups[key](**{name: values.pop(name) for name in fields[key]})
            elif param.kind is inspect.Parameter.VAR_KEYWORD:
                call.update(values.pop(key, {}))
            else:
                call[key] = values.pop(key)
        return builder(**call)

    build.__signature__ = flat  # type: ignore[attr-defined]
    build.__annotations__ = {**annotations, "return": flat.return_annotation}
    return build  # type: ignore[return-value]
