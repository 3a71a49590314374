"""A one-node SLURM cluster on this machine, for the SLURM tests and benchmarks.

Usage (as root)::

    python tests/slurm/cluster.py start     # install slurm-wlm and munge if missing, start
    python tests/slurm/cluster.py status    # partitions and node state (sinfo)
    python tests/slurm/cluster.py stop      # stop the daemons that `start` started

Debian's ``slurm-wlm`` (22.05) and ``munge``: ``slurmctld`` and ``slurmd`` on this host, a
``cpu`` partition (the default) and a ``gpu`` partition on the same node, one emulated GPU
(``Gres=gpu:1``, ``gres.conf`` ``File=/dev/null``: a ``--gpus=1`` job gets
``CUDA_VISIBLE_DEVICES=0`` and a second GPU job waits for the first, as on a one-GPU node), the
node sized from ``nproc`` and ``/proc/meminfo``, ``ProctrackType=proctrack/linuxproc``,
``TaskPlugin=task/none``, ``SelectType=select/cons_tres``. No accounting
(``AccountingStorageType=accounting_storage/none``): ``sacct`` answers "accounting storage is
disabled", which is what many small clusters do and what the pipeline's start-up check
handles; ``MinJobAge=3600`` keeps finished jobs visible to ``squeue``/``scontrol`` for an hour.

Idempotent: ``start`` on a running cluster changes nothing; the state (config, logs, pid files,
which daemons it started) lives in ``--state`` (default ``/tmp/nnrobustloss-slurm``), and
``stop`` ends only the daemons recorded there. The config is written to
``/etc/slurm/slurm.conf`` (where Debian's clients look) only when that file is absent or was
written by this script; a real cluster's config is never replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

MARKER = "# nnrobustloss one-node test cluster (tests/slurm/cluster.py)"
ETC = Path("/etc/slurm")
DEFAULT_STATE = Path(os.environ.get("NNROBUSTLOSS_SLURM_DIR", "/tmp/nnrobustloss-slurm"))
PACKAGES = ("slurm-wlm", "munge")
MEMORY_RESERVE_MB = 2048  # left to the OS and the Snakemake process


class ClusterError(RuntimeError):
    """The cluster cannot be started (one line saying why and what to do)."""


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, check=check, timeout=timeout)


def node_size() -> tuple[int, int]:
    """(CPUs, RealMemory in MB) of this machine for the node line: ``nproc`` and MemTotal minus
    :data:`MEMORY_RESERVE_MB` (at least 1024 MB)."""
    cpus = os.cpu_count() or 1
    total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemTotal:"))
    return cpus, max(1024, total_kb // 1024 - MEMORY_RESERVE_MB)


def install() -> None:
    """Install ``slurm-wlm`` and ``munge`` with apt-get when ``slurmctld`` or ``munged`` is
    missing (root only)."""
    if shutil.which("slurmctld") and shutil.which("munged"):
        return
    if os.geteuid() != 0:
        raise ClusterError("slurm-wlm/munge are not installed and this is not root: run "
                           "`apt-get install slurm-wlm munge` as root, then start again.")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        proc = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=900)
        if proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}")


def slurm_conf(state: Path, host: str, cpus: int, mem_mb: int) -> str:
    """The text of slurm.conf for a one-node cluster on ``host`` (state files under ``state``)."""
    return f"""{MARKER}; safe to delete
