"""Sending a stage's output to its Snakemake log file."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

from nnrobustloss.errors import NNRobustLossError, one_line

SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_RESTART_COUNT",
                       "CUDA_VISIBLE_DEVICES")
"""Environment variables named in a job log's first line when set: where the job ran."""


def job_header() -> str:
    """The first line of a job's log: host, pid and the :data:`SCHEDULER_VARIABLES` that are
    set (on SLURM: job id, partition, restart count, the GPU it was given)."""
    import socket

    found = " ".join(f"{k}={os.environ[k]}" for k in SCHEDULER_VARIABLES if k in os.environ)
    return f"[job] host {socket.gethostname()} pid {os.getpid()}" + (f" {found}" if found else "")


def _fail(message: str, log: Any | None, log_file: str | os.PathLike[str]) -> NoReturn:
    """Write ``error: message`` to the log (when open) and the console; exit with status 1."""
    if log is not None:
        print(f"error: {message}", file=log)
    console = sys.__stderr__
    if console is not None:
        print(f"error: {message}\n(log: {log_file})", file=console)
    raise SystemExit(1) from None


@contextlib.contextmanager
def logged(log_file: str | os.PathLike[str] | None) -> Iterator[None]:
    """Append stdout and stderr of the block to ``log_file`` (``None``: leave them alone).

    A user-fixable :class:`NNRobustLossError` and any ``OSError`` (a full disk, a read-only or
    missing folder, a file in the way; :func:`nnrobustloss.errors.user_error`) are written as
    one line (also to the original stderr, so it shows in Snakemake's console output) and end
    the process with status 1; other exceptions keep their traceback in the log. A log file that
    cannot be opened is such an error too. The log gets :func:`job_header` first (where the job
    ran: on SLURM its job id, partition and GPU).
    """
    if log_file is None:
        yield
        return
    try:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        f = open(log_file, "a", encoding="utf-8")  # closed by the with below
    except OSError as e:
        _fail(one_line(e), None, log_file)
    with f:
        print(job_header(), file=f, flush=True)
        old = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = f
        try:
            yield
        except (NNRobustLossError, OSError) as e:
            sys.stdout, sys.stderr = old
            _fail(one_line(e), f, log_file)
        except BaseException:
            traceback.print_exc(file=f)
            raise
        finally:
            sys.stdout, sys.stderr = old
