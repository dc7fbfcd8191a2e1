"""The package as installed: manifest, console script, and cheap imports."""

import subprocess
import sys
from pathlib import Path

from npe2 import PluginManifest

from napari_hires.cli import main

#: console scripts of the environment running the tests (not necessarily on PATH)
BIN = Path(sys.executable).parent


def test_manifest_validates_and_is_registered():
    manifest = PluginManifest.from_distribution("napari-hires")
    assert manifest.name == "napari-hires"
    commands = {c.id for c in manifest.contributions.commands}
    assert {"napari-hires.get_reader", "napari-hires.synthetic_slide"} <= commands
    result = subprocess.run([str(BIN / "npe2"), "validate", "napari-hires"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_and_io_import_without_torch_or_qt():
    code = (
        "import sys, napari_hires.cli as c, napari_hires.io;"
        "c.build_parser();"
        "heavy = [m for m in ('torch', 'PyQt6', 'qtpy', 'napari') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_script_help():
    result = subprocess.run([str(BIN / "napari-hires"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in ("demo", "synth", "pyramid"):
        assert command in result.stdout


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    status = main(["pyramid", str(tmp_path / "missing.tif"), str(tmp_path / "out.zarr")])
    err = capsys.readouterr().err
    assert status == 2
    assert "missing.tif" in err and "Traceback" not in err
    assert not (tmp_path / "out.zarr").exists()
