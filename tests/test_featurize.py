"""kind: featurize writes one PCA picture per image; the PCA basis is shared and stable."""

from __future__ import annotations

import numpy as np
import torch
import yaml
from PIL import Image

from radiosharp.pca import PCABasis
from radiosharp.train import main as train_main


def test_featurize_writes_pictures_for_each_teacher(tmp_path):
    recipe = {
        "kind": "featurize",
        "output_dir": str(tmp_path / "run"),
        "teachers": {"dinov2": {"size": "tiny"}, "sam": {"size": "tiny"}},
        "data": {"source": "samples", "size": 96, "names": ["astronaut", "coffee", "chelsea"]},
        "stats": {"num_images": 3, "batch_size": 2},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert train_main([str(path)]) == 0
    pictures = sorted((tmp_path / "run" / "viz").glob("*.png"))
    assert [p.name for p in pictures] == ["000.png", "001.png", "002.png"]
    with Image.open(pictures[0]) as im:
        assert im.width > 2.5 * im.height  # image + two teacher panels side by side
    assert (tmp_path / "run" / "recipe.yaml").is_file()


def test_pca_basis_shared_colours_and_top_component():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    direction /= direction.norm()
    coeff = torch.randn(1, 1, 8, 8, generator=g) * 5
    maps = coeff * direction.view(1, 16, 1, 1) + 0.01 * torch.randn(1, 16, 8, 8, generator=g)
    basis = PCABasis.fit([maps, maps.clone()])
    # the first component is the dominant direction (up to sign)
    assert abs(float(basis.components[0] @ direction)) > 0.99
    # equal maps get identical colours under the shared basis; a different map does not
    a, b = basis.to_rgb(maps[0]), basis.to_rgb(maps[0].clone())
    assert a.dtype == np.uint8 and a.shape == (8, 8, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, basis.to_rgb(-maps[0]))
