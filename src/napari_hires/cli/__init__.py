"""The ``napari-hires`` command: the same functions as the plugin, headless, one module per sub-command.

Each sub-command imports what it needs only when it runs, so ``napari-hires --help`` stays fast.
"""

from napari_hires.cli.main import build_parser, main, write_error

__all__ = ["build_parser", "main", "write_error"]
