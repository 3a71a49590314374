"""User-facing errors.

Every problem a user can fix (bad input file, bad config value, missing stage output) is raised
as :class:`NNRobustLossError` with one message naming the file or key, the problem and what to
do. The command line prints the message and exits with status 1 instead of a traceback.
"""

from __future__ import annotations


class NNRobustLossError(Exception):
    """An error caused by the user's input or configuration, with an actionable message."""


class InputDataError(NNRobustLossError):
    """A source file is missing, unreadable or inconsistent (geometry, label values, NaNs)."""


class ConfigError(NNRobustLossError):
    """A configuration key has a wrong type, an out-of-range value or is unknown."""
