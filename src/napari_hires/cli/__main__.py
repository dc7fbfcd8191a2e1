"""``python -m napari_hires.cli``: the console script, for environments without it on the PATH."""

import sys

from napari_hires.cli.main import main

sys.exit(main())
