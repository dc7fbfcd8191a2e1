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


def message_rows(*rows: Any) -> Any:
    """A form of captioned, word-wrapped message lines (magicgui Labels), aligned and given the dock's full width.

    magicgui lays each labelled widget out on its own row, so long messages squeeze to a sliver or clip; here the
    captions share one column and the messages wrap within the rest.
    """
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QFormLayout, QLabel, QSizePolicy, QWidget

    def fit(label: Any) -> None:
        """Keep a wrapping label as tall as its text at its width (napari's dock scroll area ignores that)."""
        height = label.heightForWidth(label.width())
        if height > 0:
            label.setMinimumHeight(height)

    class FitHeight(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.Resize:
                fit(obj)
            return False

    box = QWidget()
    form = QFormLayout(box)
    form.setContentsMargins(0, 0, 0, 0)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    box._fit = FitHeight(box)  # kept alive with the box
    for label in rows:
        native = label.native
        native.setWordWrap(True)
        native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)
        native.installEventFilter(box._fit)
        label.changed.connect(lambda _v, n=native: fit(n))
        form.addRow(QLabel(label.label), native)
    return box
