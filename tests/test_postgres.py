"""Optuna storages for several tuning workers: a real PostgreSQL server, and storage URL faults.

The PostgreSQL test starts its own server (Debian's ``postgresql`` package: ``initdb`` and
``pg_ctl``) in a temporary folder on a free local port, runs two tuning workers of one study as
separate processes against it, and selects the best parameters. It is skipped, with the reason,
where no server can be started (binaries or the ``psycopg2`` driver missing, no unprivileged user
to run the server as root).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from nnrobustloss import tuning
from nnrobustloss.errors import ConfigError

# A tuning worker with a cheap objective (no training), run as its own process.
WORKER = """
import json, sys
from nnrobustloss.tuning import run_worker
kw = json.loads(sys.argv[1])
summary = run_worker(**kw, run_trial=lambda trial, params, d: -sum((v - 0.5) ** 2
                                                                   for v in params.values()))
print(json.dumps(summary))
"""


def _server_binaries() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl`` from PATH or Debian's /usr/lib/postgresql/<version>/bin."""
    for bindir in [None, *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]:
        initdb = shutil.which("initdb", path=bindir)
        pg_ctl = shutil.which("pg_ctl", path=bindir)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """URL of a fresh PostgreSQL database on a server started for this module."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("the PostgreSQL driver psycopg2 is not installed (pip install '.[postgres]')")
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl); install Debian's postgresql "
                    "package (apt-get install -y postgresql)")
    initdb, pg_ctl = binaries
    run_as: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="nnrl-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: use the package's own user
        try:
            import pwd

            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        root.chmod(0o755)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    try:
        subprocess.run([*run_as, initdb, "-D", str(data), "-U", "nnrl", "--auth=trust"],
                       check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w",
                        "-t", "60", "-o", f"-p {port} -k {root} -h 127.0.0.1", "start"],
                       check=True, capture_output=True, text=True, timeout=120)
    except (subprocess.SubprocessError, OSError) as e:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        detail = getattr(e, "stderr", "") or str(e)
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"cannot start a PostgreSQL server: {detail.strip()[-300:]} {log[-300:]}")
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="nnrl", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://nnrl:not-shown@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_study_on_a_real_postgresql_server(tmp_path: Path, postgres_url: str,
                                                                monkeypatch) -> None:
    monkeypatch.setenv("NNRL_TEST_PG", postgres_url)
    common = {"task": "T", "method": "APL2", "fold": 0, "workers": 2, "n_trials": 5,
              "study_dir": str(tmp_path / "study"), "storage": "postgresql", "seed": 0,
              "n_startup_trials": 2, "pruner": "none", "epochs": 1, "url_env": "NNRL_TEST_PG"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, json.dumps({**common, "worker": w})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "NNRL_TEST_PG": postgres_url})
             for w in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    assert sorted(json.loads(out.splitlines()[-1])["ran"] for out, _ in outs) == [2, 3]
    best = tuning.select_best(task="T", method="APL2", fold=0, n_trials=5,
                              study_dir=tmp_path / "study", storage="postgresql",
                              trials_csv=tmp_path / "trials.csv",
                              best_params_json=tmp_path / "best.json", url_env="NNRL_TEST_PG")
    assert best["n_finished"] == 5 and set(best["params"]) == {"w"}
    study = optuna.load_study(study_name="T.APL2.fold0", storage=postgres_url)
    assert sorted(t.user_attrs["worker"] for t in study.trials) == [0, 0, 0, 1, 1]
    # Nothing of the study is in the study folder: it lives on the server.
    assert not list((tmp_path / "study").glob("study.*"))


@pytest.mark.parametrize("url", ["postgresql+pg8000://nnrl:secret@127.0.0.1:1/optuna",
                                 "postgresql://nnrl:secret@127.0.0.1:1/optuna"])
def test_postgresql_without_driver_or_server_is_one_line(tmp_path: Path, monkeypatch,
                                                         url: str) -> None:
    """pg8000 is not installed (no driver); with psycopg2 present, port 1 has no server."""
    monkeypatch.setenv("NNRL_TEST_PG", url)
    locator = tuning.storage_url("postgresql", tmp_path, "NNRL_TEST_PG")
    with pytest.raises(ConfigError) as info:
        tuning.open_storage("postgresql", locator)
    msg = str(info.value)
    print(msg)
    assert "\n" not in msg and "secret" not in msg and msg.startswith("tuning.storage: postgresql")
    if "pg8000" in url:
        assert "driver" in msg and "nnrobustloss[postgres]" in msg
    else:
        assert "cannot open" in msg or "driver" in msg


def test_sqlite_url_quotes_a_results_dir_with_question_mark_and_hash(tmp_path: Path) -> None:
    study_dir = tmp_path / "res?ults#1%2" / "study"
    url = tuning.storage_url("sqlite", study_dir)
    assert tuning.sqlite_path(url) == study_dir.resolve() / "study.sqlite3"
    study = optuna.create_study(storage=tuning.open_storage("sqlite", url), study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    # The database is exactly where the study folder says, and nowhere else.
    assert sorted(p.name for p in study_dir.iterdir()) == ["study.sqlite3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res?ults#1%2"]
    again = optuna.load_study(study_name="s", storage=tuning.open_storage("sqlite", url))
    assert len(again.trials) == 2
