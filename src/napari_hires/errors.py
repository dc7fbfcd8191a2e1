"""Exceptions that carry a message meant for the user: the CLI prints them as one line, widgets show them."""

import errno


class HiresError(ValueError):
    """Bad input or a state the user can fix; the message names the problem and what to do."""


class ImageReadError(HiresError):
    """A file that napari-hires should read but cannot (corrupt metadata, missing arrays, bad chunks)."""


class OutputExistsError(HiresError, FileExistsError):
    """An output path already holds data and ``overwrite`` was not given."""


class MissingDependencyError(HiresError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def missing_extra(extra: str, package: str, purpose: str) -> MissingDependencyError:
    """The error for ``purpose`` needing ``package``, which ``pip install 'napari-hires[EXTRA]'`` installs."""
    return MissingDependencyError(f"{purpose} needs {package}, which is not installed: "
                                  f"pip install 'napari-hires[{extra}]'")


class HiresWarning(UserWarning):
    """Something done differently from what was asked, for a stated reason (the CLI prints it as one line)."""


class UnverifiedWeightsWarning(HiresWarning):
    """A model file whose card records no digest of its weights (older or hand-made), so damage goes unnoticed."""


class UntrainedModelWarning(HiresWarning):
    """A registered architecture without trained weights: its output is random, good only for trying the pipeline."""


class ResolutionMismatchWarning(HiresWarning):
    """No level of the image has the pixel size the model was trained at (within 25 %): its output may be poor."""


class LevelChosenWarning(HiresWarning):
    """The run goes on a coarser pyramid level than full resolution, the one whose pixel size matches the model's."""


#: errno of a failed write -> (what happened, what to do), in the words of every "cannot write" error.
WRITE_ERRORS = {
    errno.EROFS: ("read-only file system", "choose another output"),
    errno.EACCES: ("permission denied", "choose another output or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose another output or fix its permissions"),
    errno.ENOSPC: ("no space left on device", "free space or choose another output"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another output"),
}
