"""Exceptions that carry a message meant for the user: the CLI prints them as one line, widgets show them."""


class HiresError(ValueError):
    """Bad input or a state the user can fix; the message names the problem and what to do."""


class ImageReadError(HiresError):
    """A file that napari-hires should read but cannot (corrupt metadata, missing arrays, bad chunks)."""


class OutputExistsError(HiresError, FileExistsError):
    """An output path already holds data and ``overwrite`` was not given."""


class HiresWarning(UserWarning):
    """Something done differently from what was asked, for a stated reason (the CLI prints it as one line)."""


class UnverifiedWeightsWarning(HiresWarning):
    """A model file whose card records no digest of its weights (older or hand-made), so damage goes unnoticed."""
