"""Make test helpers (e.g. ``from chunk_counting import CountingStore``) importable from every test module."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
