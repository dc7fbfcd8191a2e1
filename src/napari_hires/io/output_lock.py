"""One writer per output: a lock file beside the output store, held for the whole run.

``OUT.zarr.lock`` lives beside the store (in its resolved folder), not inside it, because ``overwrite`` removes the
store; it is created with O_CREAT | O_EXCL, so of two runs that start together exactly one gets it, and holds JSON
naming its owner: pid, host, start time and command. It is removed when the run finishes, is cancelled or fails
(and, as a last resort, when the holder is garbage collected or the interpreter exits). A lock whose owner is gone
(same host, pid not running, a zombie, or a pid since reused by a younger process) is stale: it is reported with a
warning naming the dead pid and taken over. Any other lock refuses the run, saying who holds it and what to do.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
import uuid
import warnings
import weakref
from datetime import datetime
from pathlib import Path
from typing import Any

from napari_hires.errors import HiresError, HiresWarning

SUFFIX = ".lock"
#: Seconds to wait for a lock file that another process has just created to get its contents.
_WRITE_WAIT = 2.0


class OutputBusyError(HiresError):
    """Another live run holds the output's lock."""


class StaleLockWarning(HiresWarning):
    """The output's lock was left by a run that is no longer running, and this run takes it over."""


class OutputLock:
    """The lock on one output, held until :meth:`release` (idempotent)."""

    def __init__(self, path: Path, token: str) -> None:
        self.path, self.token = path, token
        self._finalizer = weakref.finalize(self, _remove_if_ours, path, token)

    def release(self) -> None:
        self._finalizer()

    @property
    def held(self) -> bool:
        return self._finalizer.alive

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_path(out: str | os.PathLike) -> Path:
    """Where the lock of ``out`` lives: ``OUT.lock`` beside it, in its resolved folder (one lock per real store,
    whichever path names it)."""
    out = Path(out).expanduser().absolute()
    return out.parent.resolve() / (out.name + SUFFIX)


def lock_output(out: str | os.PathLike) -> OutputLock:
    """Take the lock of ``out`` for this process, taking over a stale one; raise OutputBusyError if it is held."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "since": datetime.now().isoformat(sep=" ", timespec="seconds"), "command": _command(), "token": token}
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released (or taken over and released) since
                continue
            if _alive(holder):
                raise OutputBusyError(_busy_message(out, path, holder)) from None
            if _take_over(path, holder):
                warnings.warn(f"{out}: taking over the lock of pid {holder.get('pid')} on {holder.get('host')} "
                              f"(since {holder.get('since')}: {holder.get('command')}), which is no longer running",
                              StaleLockWarning, stacklevel=2)
            continue
        except OSError as err:
            raise HiresError(f"cannot write to {path.parent} ({err.strerror or err}); choose an output in a folder "
                             "you can write to") from None
        with os.fdopen(fd, "w") as file:
            json.dump(record, file)
        return OutputLock(path, token)
    raise OutputBusyError(f"{out}: its lock {path} keeps changing hands; another run is starting on it, try again")


def _command() -> str:
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name or "python"
    return shlex.join(argv)


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file; None once the file is gone. A file still empty after ``_WRITE_WAIT``
    seconds (its writer died between creating and filling it) reads as a holder that is not alive."""
    deadline = time.monotonic() + _WRITE_WAIT
    while True:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
            if isinstance(holder, dict):
                return holder
        except ValueError:
            pass
        if time.monotonic() > deadline:
            return {"pid": None, "host": socket.gethostname(), "since": "?", "command": "(an empty lock file)",
                    "raw": text}
        time.sleep(0.05)


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's owner may still be running: always, for another host (there is no way to tell)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    return isinstance(pid, int) and process_running(pid, holder.get("started"))


def process_running(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` of this machine still runs: not gone, not a zombie, and (given the time its work
    ``started``) not a younger process that was handed the same pid. Always True on Windows, where signal 0 would
    end the process, and for this process itself."""
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return not _dead_or_reused(pid, started)


def _dead_or_reused(pid: int, started: Any) -> bool:
    """On Linux: a zombie (killed, not yet reaped), or a process younger than the lock (the pid was reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, IndexError, StopIteration, ValueError):
        return False
    if stat[0] in ("Z", "X"):
        return True
    begun = boot + int(stat[19]) / os.sysconf("SC_CLK_TCK")
    return isinstance(started, (int, float)) and begun > started + 2.0


def _take_over(path: Path, holder: dict[str, Any]) -> bool:
    """Remove a stale lock, unless another process took it over first; True when this process removed it."""
    aside = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)  # atomic: of several processes taking over, one moves the stale file
    except FileNotFoundError:
        return False
    moved = _read(aside)
    if moved is not None and moved != holder:  # a fresh lock taken between our read and the rename: put it back
        try:
            os.link(aside, path)
        except OSError:
            pass
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def _remove_if_ours(path: Path, token: str) -> None:
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("token") == token:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _busy_message(out: str | os.PathLike, path: Path, holder: dict[str, Any]) -> str:
    host = holder.get("host")
    what = "wait for it to finish or stop it, then run again"
    if host != socket.gethostname():
        what += f"; if it is no longer running on {host}, delete its lock {path}"
    return (f"{out} is being written by another run: pid {holder.get('pid')} on {host} since {holder.get('since')} "
            f"({holder.get('command')}); {what}")
