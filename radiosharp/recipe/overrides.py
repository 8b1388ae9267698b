"""``dotted.key=value`` overrides of a recipe dict (values parsed as YAML)."""

from __future__ import annotations

from typing import Any

import yaml

from radiosharp.recipe.files import DuplicateKeyError, safe_load_unique
from radiosharp.recipe.schema import RecipeError, UpsamplerConfig


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise RecipeError(f"override '{override}' must look like dotted.key=value")
    key, raw = override.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise RecipeError(f"override '{override}': empty part in the key '{key}'")
    try:
        value = safe_load_unique(raw) if raw.strip() else None
    except DuplicateKeyError as err:
        raise RecipeError(f"override '{override}': {err}") from None
    except yaml.YAMLError:
        value = raw
    node: Any = data
    for i, part in enumerate(parts):
        where = ".".join(parts[: i + 1])
        last = i == len(parts) - 1
        if isinstance(node, list):  # `distill.partitions.1.size=384`
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override '{override}': '{where}' needs an index below {len(node)}")
            if last:
                if value is None:
                    raise RecipeError(f"override '{override}': cannot remove list item '{where}'")
                node[int(part)] = value
                return
            node = node[int(part)]
            continue
        if last:
            if value is None:
                node.pop(part, None)  # `teachers.sam=null` drops it; a field falls back to its default
            else:
                node[part] = value
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str) and part == "upsampler":
            # `teachers.x.upsampler=featsharp` then `teachers.x.upsampler.factor=3`
            child = node[part] = UpsamplerConfig._from_string(child)
        if not isinstance(child, (dict, list)):
            raise RecipeError(f"override '{override}': '{where}' is a value, not a section")
        node = child
