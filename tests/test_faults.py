# ruff: noqa: F811  (test parameters named like the imported fixture `results`)
"""Bad input and faults (issue 9): nothing accepted silently, nothing half-written, one clear line.

Real files, real processes: truncated and re-gzipped NIfTI files, stale ``X.nii`` copies beside
``X.nii.gz``, dangling symbolic links and link loops, a file size limit (``RLIMIT_FSIZE``, as
``prlimit --fsize``), SIGKILL of a conversion at every file-system operation of its final phase,
a lock held by another process, an immutable (read-only) results folder, and config values that
nnU-Net would only reject much later.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from test_validation import (  # the shared bad-input helpers and the results fixture
    LABELS,
    convert_fails,
    good_image,
    good_label,
    make_folder_source,
    results,  # noqa: F401  (the fixture, used by name)
    save,
    task_cfg,
)

from nnrobustloss.config import validate_config
from nnrobustloss.datasets.convert import convert_task
from nnrobustloss.errors import ConfigError, InputDataError, OutputError, StageLockedError
from nnrobustloss.fileio import read_image, stage_lock, write_json
from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_convert, run_splits
from nnrobustloss.splits import fold_cases

# The params of task T's splits stage (pipeline.splits_params of a config with task T).
SPLITS_T = {"task": "T", "dataset_id": 901, "n_folds": 2, "seed": 0}


def convert_t(cfg: dict, root: Path) -> None:
    """The convert stage of task T defined by ``cfg`` into the results folder ``root``."""
    run_convert({"task": "T", "task_cfg": cfg, "seed": 0}, root, manifest=root / "raw" / "T.json")


LAUNCHER = ("import sys; from nnrobustloss.cli import main; "
            "sys.argv = ['nnrobustloss', *sys.argv[1:]]; sys.exit(main())")


def cli(tmp_path: Path, *args: str, config: dict | None = None, limit_fsize: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    """The ``nnrobustloss`` command with this interpreter (config written to a file)."""
    extra: list[str] = []
    if config is not None:
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(config))
        extra = ["--configfile", str(cfg_file)]

    def limit() -> None:
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.run([sys.executable, "-c", LAUNCHER, *args, *extra], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600, preexec_fn=limit)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert exit status 1 and exactly one ``error:`` line (progress lines allowed); return it."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    print(lines[0])
    return lines[0]


def nothing_visible(results_dir: Path) -> None:
    """No dataset, reference folder, manifest or version store of a failed first conversion."""
    left = [p for p in results_dir.rglob("*") if p.name not in ("raw", "reference")] \
        if results_dir.exists() else []
    assert left == []


def regzip_truncated(path: Path, keep: float = 0.5) -> None:
    """Cut the uncompressed data of a .nii.gz file short and gzip it again (a valid stream)."""
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: 352 + int((len(data) - 352) * keep)]))


# --- 1. every image and label holds exactly the bytes its header announces ------------------

@pytest.mark.parametrize("target", ["labels_noisy/b.nii.gz", "images/b.nii.gz"],
                         ids=["uint8_label", "float_image"])
def test_truncated_and_regzipped_file_is_refused(tmp_path: Path, results, target: str) -> None:
    src = make_folder_source(tmp_path / "src")
    regzip_truncated(src / target)
    msg = convert_fails(results, task_cfg(src), InputDataError, str(src / target), "truncated",
                        "bytes its header announces")
    assert "complete copy" in msg


# --- 2. exactly the named file is read ------------------------------------------------------

@pytest.mark.parametrize("sub", ["images", "labels_noisy", "labels_reference"])
def test_stale_uncompressed_copy_beside_the_file_is_refused(tmp_path: Path, results,
                                                            sub: str) -> None:
    src = make_folder_source(tmp_path / "src")
    stale = src / sub / "b.nii"
    arr = good_image(7) if sub == "images" else np.zeros_like(good_label())
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(stale))  # another grid, other content
    convert_fails(results, task_cfg(src), InputDataError, "b.nii", "also holds", "keep only one")


def test_stale_copy_in_a_predictions_folder_is_refused(tmp_path: Path) -> None:
    """What evaluate reads (fileio.read_image): SimpleITK alone scores the stale file."""
    pred = tmp_path / "predictions"
    save(good_label(), pred / "c.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros_like(good_label())), str(pred / "c.nii"))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(pred / "c.nii.gz"))).max() == 0  # the bug
    with pytest.raises(InputDataError, match=r"c\.nii\.gz: the folder also holds c\.nii"):
        read_image(pred / "c.nii.gz")
    (pred / "c.nii").unlink()
    assert sitk.GetArrayFromImage(read_image(pred / "c.nii.gz")).max() == 2


# --- 3. every file of a source folder ends up in a case or an error -------------------------

@pytest.mark.parametrize("kind", ["dangling", "loop"])
def test_broken_symlink_image_is_an_error(tmp_path: Path, results, kind: str) -> None:
    src = make_folder_source(tmp_path / "src")
    link = src / "images" / "c.nii.gz"
    link.unlink()
    link.symlink_to(tmp_path / "gone.nii.gz" if kind == "dangling" else link)
    convert_fails(results, task_cfg(src), InputDataError, str(link),
                  "dangling" if kind == "dangling" else "loop")


def test_labels_without_their_image_are_an_error(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    (src / "images" / "c.nii.gz").unlink()  # both label files of c remain
    convert_fails(results, task_cfg(src), InputDataError, str(src / "labels_noisy" / "c.nii.gz"),
                  "without an image")


def test_folder_inside_a_source_folder_is_an_error(tmp_path: Path, results) -> None:
    src = make_folder_source(tmp_path / "src")
    (src / "labels_reference" / "old").mkdir()
    convert_fails(results, task_cfg(src), InputDataError, str(src / "labels_reference" / "old"),
                  "a folder")


def test_mmwhs_label_without_image_is_an_error(tmp_path: Path, results) -> None:
    whs = tmp_path / "whs"
    save(good_image(), whs / "ct_train_1001_image.nii.gz")
    save(good_label(), whs / "ct_train_1001_label.nii.gz")
    save(good_label(), whs / "ct_train_1002_label.nii.gz")
    cfg = task_cfg(None)
    cfg["sources"] = [{"type": "mmwhs", "path": str(whs), "label_map": {0: 0, 1: 1, 2: 2}}]
    convert_fails(results, cfg, InputDataError, str(whs / "ct_train_1002_label.nii.gz"),
                  "without its image")


def test_kits23_case_that_is_a_dangling_link_is_an_error(tmp_path: Path, results) -> None:
    kits = tmp_path / "kits"
    save(good_image(), kits / "case_00000" / "imaging.nii.gz")
    save(good_label(), kits / "case_00000" / "segmentation.nii.gz")
    (kits / "case_00001").symlink_to(tmp_path / "elsewhere")
    cfg = task_cfg(None)
    cfg["sources"] = [{"type": "kits23", "path": str(kits)}]
    cfg["noise"] = {"type": "boundary", "target_dice": 0.9}
    convert_fails(results, cfg, InputDataError, str(kits / "case_00001"), "dangling")


# --- 4. short writes are never renamed into place -------------------------------------------

PHANTOM = {"dataset_id": 901, "reference_dataset_id": 902, "labels": dict(LABELS),
           "noise": {"type": "none"},
           "sources": [{"type": "phantom", "n_cases": 2, "n_noisy_cases": 1}]}


def test_file_size_limit_is_an_error_not_cut_images(tmp_path: Path) -> None:
    """Under ``prlimit --fsize=40000`` SimpleITK writes 40,000 bytes of each image and says
    nothing; the check of the written file turns that into one error."""
    config = {"results_dir": str(tmp_path / "results"), "tasks": {"T": PHANTOM}}
    line = one_error_line(cli(tmp_path, "convert", "--task", "T", config=config,
                              limit_fsize=40000))
    assert "_0000.nii.gz: writing stopped short" in line and "file size limit" in line
    nothing_visible(tmp_path / "results")
    # Without the limit the same command succeeds.
    proc = cli(tmp_path, "convert", "--task", "T", config=config)
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "results" / "raw" / "Dataset901_T" / "imagesTr").iterdir())) == 2


# --- 5. a kill during the commit shows the old complete state or the new one ----------------

OPS = ("rename", "replace", "symlink", "unlink", "rmdir", "mkdir", "remove")


def _killed_conversion(kill_at: int, root: Path, cfg: dict, count_file: Path,
                       from_start: bool = False) -> int:
    """Convert ``cfg`` in a forked process that SIGKILLs itself at its ``kill_at``-th file-system
    operation (of the final phase, which begins with the staging folder's rename, or of the whole
    run); return the wait status. Without a kill the number of operations goes to ``count_file``."""
    pid = os.fork()
    if pid == 0:  # the child
        try:
            count = {"n": 0, "on": from_start}

            def wrap(name: str) -> None:
                orig = getattr(os, name)

                def op(*args, **kwargs):
                    count["on"] = count["on"] or name == "rename"
                    if count["on"]:
                        count["n"] += 1
                        if count["n"] == kill_at:
                            os.kill(os.getpid(), signal.SIGKILL)
                    return orig(*args, **kwargs)

                setattr(os, name, op)

            for name in OPS:
                wrap(name)
            convert_t(cfg, root)
            for name in OPS:
                setattr(os, name, getattr(os, f"_{name}_orig", getattr(os, name)))
            count_file.write_text(str(count["n"]))
            os._exit(0)
        except BaseException:
            os._exit(3)
    return os.waitpid(pid, 0)[1]


def _visible_state(root: Path, expected: dict[str, dict[str, np.ndarray]]) -> str:
    """Check that what readers see is one complete conversion; return its name (old/new)."""
    manifest = json.loads((root / "raw" / "T.json").read_text())
    ids = manifest["case_ids"]
    name = next(k for k, v in expected.items() if sorted(v) == ids)
    for ds in (manifest["noisy"], manifest["reference"]):
        d = root / "raw" / ds
        assert sorted(p.name for p in (d / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in ids]
        assert sorted(p.name for p in (d / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in ids]
        assert json.loads((d / "dataset.json").read_text())["numTraining"] == len(ids)
    assert sorted(p.name for p in (root / "reference" / "T").iterdir()) == [f"{c}.nii.gz" for c in ids]
    for case, noisy in expected[name].items():  # content of the same conversion, not a mix
        got = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "raw" / "Dataset901_T" / "labelsTr"
                                                        / f"{case}.nii.gz")))
        np.testing.assert_array_equal(got, noisy)
    return name


def _no_leftovers(root: Path) -> None:
    store = root / ".convert" / "T"
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith("v-")) == ["current"]
    assert len([p for p in store.iterdir() if p.name.startswith("v-")]) == 1
    for folder in (root / "raw", root / "reference"):
        assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-")]


def _two_conversions(tmp_path: Path) -> tuple[dict, dict, dict[str, dict[str, np.ndarray]]]:
    old_src = make_folder_source(tmp_path / "old", cases=("a", "b"))
    new_src = make_folder_source(tmp_path / "new", cases=("a", "b", "c"))
    save(good_label(2), new_src / "labels_noisy" / "a.nii.gz")  # a's noisy labels change
    expected = {"old": {"a": good_label(1), "b": good_label(2)},
                "new": {"a": good_label(2), "b": good_label(2), "c": good_label(3)}}
    return task_cfg(old_src), task_cfg(new_src), expected


def test_sigkill_at_every_step_of_the_commit_leaves_old_or_new_complete(tmp_path: Path) -> None:
    old_cfg, new_cfg, expected = _two_conversions(tmp_path)
    root, count_file = tmp_path / "results", tmp_path / "count"
    convert_t(old_cfg, root)
    assert os.WIFEXITED(_killed_conversion(10**9, root, new_cfg, count_file))
    n_ops = int(count_file.read_text())
    assert n_ops >= 10
    seen = []
    for k in range(1, n_ops + 1):
        convert_t(old_cfg, root)
        status = _killed_conversion(k, root, new_cfg, count_file)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, status)
        seen.append(_visible_state(root, expected))
        # The next run of the stage succeeds and removes what the killed one left.
        convert_t(new_cfg, root)
        assert _visible_state(root, expected) == "new"
        _no_leftovers(root)
    # Kills before the switch of 'current' show the old conversion, later ones the new one.
    print(f"{n_ops} kill points: {seen}")
    first_new = seen.index("new")
    assert seen == ["old"] * first_new + ["new"] * (n_ops - first_new) and first_new > 1


# --- 6. one conversion of a task at a time ---------------------------------------------------

def test_second_conversion_of_a_task_is_refused_naming_the_holder(tmp_path: Path) -> None:
    src = make_folder_source(tmp_path / "src")
    config = {"results_dir": str(tmp_path / "results"), "tasks": {"T": task_cfg(src)}}
    lock = tmp_path / "results" / ".convert" / "T" / "lock"
    with stage_lock(lock, "convert stage of task T"):  # this process converts right now
        line = one_error_line(cli(tmp_path, "convert", "--task", "T", config=config))
        assert str(lock) in line and "already running" in line
        assert f"pid {os.getpid()} on " in line and " since " in line
        assert not (tmp_path / "results" / "raw").exists()
    proc = cli(tmp_path, "convert", "--task", "T", config=config)
    assert proc.returncode == 0, proc.stderr
    assert not lock.exists()


def test_other_stages_take_a_lock_per_task(tmp_path: Path) -> None:
    src = make_folder_source(tmp_path / "src")
    convert_task("T", task_cfg(src), tmp_path)
    lock = tmp_path / ".locks" / "splits.T.lock"
    with stage_lock(lock, "splits stage of task T"):
        with pytest.raises(StageLockedError, match=r"splits stage of task T is already running"):
            run_splits(SPLITS_T, tmp_path, out_json=tmp_path / "splits" / "T.json")
    with stage_lock(tmp_path / ".locks" / "splits.U.lock", "splits stage of task U"):
        run_splits(SPLITS_T, tmp_path, out_json=tmp_path / "splits" / "T.json")  # another task


# --- 7. temporaries of killed runs are removed by the next run of the stage ------------------

def test_staging_folder_of_a_killed_conversion_is_removed_on_the_next_run(tmp_path: Path) -> None:
    old_cfg, new_cfg, expected = _two_conversions(tmp_path)
    root = tmp_path / "results"
    convert_t(old_cfg, root)
    status = _killed_conversion(20, root, new_cfg, tmp_path / "count", from_start=True)
    assert os.WIFSIGNALED(status)
    staging = [p for p in (root / ".convert" / "T").iterdir() if p.name.startswith(".tmp-")]
    assert staging and any(staging[0].rglob("*.nii.gz"))  # what the kill left
    assert _visible_state(root, expected) == "old"
    # Leftovers of the unversioned writer (and of another task, which stay).
    legacy = root / "raw" / ".tmp-4242-Dataset901_T-abcd1234"
    other = root / "raw" / ".tmp-4242-Dataset903_U-abcd1234"
    for d in (legacy, other):
        (d / "imagesTr").mkdir(parents=True)
    convert_t(new_cfg, root)
    assert _visible_state(root, expected) == "new"
    assert not any(p.exists() for p in staging) and not legacy.exists() and other.exists()


def test_file_stage_removes_its_own_temporaries_only(tmp_path: Path) -> None:
    convert_task("T", task_cfg(make_folder_source(tmp_path / "src")), tmp_path)
    mine, other = (tmp_path / "splits" / f".tmp-77-k3j_x9aa-{t}.json" for t in ("T", "U"))
    for f in (mine, other):
        f.parent.mkdir(exist_ok=True)
        f.write_text("[half")
    run_splits(SPLITS_T, tmp_path, out_json=tmp_path / "splits" / "T.json")
    assert not mine.exists() and other.exists()


# --- the 13 traceback cases: one line, non-zero exit, nothing half-written -------------------

def test_read_only_results_folder_is_one_line(tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(results_dir)], capture_output=True).returncode:
            pytest.skip("cannot make a folder read-only for root here (chattr +i failed)")
    else:
        results_dir.chmod(0o555)
    try:
        config = {"results_dir": str(results_dir), "tasks": {"T": PHANTOM}}
        line = one_error_line(cli(tmp_path, "convert", "--task", "T", config=config))
        assert str(results_dir) in line and ("not permitted" in line or "denied" in line)
        assert "writable" in line
        assert list(results_dir.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(results_dir)], capture_output=True)
        results_dir.chmod(0o755)


def test_oserror_in_a_snakemake_script_is_one_line(tmp_path: Path, capfd) -> None:
    """What workflow/scripts/*.py do (``with logged(log):``) with a real OSError."""
    (tmp_path / "noise").write_text("a file where the noise/ folder belongs")
    log = tmp_path / "logs" / "noise.log"
    with pytest.raises(SystemExit) as info, logged(log):
        write_json(tmp_path / "noise" / "T.json", {})
    assert info.value.code == 1
    text = log.read_text().strip().splitlines()
    assert len(text) == 2 and text[0].startswith("[job] host ")  # where the job ran, then
    assert text[1].startswith(f"error: {tmp_path / 'noise'}")  # the one line of the error
    assert "a file is in the way" in text[1]
    assert "Traceback" not in capfd.readouterr().err


def test_label_map_key_that_is_not_an_integer(tmp_path: Path) -> None:
    cfg = {"tasks": {"T": {**task_cfg(tmp_path), "sources": [
        {"type": "folder", "path": str(tmp_path), "label_map": {"LV": 1, 0: 0}}]}}}
    with pytest.raises(ConfigError, match=r"tasks\.T\.sources\[0\]\.label_map\.LV: not an "
                                          r"integer label value"):
        validate_config(cfg)
    line = one_error_line(cli(tmp_path, "convert", "--task", "T", config=cfg))
    assert "label_map.LV" in line


@pytest.mark.parametrize("content", [{"train": ["a"], "val": ["b"]}, [["a"], ["b"]],
                                     [{"train": "a", "val": ["b"]}], []],
                         ids=["object", "lists", "string_ids", "empty"])
def test_splits_file_of_the_wrong_structure(tmp_path: Path, content) -> None:
    splits = tmp_path / "results" / "splits" / "T.json"
    write_json(splits, content)
    with pytest.raises(InputDataError, match="not a splits file") as info:
        fold_cases(splits, 0)
    assert str(splits) in str(info.value) and "rerun the splits stage" in str(info.value)
    config = {"results_dir": str(tmp_path / "results"), "tasks": {"T": PHANTOM},
              "methods": ["Baseline"]}
    line = one_error_line(cli(tmp_path, "evaluate", "--task", "T", "--method", "Baseline",
                              "--fold", "0", config=config))
    assert str(splits) in line and "not a splits file" in line


@pytest.mark.parametrize("where", ["raw_folder", "dataset_folder"])
def test_output_path_that_exists_as_a_file(tmp_path: Path, results, where: str) -> None:
    src = make_folder_source(tmp_path / "src")
    if where == "raw_folder":
        if (results.root / "raw").exists():
            pytest.skip("raw/ holds the existing conversion")
        results.root.mkdir(parents=True, exist_ok=True)
        (results.root / "raw").write_text("not a folder")
        target = results.root / "raw"
    else:
        target = results.root / "raw" / "Dataset903_T"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("not a dataset")
    before = {p: p.read_bytes() for p in [target]}
    cfg = dict(task_cfg(src), dataset_id=903 if where == "dataset_folder" else 901)
    with pytest.raises(OutputError) as info:
        convert_task("T", cfg, results.root)
    msg = str(info.value)
    assert msg.startswith(str(target)) and "exists as a file" in msg and "\n" not in msg
    assert {p: p.read_bytes() for p in before} == before


def test_existing_raw_dataset_that_is_a_symlink_is_refused_before_anything_changes(
        tmp_path: Path, results) -> None:
    elsewhere = tmp_path / "my_nnunet_raw" / "Dataset903_T"
    elsewhere.mkdir(parents=True)
    link = results.root / "raw" / "Dataset903_T"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere)
    ref_before = sorted(p.name for p in (results.root / "reference" / "T").iterdir()) \
        if (results.root / "reference" / "T").exists() else None
    src = make_folder_source(tmp_path / "src")
    with pytest.raises(OutputError, match="exists as a symbolic link to") as info:
        convert_task("T", dict(task_cfg(src), dataset_id=903), results.root)
    assert str(link) in str(info.value)
    assert os.readlink(link) == str(elsewhere) and list(elsewhere.iterdir()) == []
    ref_after = sorted(p.name for p in (results.root / "reference" / "T").iterdir()) \
        if (results.root / "reference" / "T").exists() else None
    assert ref_after == ref_before


def test_labels_with_a_gap_are_refused_at_config_time(tmp_path: Path) -> None:
    cfg = {"tasks": {"T": {**PHANTOM, "labels": {"background": 0, "a": 1, "b": 2, "c": 4}}}}
    with pytest.raises(ConfigError, match=r"tasks\.T\.labels: values \[0, 1, 2, 4\] have a gap "
                                          r"\(no label 3\)"):
        validate_config(cfg)
    line = one_error_line(cli(tmp_path, "splits", "--task", "T", config=cfg))
    assert "consecutive values 0..3" in line


def test_sqlite_with_several_workers_is_refused(tmp_path: Path) -> None:
    cfg = {"tasks": {"T": PHANTOM}, "tuning": {"workers": 6, "storage": "sqlite"}}
    with pytest.raises(ConfigError, match=r"tuning\.workers: 6 workers cannot share an SQLite"):
        validate_config(cfg)
    assert validate_config({**cfg, "tuning": {"workers": 6, "storage": "journal"}})
    assert validate_config({**cfg, "tuning": {"workers": 1, "storage": "sqlite"}})


def test_paper_config_defaults_to_the_journal_storage() -> None:
    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "paper.yaml")
                           .read_text())
    assert paper["tuning"]["storage"] == "journal"


def test_results_folder_kept_clean_after_a_failed_first_conversion(tmp_path: Path) -> None:
    """The version store of a failed first run is removed with its lock."""
    src = make_folder_source(tmp_path / "src")
    (src / "images" / "b.nii.gz").write_bytes(b"")
    with pytest.raises(InputDataError):
        convert_t(task_cfg(src), tmp_path / "results")
    nothing_visible(tmp_path / "results")
    shutil.rmtree(tmp_path / "results", ignore_errors=True)


def test_unversioned_conversion_of_an_earlier_version_is_replaced_foreign_folder_refused(
        tmp_path: Path) -> None:
    """Results written before outputs were versioned (real folders) are taken over once; a
    folder the stage did not write is refused and left alone."""
    src = make_folder_source(tmp_path / "src")
    root = tmp_path / "results"
    convert_task("T", task_cfg(src), root)
    # Turn the conversion into what the unversioned writer left: real folders in raw/, reference/.
    for link in (root / "raw" / "Dataset901_T", root / "raw" / "Dataset902_TRef",
                 root / "reference" / "T"):
        target = link.resolve()
        link.unlink()
        shutil.copytree(target, link)
    shutil.rmtree(root / ".convert")
    raw = convert_task("T", task_cfg(src), root)
    assert raw.noisy.is_symlink() and raw.reference_labels.is_symlink()
    assert len(list((raw.noisy / "labelsTr").iterdir())) == 3
    assert not [p for p in (root / ".convert" / "T").iterdir() if p.name.startswith(".tmp-")]
    # A folder that is no conversion of this package.
    foreign = root / "raw" / "Dataset905_T"
    (foreign / "imagesTr").mkdir(parents=True)
    (foreign / "dataset.json").write_text(json.dumps({"name": "mine", "description": "my data"}))
    with pytest.raises(OutputError, match=r"Dataset905_T: exists as a folder that this stage did "
                                          r"not write"):
        convert_task("T", dict(task_cfg(src), dataset_id=905), root)
    assert json.loads((foreign / "dataset.json").read_text())["name"] == "mine"
