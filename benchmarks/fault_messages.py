"""What a user sees when the training stages meet a fault: one real run per fault.

Usage::

    python benchmarks/fault_messages.py [--workdir /tmp/fault-messages] [--out FILE.md]

Builds a tiny study through the ``nnrobustloss`` command (the smoke phantom task; Baseline,
APL1 and APL2 on fold 0; 1-epoch trainings, a 1-trial journal study), then, each on its own
copy of the results folder, breaks one thing and reruns the stage through the command. Prints
(and writes) a table: the fault, the command, its exit status and the lines it printed that are
not progress lines (``[stage] ...``). The messages of README "Bad input and faults" and of
docs/faults.md are copied from this table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TASK = "Phantom"
LAUNCHER = ("import sys; from nnrobustloss.cli import main; "
            "sys.argv = ['nnrobustloss', *sys.argv[1:]]; sys.exit(main())")


def _config(results: Path, **extra) -> Path:
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    cfg = {"results_dir": str(results), "tasks": smoke["tasks"], "folds": [0],
           "methods": ["Baseline", "APL1", "APL2"], "device": "cpu",
           "training": smoke["training"], "tuning": smoke["tuning"],
           "planning": smoke["planning"], **extra}
    path = results.parent / f"config-{results.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, *args: str, fsize: int | None = None) -> tuple[int, list[str]]:
    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args, "--configfile", str(config)],
                          capture_output=True, text=True, preexec_fn=limit, cwd=config.parent,
                          env=dict(os.environ, nnUNet_compile="false"))
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
             if ln.startswith("error:") or "removed its cut" in ln or "Traceback" in ln]
    return proc.returncode, lines


def _stage(m: str, *rest: str) -> list[str]:
    return [m, "--task", TASK, *rest]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/fault-messages"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    base = args.workdir / "base"
    cfg = _config(base)
    t0 = time.monotonic()
    for step in (["convert", "--task", TASK], ["splits", "--task", TASK], ["plan", "--task", TASK],
                 _stage("tune", "--method", "APL2", "--fold", "0"),
                 _stage("train", "--method", "Baseline", "--fold", "0"),
                 _stage("train", "--method", "APL2", "--fold", "0"),
                 _stage("predict", "--method", "Baseline", "--fold", "0")):
        code, lines = _run(cfg, *step)
        if code:
            raise SystemExit(f"{' '.join(step)} failed: {lines}")
    print(f"tiny study built in {time.monotonic() - t0:.0f} s", file=sys.stderr)

    training = base / "training" / TASK
    study = base / "tuning" / TASK / "APL2" / "fold0"

    def cut(path: Path, keep: float) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    def edit_json(path: Path, change: Callable[[dict], None]) -> None:
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj))

    def more_features(plans: dict) -> None:
        arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]

    def interrupted(r: Path) -> None:
        model = r / "training" / TASK / "Baseline" / "fold0"
        os.replace(model / "checkpoint_final.pth", model / "checkpoint_latest.pth")
        cut(model / "checkpoint_latest.pth", 0.5)

    def foreign_latest(r: Path) -> None:
        dst = r / "training" / TASK / "APL1" / "fold0"
        dst.mkdir(parents=True)
        shutil.copy(r / "training" / TASK / "Baseline" / "fold0" / "checkpoint_final.pth",
                    dst / "checkpoint_latest.pth")

    def journal_append(r: Path, text: bytes) -> None:
        with (r / study.relative_to(base) / "study.journal").open("ab") as f:
            f.write(text)

    def journal_garbage(r: Path) -> None:
        j = r / study.relative_to(base) / "study.journal"
        lines = j.read_bytes().splitlines(keepends=True)
        j.write_bytes(b"".join(lines[:3] + [b"\x00\x01garbage\n"] + lines[3:]))

    def best(r: Path, change: Callable[[dict], None]) -> None:
        shutil.rmtree(r / "training" / TASK / "APL2" / "fold0")
        edit_json(r / study.relative_to(base) / "best_params.json", change)

    def fresh(r: Path) -> None:
        for d in ("preprocessed", "tuning", "training", "predictions"):
            shutil.rmtree(r / d, ignore_errors=True)
        for m in (r / "preprocessed").glob("*.json"):
            m.unlink()

    def missing_image(r: Path) -> None:
        raw = next((r / "raw").glob("Dataset*_Phantom"))
        sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[1].resolve().unlink()

    def unknown_case(r: Path) -> None:
        edit_json(r / "splits" / f"{TASK}.json", lambda s: s[0]["val"].append("phantom_099"))

    def sqlite_garbage(r: Path) -> None:
        d = r / study.relative_to(base)
        (d / "study.sqlite3").write_bytes(b"this is not a database" * 50)

    T = ("--method",)
    cases: list[tuple[str, Callable[[Path], None], list[str], dict]] = [
        ("checkpoint_latest.pth cut short by a kill", interrupted,
         _stage("train", *T, "Baseline", "--fold", "0"), {}),
        ("checkpoint_final.pth of zero bytes, train", lambda r: (
            training.relative_to(base) and (r / "training" / TASK / "Baseline" / "fold0" /
                                            "checkpoint_final.pth").write_bytes(b"")),
         _stage("train", *T, "Baseline", "--fold", "0"), {}),
        ("checkpoint_final.pth cut short, predict", lambda r: cut(
            r / "training" / TASK / "Baseline" / "fold0" / "checkpoint_final.pth", 0.3),
         _stage("predict", *T, "Baseline", "--fold", "0"), {}),
        ("Baseline's model copied into APL1's folder, predict", lambda r: shutil.copytree(
            r / "training" / TASK / "Baseline" / "fold0", r / "training" / TASK / "APL1" / "fold0"),
         _stage("predict", *T, "APL1", "--fold", "0"), {}),
        ("another method's checkpoint_latest.pth in the folder", foreign_latest,
         _stage("train", *T, "APL1", "--fold", "0"), {}),
        ("finished training rerun with more epochs", lambda r: None,
         _stage("train", *T, "Baseline", "--fold", "0", "--epochs", "3"), {}),
        ("plans changed after the training finished", lambda r: edit_json(
            next((r / "preprocessed").glob("Dataset*_Phantom")) / "nnUNetPlans.json",
            more_features), _stage("train", *T, "Baseline", "--fold", "0"), {}),
        ("journal's last record cut by a kill (recovered)", lambda r: journal_append(
            r, b'{"op_code": 4, "worker_id": "x", "study_id": 0, "datetime_st'),
         _stage("tune", *T, "APL2", "--fold", "0"), {}),
        ("journal with a garbled line", journal_garbage,
         _stage("tune", *T, "APL2", "--fold", "0"), {}),
        ("SQLite study file that is not a database", sqlite_garbage,
         _stage("tune", *T, "APL2", "--fold", "0"), {"storage": "sqlite"}),
        ("best_params.json with empty params", lambda r: best(r, lambda b: b.update(params={})),
         _stage("train", *T, "APL2", "--fold", "0"), {}),
        ("best_params.json value out of range", lambda r: best(
            r, lambda b: b.update(params={"w": 7.0})),
         _stage("train", *T, "APL2", "--fold", "0"), {}),
        ("file size limit of 100 kB (as a full disk)", lambda r: shutil.rmtree(
            r / "training" / TASK / "Baseline" / "fold0"),
         _stage("train", *T, "Baseline", "--fold", "0"), {"fsize": 100_000}),
        ("file size limit of 5 MB (a checkpoint does not fit)", lambda r: shutil.rmtree(
            r / "training" / TASK / "Baseline" / "fold0"),
         _stage("train", *T, "Baseline", "--fold", "0"), {"fsize": 5_000_000}),
        ("tune before plan", fresh, _stage("tune", *T, "APL2", "--fold", "0"), {}),
        ("a raw image deleted before planning", missing_image, ["plan", "--task", TASK], {}),
        ("splits naming a case the dataset lacks", unknown_case, ["plan", "--task", TASK], {}),
        ("cpu_plan with two stages", lambda r: None, ["plan", "--task", TASK],
         {"cpu_plan": {"patch_size": [16, 32, 32], "batch_size": 2,
                       "features_per_stage": [8, 16]}}),
    ]
    rows = []
    for i, (what, breaker, command, opts) in enumerate(cases):
        r = args.workdir / f"case{i:02d}"
        shutil.copytree(base, r, symlinks=True)
        # the raw datasets link into .convert/<Task>/current: relative links stay inside r
        breaker(r)
        extra: dict = {}
        if opts.get("storage"):
            extra["tuning"] = {**yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())[
                "tuning"], "storage": opts["storage"]}
        if opts.get("cpu_plan"):
            extra["planning"] = {"planner": "cpu", "cpu_plan": opts["cpu_plan"],
                                 "num_processes": 1}
        code, lines = _run(_config(r, **extra), *command, fsize=opts.get("fsize"))
        shown = " / ".join(ln.replace(str(r), "results") for ln in lines) or "(nothing)"
        rows.append((what, "nnrobustloss " + " ".join(command), code, shown))
        print(f"{i:2d} exit {code}: {what}: {shown}", file=sys.stderr)

    out = ["# What a user sees: faults of the training stages (benchmarks/fault_messages.py)", "",
           f"Command: `python benchmarks/fault_messages.py` ({time.strftime('%Y-%m-%d')}); each "
           "fault on its own copy of a tiny finished study (`results` below), the stage rerun "
           "through the command.", "",
           "| fault | command | exit | what the command printed (progress lines left out) |",
           "| --- | --- | ---: | --- |"]
    out += [f"| {w} | `{c}` | {code} | {s.replace('|', '/')} |" for w, c, code, s in rows]
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
