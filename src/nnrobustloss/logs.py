"""Sending a stage's output to its Snakemake log file."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from nnrobustloss.errors import NNRobustLossError


@contextlib.contextmanager
def logged(log_file: str | os.PathLike[str] | None) -> Iterator[None]:
    """Append stdout and stderr of the block to ``log_file`` (``None``: leave them alone).

    A user-fixable :class:`NNRobustLossError` is written as its one-line message (also to the
    original stderr, so it shows in Snakemake's console output) and ends the process with status
    1; other exceptions keep their traceback in the log.
    """
    if log_file is None:
        yield
        return
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    console = sys.__stderr__
    with open(log_file, "a", encoding="utf-8") as f:
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = f
        try:
            yield
        except NNRobustLossError as e:
            print(f"error: {e}", file=f)
            if console is not None:
                print(f"error: {e}\n(log: {log_file})", file=console)
            raise SystemExit(1) from None
        except BaseException:
            traceback.print_exc(file=f)
            raise
        finally:
            sys.stdout, sys.stderr = old