ClusterName=nnrobustloss
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={host} CPUs={cpus} RealMemory={mem_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
"""


def _started(state: Path) -> dict[str, int]:
    path = state / "started.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(state: Path, name: str, pid: int) -> None:
    started = _started(state)
    started[name] = pid
    (state / "started.json").write_text(json.dumps(started))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _munge_works() -> bool:
    if not shutil.which("munge"):
        return False
    proc = subprocess.run("munge -n | unmunge", shell=True, capture_output=True, timeout=20)
    return proc.returncode == 0


def _read_pid(path: Path, timeout: float = 20) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.2)
    raise ClusterError(f"{path}: no pid file after {timeout:.0f} s; see the daemon's log beside it.")


def _ping_ok() -> bool:
    proc = _run("scontrol", "ping", check=False, timeout=20)
    return proc.returncode == 0 and "UP" in proc.stdout


def _node_idle(host: str) -> bool:
    proc = _run("sinfo", "-h", "-N", "-n", host, "-o", "%T", check=False, timeout=20)
    states = proc.stdout.split()
    return bool(states) and all(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states)


def is_up() -> bool:
    """Whether a SLURM controller answers here (``scontrol ping``)."""
    return bool(shutil.which("scontrol")) and _ping_ok()


def start(state: Path = DEFAULT_STATE, timeout: float = 90) -> dict[str, Any]:
    """Start (or find running) munged, slurmctld and slurmd; return ``{"host", "cpus",
    "mem_mb", "state", "started"}``. Raises :class:`ClusterError` with the reason."""
    install()
    host = socket.gethostname().split(".")[0]
    state.mkdir(parents=True, exist_ok=True)
    for sub in ("ctld", "spool"):
        (state / sub).mkdir(exist_ok=True)
    cpus, mem_mb = node_size()
    conf = ETC / "slurm.conf"
    text = slurm_conf(state, host, cpus, mem_mb)
    if conf.is_file() and not conf.read_text().startswith(MARKER):
        raise ClusterError(f"{conf} exists and was not written by this script: this machine "
                           "has a SLURM configuration of its own; use that cluster instead.")
    ETC.mkdir(parents=True, exist_ok=True)
    if not conf.is_file() or conf.read_text() != text:
        conf.write_text(text)
    (ETC / "gres.conf").write_text(f"{MARKER}\nNodeName={host} Name=gpu Count=1 File=/dev/null\n")
    if not _munge_works():
        key = Path("/etc/munge/munge.key")
        if not key.is_file():
            _run("mungekey", "--create", "--force")
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        for p in ("/run/munge", "/var/lib/munge", "/var/log/munge", "/etc/munge"):
            if Path(p).exists():
                shutil.chown(p, "munge", "munge")
        if key.exists():
            shutil.chown(key, "munge", "munge")
            key.chmod(0o400)
        pid_file = Path("/run/munge/munged.pid")
        pid_file.unlink(missing_ok=True)  # a killed munged's, not to be read as the new one's
        _run("runuser", "-u", "munge", "--", "munged")
        _record(state, "munged", _read_pid(pid_file))
        if not _munge_works():
            raise ClusterError("munged started but `munge -n | unmunge` fails; see "
                               "/var/log/munge/munged.log.")
    started = _started(state)
    for name, pid_file, cmd in (("slurmctld", state / "slurmctld.pid", ["slurmctld"]),
                                ("slurmd", state / "slurmd.pid", ["slurmd"])):
        pid = started.get(name)
        if pid and _alive(pid):
            continue
        pid_file.unlink(missing_ok=True)
        proc = _run(*cmd, check=False)
        if proc.returncode != 0:
            raise ClusterError(f"{name} did not start ({proc.stderr.strip()[-300:]}); see "
                               f"{state / (name + '.log')}.")
        _record(state, name, _read_pid(pid_file))
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _ping_ok() and _node_idle(host):
            break
        time.sleep(1)
    else:
        raise ClusterError(f"the node {host} is not idle after {timeout:.0f} s; see "
                           f"{state}/slurmctld.log and slurmd.log.")
    return {"host": host, "cpus": cpus, "mem_mb": mem_mb, "state": str(state),
            "started": _started(state)}


def stop(state: Path = DEFAULT_STATE) -> list[str]:
    """Stop the daemons that :func:`start` recorded in ``state`` (newest first); return their
    names. Daemons it did not start are left running."""
    stopped = []
    started = _started(state)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = started.get(name)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < end:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
        started.pop(name, None)
    if state.is_dir():
        (state / "started.json").write_text(json.dumps(started))
    return stopped


def scaled_profile(source: Path, target: Path, cpus: int, mem_mb: int,
                   extra: dict[str, Any] | None = None) -> Path:
    """Copy the SLURM profile ``source`` (a folder with config.yaml) to ``target`` with every
    ``mem_mb`` capped at ``mem_mb`` and every ``cpus_per_task`` at ``cpus`` (the rest, partitions
    and GPU requests included, unchanged), plus the top-level ``extra`` keys; return
    ``target``."""
    cfg = yaml.safe_load((source / "config.yaml").read_text())

    def scale(res: dict[str, Any]) -> None:
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), mem_mb)
        if "cpus_per_task" in res:
            res["cpus_per_task"] = min(int(res["cpus_per_task"]), cpus)

    scale(cfg.get("default-resources", {}))
    for res in cfg.get("set-resources", {}).values():
        scale(res)
    for rule in list(cfg.get("set-threads", {})):
        cfg["set-threads"][rule] = min(int(cfg["set-threads"][rule]), cpus)
    cfg.update(extra or {})
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: start, stop or status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("start", "stop", "status"))
    ap.add_argument("--state", type=Path, default=DEFAULT_STATE)
    args = ap.parse_args(argv)
    try:
        if args.action == "start":
            info = start(args.state)
            print(f"SLURM cluster up on {info['host']}: {info['cpus']} CPUs, {info['mem_mb']} MB,"
                  f" partitions cpu (default) and gpu (1 GPU); state in {info['state']}")
        elif args.action == "stop":
            names = stop(args.state)
            print(f"stopped: {', '.join(names) or 'nothing (no daemon of this script ran)'}")
        else:
            print(_run("sinfo", check=False).stdout, end="")
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
