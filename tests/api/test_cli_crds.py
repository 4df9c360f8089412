"""`gpufleet crds --check` guards the committed CRDs against drift from the models."""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from gpufleet.cli.main import app

from .manifests import REPO

runner = CliRunner()


def _copy_crds(tmp_path: Path) -> Path:
    target = tmp_path / "crds"
    shutil.copytree(REPO / "crds", target)
    return target


def test_crds_check_passes_on_the_repository() -> None:
    result = runner.invoke(app, ["crds", "--check", "--dir", str(REPO / "crds")])

    assert result.exit_code == 0, result.output


def test_crds_check_fails_on_a_tampered_crd(tmp_path: Path) -> None:
    crds = _copy_crds(tmp_path)
    tampered = crds / "gpufleet.io_servingpools.yaml"
    original = tampered.read_text(encoding="utf-8")
    tampered.write_text(original.replace("maximum: 64", "maximum: 65", 1), encoding="utf-8")
    assert tampered.read_text(encoding="utf-8") != original

    result = runner.invoke(app, ["crds", "--check", "--dir", str(crds)])

    assert result.exit_code == 1
    assert tampered.name in result.output


def test_crds_check_fails_on_a_missing_crd(tmp_path: Path) -> None:
    crds = _copy_crds(tmp_path)
    (crds / "gpufleet.io_powerbudgets.yaml").unlink()

    result = runner.invoke(app, ["crds", "--check", "--dir", str(crds)])

    assert result.exit_code == 1


def test_crds_writes_files_that_then_pass_the_check(tmp_path: Path) -> None:
    crds = tmp_path / "crds"

    written = runner.invoke(app, ["crds", "--dir", str(crds)])
    checked = runner.invoke(app, ["crds", "--check", "--dir", str(crds)])

    assert written.exit_code == 0, written.output
    assert checked.exit_code == 0, checked.output
