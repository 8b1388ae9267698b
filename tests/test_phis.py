"""PHI-S: Hadamard matrices, streaming moments, the transform, and the stats CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from radiosharp.hadamard import hadamard, is_hadamard_order
from radiosharp.phis import FeatureMoments, PhiS

TINY_TEACHERS = ("dinov2", "dfn_clip")

# --------------------------------------------------------------------------- Hadamard


@pytest.mark.parametrize("n", [1, 2, 12, 20, 28, 32, 36, 40, 48, 64, 80, 96, 768, 1024, 1152, 1280, 1536])
def test_hadamard_is_orthogonal_and_pm1(n: int) -> None:
    h = hadamard(n, dtype=torch.float32)  # integer sums up to 1536 are exact in float32
    assert h.shape == (n, n)
    assert torch.equal(h.abs(), torch.ones(n, n))
    assert torch.equal(h @ h.T, n * torch.eye(n))


def test_hadamard_returns_fresh_tensor_and_dtype() -> None:
    h = hadamard(40)
    assert h.dtype == torch.float64
    h.zero_()
    assert hadamard(40).abs().min() == 1  # the cached matrix was not touched


@pytest.mark.parametrize("n", [6, 92, 3])
def test_hadamard_unsupported_order_names_n_and_neighbours(n: int) -> None:
    assert not is_hadamard_order(n)
    with pytest.raises(ValueError, match=rf"order {n} .*nearest supported orders: \d+"):
        hadamard(n)


def test_hadamard_error_lists_supported_neighbours() -> None:
    with pytest.raises(ValueError) as err:
        hadamard(92)
    near = [int(x) for x in str(err.value).split("nearest supported orders: ")[1].split(", ")]
    assert near == [84, 88, 96, 104] and all(is_hadamard_order(m) for m in near)


# --------------------------------------------------------------------------- feature samples


def _tiny_teacher(name: str):
    import radiosharp

    return radiosharp.build_teacher({"family": name, "size": "tiny"})


def _sample_photos(n: int, size: int) -> torch.Tensor:
    """The first ``n`` scikit-image sample photographs, [n,3,size,size] in [0,1]."""
    import radiosharp

    data = radiosharp.build_dataset({"source": "samples", "size": size})
    return torch.stack([data[i]["image"] for i in range(n)])


@pytest.fixture(scope="module")
def teacher_features() -> torch.Tensor:
    """Features [B,C,h,w] of a tiny random-init DINOv2 on real photographs (real correlations)."""
    torch.manual_seed(0)
    teacher = _tiny_teacher("dinov2")
    images = _sample_photos(12, teacher.native_size)
    with torch.no_grad():
        feats = teacher(images).features
    assert feats.shape[0] == 12 and feats.shape[1] == teacher.embed_dim
    return feats.double()


def _rows(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 2, 3, 1).reshape(-1, maps.shape[1])


# --------------------------------------------------------------------------- moments


def test_streaming_moments_equal_one_shot_float64(teacher_features: torch.Tensor) -> None:
    moments = FeatureMoments(teacher_features.shape[1])
    for chunk in teacher_features.split(5):  # uneven batches of NCHW maps
        moments.update(chunk.float())
    rows = _rows(teacher_features.float()).double()
    assert moments.num_vectors == rows.shape[0]
    torch.testing.assert_close(moments.mean, rows.mean(0), rtol=1e-10, atol=1e-10)
    # unbiased (N - 1), the same convention as torch.cov
    torch.testing.assert_close(moments.covariance, torch.cov(rows.T), rtol=1e-9, atol=1e-10)


def test_merge_of_two_halves_equals_whole(teacher_features: torch.Tensor) -> None:
    c = teacher_features.shape[1]
    whole = FeatureMoments(c).update(teacher_features)
    first, second = FeatureMoments(c).update(teacher_features[:7]), FeatureMoments(c).update(teacher_features[7:])
    merged = first.merge(second)
    assert merged.count == whole.count
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.covariance, whole.covariance, rtol=1e-10, atol=1e-12)


def test_rows_and_maps_accumulate_alike(teacher_features: torch.Tensor) -> None:
    c = teacher_features.shape[1]
    a = FeatureMoments(c).update(teacher_features)
    b = FeatureMoments(c).update(_rows(teacher_features))
    torch.testing.assert_close(a.outer_sum, b.outer_sum)
    torch.testing.assert_close(a.sum, b.sum)


def test_moments_save_load_round_trip(teacher_features: torch.Tensor, tmp_path: Path) -> None:
    m = FeatureMoments(teacher_features.shape[1]).update(teacher_features)
    path = m.save(tmp_path / "m.safetensors", metadata={"family": "dinov2"})
    back = FeatureMoments.load(path)
    for name in ("count", "sum", "outer_sum"):
        assert torch.equal(getattr(back, name), getattr(m, name))
    assert torch.equal(back.covariance, m.covariance)
    assert back.metadata["family"] == "dinov2"


def test_all_reduce_sums_across_processes() -> None:
    """A fake 2-process accelerator whose reduce doubles: the same as merging an equal twin."""
    x = torch.randn(50, 8, dtype=torch.float64)
    m = FeatureMoments(8).update(x)
    twin = FeatureMoments(8).update(x).merge(FeatureMoments(8).update(x))
    fake = types.SimpleNamespace(
        num_processes=2, device=torch.device("cpu"), reduce=lambda t, reduction: t * 2 if reduction == "sum" else None
    )
    m.all_reduce(fake)
    assert m.count == twin.count
    torch.testing.assert_close(m.outer_sum, twin.outer_sum)
    torch.testing.assert_close(m.covariance, twin.covariance)


def test_all_reduce_single_process_is_identity() -> None:
    from accelerate import Accelerator

    x = torch.randn(30, 4, dtype=torch.float64)
    m = FeatureMoments(4).update(x)
    before = m.covariance.clone()
    m.all_reduce(Accelerator(cpu=True))
    assert m.num_vectors == 30 and torch.equal(m.covariance, before)


def test_moments_reject_bad_input() -> None:
    m = FeatureMoments(8)
    with pytest.raises(ValueError, match="9 channels.*8"):
        m.update(torch.zeros(4, 9))
    with pytest.raises(ValueError, match=r"\[N,C\] or \[B,C,H,W\]"):
        m.update(torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="at least 2"):
        m.update(torch.zeros(1, 8)).covariance


# --------------------------------------------------------------------------- PHI-S


@pytest.fixture(scope="module")
def fitted(teacher_features: torch.Tensor) -> tuple[PhiS, FeatureMoments]:
    moments = FeatureMoments(teacher_features.shape[1]).update(teacher_features)
    return PhiS.from_moments(moments), moments


def test_phis_gives_unit_variance_per_dimension(teacher_features: torch.Tensor, fitted) -> None:
    """On the sample it was fitted on, every dimension's variance is exactly 1 in exact
    arithmetic: diag(alpha^2 H diag(lambda) H^T) = alpha^2 * mean(lambda) because every
    normalized Hadamard entry squares to 1/C. What is left is float32 rounding of the
    stored rotation and of the product (relative ~1e-6), so 1e-3 is a wide margin."""
    phi, moments = fitted
    y = _rows(phi(teacher_features.float())).double()
    variances = y.var(dim=0, unbiased=True)
    assert variances.shape == (moments.dim,)
    torch.testing.assert_close(variances, torch.ones_like(variances), rtol=0, atol=1e-3)
    torch.testing.assert_close(y.mean(0), torch.zeros_like(variances), rtol=0, atol=1e-3)
    # the raw features were far from isotropic, so the test is not trivial
    raw_var = torch.diagonal(moments.covariance)
    assert raw_var.max() / raw_var.min() > 2


def test_phis_inverse_is_exact(teacher_features: torch.Tensor, fitted) -> None:
    phi, _ = fitted
    x = teacher_features.float()
    err = (phi.inverse(phi(x)) - x).abs().max()
    assert err < 1e-4, err


def test_mse_in_phis_space_is_raw_mse_over_mean_eigenvalue(teacher_features: torch.Tensor, fitted) -> None:
    phi, moments = fitted
    a = teacher_features.float()
    b = a.roll(1, dims=0) * 0.7 + 0.1  # another feature set of the same teacher
    raw = torch.nn.functional.mse_loss(a.double(), b.double())
    in_phis = torch.nn.functional.mse_loss(phi(a).double(), phi(b).double())
    expected_mean_eig = torch.linalg.eigvalsh(moments.covariance).clamp_min(0).mean()
    assert phi.mean_eigenvalue == pytest.approx(float(expected_mean_eig), rel=1e-6)
    assert float(in_phis) == pytest.approx(float(raw) / phi.mean_eigenvalue, rel=1e-4)


def test_phis_matches_reference_formula_and_axes(fitted, teacher_features: torch.Tensor) -> None:
    phi, moments = fitted
    c = moments.dim
    lam, u = torch.linalg.eigh(moments.covariance)
    h = hadamard(c) / c**0.5
    x = teacher_features[:2]
    ref = ((_rows(x) - moments.mean) @ u) @ h.T * lam.clamp_min(0).mean().rsqrt()
    # the eigenvector sign is arbitrary only per column of U; PhiS uses the same eigh,
    # so the outputs agree to float32 precision
    torch.testing.assert_close(_rows(phi(x.float())).double(), ref, rtol=1e-4, atol=1e-4)
    # [N,C] rows (dim=1 too) and [B,N,C] tokens (dim=-1) give the same numbers as the map
    tokens = _rows(x.float()).view(2, -1, c)
    torch.testing.assert_close(phi(tokens, dim=-1).reshape(-1, c), _rows(phi(x.float())))
    torch.testing.assert_close(phi(_rows(x.float())), _rows(phi(x.float())))


def test_phis_identity_and_bad_width() -> None:
    phi = PhiS.identity(12)
    x = torch.randn(2, 12, 3, 3)
    assert torch.equal(phi(x), x) and torch.equal(phi.inverse(x), x)
    assert phi.mean_eigenvalue == 1.0
    with pytest.raises(ValueError, match="12 channels on axis 1"):
        phi(torch.randn(2, 10, 3, 3))


def test_phis_runs_full_precision_under_autocast(fitted, teacher_features: torch.Tensor) -> None:
    phi, _ = fitted
    x = teacher_features.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = phi(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, phi(x))


def test_phis_load_and_state_dict_round_trip(fitted, tmp_path: Path, teacher_features: torch.Tensor) -> None:
    phi, moments = fitted
    path = moments.save(tmp_path / "stats.safetensors")
    loaded = PhiS.load(path, expect_dim=moments.dim)
    x = teacher_features.float()
    torch.testing.assert_close(loaded(x), phi(x))
    blank = PhiS.identity(moments.dim)
    blank.load_state_dict(phi.state_dict(), strict=True)
    assert torch.equal(blank(x), phi(x)) and blank.mean_eigenvalue == phi.mean_eigenvalue
    with pytest.raises(ValueError, match=f"{moments.dim}-channel.*teacher has 7"):
        PhiS.load(path, expect_dim=7)
    with pytest.raises(FileNotFoundError, match="radiosharp.stats"):
        PhiS.load(tmp_path / "missing.safetensors")


def test_phis_constant_features_error() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        PhiS.from_stats(torch.zeros(8), torch.zeros(8, 8))


# --------------------------------------------------------------------------- stats CLI


def _write_recipe(tmp_path: Path, **extra) -> Path:
    recipe = {
        "kind": "featurize",
        "output_dir": str(tmp_path / "run"),
        "teachers": {name: {"size": "tiny"} for name in TINY_TEACHERS},
        "data": {"source": "synthetic", "num_images": 16, "size": 64},
        "stats": {"num_images": 16, "batch_size": 4},
        **extra,
    }
    path = tmp_path / "stats.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_stats_cli_writes_one_file_per_teacher(tmp_path: Path, capsys) -> None:
    from radiosharp.stats import main

    assert main([str(_write_recipe(tmp_path))]) == 0
    out = capsys.readouterr().out
    for name in TINY_TEACHERS:
        path = tmp_path / "run" / "phi_s" / f"{name}.safetensors"
        assert str(path) in out and "mean eigenvalue" in out
        moments = FeatureMoments.load(path)
        teacher = _tiny_teacher(name)
        grid = teacher.native_size // teacher.patch_size
        assert moments.dim == teacher.embed_dim
        assert moments.num_vectors == 16 * grid * grid
        assert moments.metadata["family"] == name and moments.metadata["embed_dim"] == str(teacher.embed_dim)
        phi = PhiS.load(path, expect_dim=teacher.embed_dim)
        assert phi.mean_eigenvalue > 0
    assert sorted(p.name for p in (tmp_path / "run" / "phi_s").iterdir()) == sorted(
        f"{n}.safetensors" for n in TINY_TEACHERS
    )


def test_stats_matches_direct_moments(tmp_path: Path) -> None:
    """compute_stats over the recipe == moments of the teacher's features computed by hand."""
    from radiosharp.recipe import load_recipe
    from radiosharp.stats import compute_stats

    recipe = load_recipe(_write_recipe(tmp_path), ["stats.num_images=6", "stats.batch_size=4"])
    paths = compute_stats(recipe)
    teacher = _tiny_teacher("dinov2")
    import radiosharp

    data = radiosharp.build_dataset(recipe.data)
    images = torch.stack([data[i]["image"] for i in range(6)])
    from radiosharp.images import resize

    with torch.no_grad():
        feats = teacher(resize(images, (teacher.native_size,) * 2)).features
    direct = FeatureMoments(teacher.embed_dim).update(feats)
    saved = FeatureMoments.load(paths["dinov2"])
    assert saved.count == direct.count
    torch.testing.assert_close(saved.covariance, direct.covariance, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "override, key",
    [
        ("teachers.dinov2.no_such_option=3", "teachers.dinov2.no_such_option"),
        ("stats.no_such_key=1", "stats.no_such_key"),
        ("stats.image_size=33", "stats.image_size"),
        ("teachers.dinov2.native_size=100", "teachers.dinov2"),
        ("data.size=-3", "data"),
    ],
)
def test_stats_cli_bad_recipe_exits_nonzero_and_writes_nothing(tmp_path: Path, capsys, override: str, key: str) -> None:
    from radiosharp.stats import main

    assert main([str(_write_recipe(tmp_path)), override]) == 2
    err = capsys.readouterr().err
    assert key in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_stats_cli_missing_recipe_file(tmp_path: Path, capsys) -> None:
    from radiosharp.stats import main

    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.subprocess
@pytest.mark.slow
def test_stats_two_processes_equal_one(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): each takes half the images, the all-reduced
    moments equal the single-process ones."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this python")
    recipe = _write_recipe(tmp_path, stats={"num_images": 11, "batch_size": 4})
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "radiosharp.stats", str(recipe), f"output_dir={tmp_path / 'two'}"],
        check=True,
        env=env,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
    )
    from radiosharp.stats import main

    assert main([str(recipe), f"output_dir={tmp_path / 'one'}"]) == 0
    for name in TINY_TEACHERS:
        one = FeatureMoments.load(tmp_path / "one" / "phi_s" / f"{name}.safetensors")
        two = FeatureMoments.load(tmp_path / "two" / "phi_s" / f"{name}.safetensors")
        assert one.count == two.count and two.metadata["num_images"] == "11"
        # The sums are float64 and all-reduced exactly, but the teachers run in float32 on
        # batches split differently, so features agree only to float32 rounding (BLAS
        # picks kernels by batch shape and thread count).
        torch.testing.assert_close(two.mean, one.mean, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(two.covariance, one.covariance, rtol=1e-4, atol=1e-6)
