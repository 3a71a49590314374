"""Start-up checks of a run on SLURM (the Snakefile's ``onstart``): no silent hang, no noise.

The SLURM executor plugin (snakemake-executor-plugin-slurm 2.x) picks ``sacct`` to query job
states whenever the binary exists. On a cluster without accounting, ``sacct`` answers "Slurm
accounting storage is disabled" and Snakemake waits, without a word, for job states that never
come. :func:`check_slurm_run` runs before the first submission: when the status command is
``sacct`` and ``sacct`` cannot answer, it switches the run to ``squeue`` with one warning line
(when the controller keeps finished jobs long enough for ``squeue`` to see them,
:func:`min_job_age_needed`), or stops with one line naming the fix.

Without ``slurm_account`` the plugin guesses an account with ``sacct ... | tail -1``, which it
runs without a shell, so the pipe reaches ``sacct`` as arguments and ``sacct`` prints an error
(``invalid option -- '1'``; ``benchmarks/results/slurm_submission.txt``). :func:`check_slurm_run`
says once what to set instead, and replaces that guess by "no account" (what the plugin falls
back to anyway) so that the raw error does not appear.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from typing import Any

FIRST_STATUS_CHECK_S = 40
"""The plugin's default delay before its first status check (``slurm-init-seconds-before-
status-checks``); ``squeue`` needs finished jobs kept 3 x that long (``MinJobAge``), else the
plugin falls back to ``sacct`` by itself (:func:`min_job_age_needed`)."""

PROFILE = "profiles/slurm/config.yaml"


class SlurmSetupError(RuntimeError):
    """The run cannot work on this SLURM cluster as configured (one line with the fix)."""


def _run(*cmd: str, timeout: float = 30) -> tuple[bool, str]:
    """(success, stdout or the first line of stderr) of a command; False when it is missing."""
    try:
        proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    text = (proc.stdout if proc.returncode == 0 else proc.stderr or proc.stdout).strip()
    return proc.returncode == 0, text.splitlines()[0] if text else ""


def sacct_problem() -> str | None:
    """Why ``sacct`` cannot report job states here (its message), or None when it can."""
    ok, text = _run("sacct", "-X", "-n", "-o", "JobID", "-S", "now")
    if ok and "accounting storage is disabled" not in text.lower():
        return None
    return text or "sacct failed without a message"


def min_job_age() -> int | None:
    """``MinJobAge`` of the controller in seconds (``scontrol show config``); None if unknown."""
    ok, _ = _run("scontrol", "ping")
    proc = subprocess.run(["scontrol", "show", "config"], text=True, capture_output=True,
                          timeout=30) if ok else None
    if proc is None or proc.returncode != 0:
        return None
    match = re.search(r"^MinJobAge\s*=\s*(\d+)\s*(sec|s|h)?", proc.stdout, re.MULTILINE)
    if match is None:
        return None
    return int(match.group(1)) * (3600 if match.group(2) == "h" else 1)


def min_job_age_needed(settings: Any) -> int:
    """Seconds of ``MinJobAge`` that the plugin needs to trust ``squeue``: 3 x its first
    status-check delay (``init_seconds_before_status_checks``, default
    :data:`FIRST_STATUS_CHECK_S`)."""
    delay = getattr(settings, "init_seconds_before_status_checks", None)
    return 3 * int(delay if delay is not None else FIRST_STATUS_CHECK_S)


def _has_account(workflow: Any) -> bool:
    """Whether the run gives SLURM jobs an account (default or per-rule ``slurm_account``)."""
    settings = getattr(workflow, "resource_settings", None)
    found = "slurm_account" in str(getattr(settings, "default_resources", "") or "")
    overwrite = getattr(settings, "overwrite_resources", None) or {}
    return found or any("slurm_account" in (res or {}) for res in overwrite.values())


def _silence_account_guess() -> bool:
    """Make the plugin's account guess return "no account" without running ``sacct``; False
    when this plugin version has no such guess (nothing to do)."""
    try:
        import snakemake_executor_plugin_slurm as plugin
    except ImportError:
        return False
    if not hasattr(plugin, "get_account"):
        return False
    plugin.get_account = lambda logger: None
    return True


def check_slurm_run(workflow: Any, warn: Callable[[str], None]) -> None:
    """Check a run before it submits anything; nothing happens unless its executor is slurm.

    ``workflow``: Snakemake's workflow object (``executor_plugin``, ``executor_settings``,
    ``resource_settings``); ``warn``: prints one line. Switches ``sacct`` to ``squeue`` (one
    warning) or raises :class:`SlurmSetupError`; explains a missing account once.
    """
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or getattr(plugin, "cli_prefix", None) != "slurm":
        return
    settings = workflow.executor_settings
    if getattr(settings, "status_command", "sacct") == "sacct":
        problem = sacct_problem()
        if problem is not None:
            age, needed = min_job_age(), min_job_age_needed(settings)
            if age is None or age < needed:
                raise SlurmSetupError(
                    f"SLURM: sacct cannot report job states ({problem}) and the controller keeps "
                    f"finished jobs only {age if age is not None else 'an unknown number of'} s "
                    f"(MinJobAge), too short for squeue: enable accounting (slurmdbd), or set "
                    f"MinJobAge >= {needed} in slurm.conf and "
                    f"`slurm-status-command: squeue` in {PROFILE}.")
            settings.status_command = "squeue"
            warn(f"SLURM: sacct cannot report job states ({problem}); querying them with "
                 f"squeue instead (MinJobAge {age} s). Set `slurm-status-command: squeue` in "
                 f"{PROFILE} to make this the profile's choice.")
    if not _has_account(workflow) and _silence_account_guess():
        warn(f"SLURM: no slurm_account set, jobs are submitted without an account. On a cluster "
             f"that charges jobs to accounts set `slurm_account: <account>` under "
             f"default-resources in {PROFILE}.")


__all__ = ["FIRST_STATUS_CHECK_S", "SlurmSetupError", "check_slurm_run", "min_job_age",
           "min_job_age_needed", "sacct_problem"]
