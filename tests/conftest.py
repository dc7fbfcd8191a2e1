"""Make test helpers (e.g. ``from chunk_counting import CountingStore``) importable from every test module, and
fixtures every test directory shares."""

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder on a read-only file system (a tmpfs mounted ro: as root, chmod alone does not stop writes)."""
    target = tmp_path / "read-only"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip() or mounted.returncode})")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
