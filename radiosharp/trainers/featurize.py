"""``kind: featurize``: run every teacher over the data and write PCA pictures.

Nothing trains. For each image, one PNG shows the image and each teacher's features
(projected on that teacher's PCA basis, fitted over all images) blown up to the
image size; ``features.safetensors`` keeps a few raw maps for inspection.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from radiosharp.builders import build_dataset, build_teacher
from radiosharp.images import resize
from radiosharp.pca import PCABasis, image_to_uint8, save_panels, upscale_nearest
from radiosharp.recipe import Recipe, RecipeError, recipe_to_yaml

log = logging.getLogger(__name__)


def run(recipe: Recipe) -> Path:
    from radiosharp.data.loader import make_loader
    from radiosharp.engine.errors import RunLockedError
    from radiosharp.engine.rundir import prepare_run_dir
    from radiosharp.engine.runlock import RunLock, lock_holder

    holder = lock_holder(recipe.run_dir)
    if holder is not None:
        raise RunLockedError(holder)
    run_dir = prepare_run_dir(recipe)  # never writes over an earlier run
    teachers = {key: build_teacher(cfg, f"teachers.{key}") for key, cfg in recipe.teachers.items()}
    dataset = build_dataset(recipe.data)
    loader = make_loader(dataset, batch_size=recipe.stats.batch_size)
    count = min(len(dataset), recipe.stats.num_images)
    images, maps = [], {key: [] for key in teachers}
    with torch.no_grad():
        for batch in tqdm(loader, desc="featurize", total=-(-count // recipe.stats.batch_size)):
            if batch is None:  # every image of the batch was unreadable (already warned)
                continue
            x = batch["image"][: count - len(images)]
            images.extend(x)
            for key, teacher in teachers.items():
                size = teacher.native_size
                maps[key].append(teacher(resize(x, (size, size))).features)
            if len(images) >= count:
                break
    if not images:
        raise RecipeError(f"data: no readable image in {dict(recipe.data)} (see the warnings above)")
    with RunLock.acquire(run_dir):  # one writer per run folder
        prepare_run_dir(recipe)  # checked again under the lock
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
        feats = {key: torch.cat(m) for key, m in maps.items()}
        bases = {key: PCABasis.fit([f]) for key, f in feats.items()}
        for i, image in enumerate(images):
            pic = image_to_uint8(image)
            panels, titles = [pic], ["image"]
            for key, f in feats.items():
                panels.append(upscale_nearest(bases[key].to_rgb(f[i]), pic.shape[:2]))
                titles.append(f"{key} {f.shape[-2]}x{f.shape[-1]}")
            save_panels(panels, titles, run_dir / "viz" / f"{i:03d}.png")
    log.info("wrote %d PCA pictures to %s", len(images), run_dir / "viz")
    return run_dir
