"""User-facing errors.

Every problem a user can fix (bad input file, bad config value, missing stage output, a full or
read-only output folder) is raised as :class:`NNRobustLossError` with one message naming the file
or key, the problem and what to do. The command line and the Snakemake scripts print the message
and exit with status 1 instead of a traceback; :func:`user_error` turns the ``OSError`` of a
file operation into such a message.
"""

from __future__ import annotations

import errno


class NNRobustLossError(Exception):
    """An error caused by the user's input or configuration, with an actionable message."""


class InputDataError(NNRobustLossError):
    """A source file is missing, unreadable or inconsistent (geometry, label values, NaNs)."""


class ConfigError(NNRobustLossError):
    """A configuration key has a wrong type, an out-of-range value or is unknown."""


class OutputError(NNRobustLossError):
    """An output could not be written completely (disk full, file size limit, permissions) or a
    path in the results folder is taken by something this stage did not write."""


class StageLockedError(NNRobustLossError):
    """Another process runs the same stage of the same task right now."""


_HINTS = {
    errno.EACCES: "make the folder writable or point results_dir at a writable folder",
    errno.EPERM: "make the folder writable or point results_dir at a writable folder",
    errno.EROFS: "the file system is read-only; point results_dir at a writable folder",
    errno.ENOSPC: "the disk is full; free space and rerun",
    errno.EDQUOT: "the disk quota is exhausted; free space and rerun",
    errno.EFBIG: "a file size limit was hit (ulimit -f); raise it and rerun",
    errno.EEXIST: "a file is in the way of a folder; move it away and rerun",
    errno.ENOTDIR: "a file is in the way of a folder; move it away and rerun",
    errno.EISDIR: "a folder is in the way of a file; move it away and rerun",
    errno.ENOENT: "check that the path exists",
    errno.ELOOP: "a symbolic link loops; fix or remove it",
}


def user_error(e: OSError) -> OutputError:
    """One-line :class:`OutputError` for an ``OSError``: the file(s) it names, the system's
    reason and what to do (by ``errno``, e.g. a full disk or a read-only folder)."""
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    reason = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno or -1, "check the path and its permissions, then rerun")
    return OutputError(f"{files or 'file operation'}: {reason}; {hint}.")


def one_line(e: NNRobustLossError | OSError) -> str:
    """The one-line message shown for a user error or a failed file operation."""
    return str(user_error(e)) if isinstance(e, OSError) else str(e)
