"""How widgets report a failed job on their status line."""

from __future__ import annotations

from typing import Any

from napari_hires.errors import HiresError

#: Errors a user can fix (bad input, an output in the way): shown, not raised.
USER_ERRORS: tuple[type[BaseException], ...] = (HiresError, FileNotFoundError, FileExistsError)


def report_error(status: Any, err: BaseException, user_errors: tuple[type[BaseException], ...] = USER_ERRORS) -> None:
    """Show a user error on ``status``; show anything else as a failure and re-raise it, since it is a bug."""
    if isinstance(err, user_errors):
        status.value = f"error: {err}"
        return
    status.value = f"failed: {type(err).__name__}: {err}"
    raise err
