"""Tests of the k-fold splits (nnrobustloss.splits) and the splits stage of the pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.pipeline import run_splits
from nnrobustloss.splits import fold_cases, make_splits, raw_case_ids, write_splits

IDS = [f"case_{i:03d}" for i in range(14)]


def check_partition(splits: list[dict[str, list[str]]], ids: list[str], n_folds: int) -> None:
    assert len(splits) == n_folds
    vals = [set(s["val"]) for s in splits]
    for i in range(n_folds):
        for j in range(i + 1, n_folds):
            assert not vals[i] & vals[j]  # disjoint
    assert set().union(*vals) == set(ids)  # complete
    assert sum(len(v) for v in vals) == len(ids)
    for s in splits:
        assert set(s["train"]) == set(ids) - set(s["val"])  # train = complement
        assert len(s["train"]) == len(set(s["train"]))
        assert s["train"] == sorted(s["train"]) and s["val"] == sorted(s["val"])
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1  # balanced folds


@pytest.mark.parametrize("n_cases,n_folds", [(14, 3), (6, 3), (20, 5), (5, 5), (2, 2), (7, 2)])
def test_partition(n_cases: int, n_folds: int) -> None:
    ids = IDS[:n_cases] if n_cases <= len(IDS) else [f"c{i}" for i in range(n_cases)]
    check_partition(make_splits(ids, n_folds=n_folds, seed=0), ids, n_folds)


def test_seeded_and_order_independent() -> None:
    a = make_splits(IDS, n_folds=3, seed=4)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert make_splits(shuffled, n_folds=3, seed=4) == a
    assert make_splits(tuple(reversed(IDS)), n_folds=3, seed=4) == a
    assert make_splits(IDS, n_folds=3, seed=4) == a


def test_different_seed_gives_different_splits() -> None:
    a = make_splits(IDS, n_folds=3, seed=0)
    others = [make_splits(IDS, n_folds=3, seed=s) for s in (1, 2, 3)]
    assert all(o != a for o in others)
    for o in others:
        check_partition(o, IDS, 3)


def test_ids_are_strings_and_json_serialisable() -> None:
    splits = make_splits(["b", "a", "c", "d"], n_folds=2, seed=0)
    json.dumps(splits)
    assert all(isinstance(c, str) for s in splits for part in s.values() for c in part)


@pytest.mark.parametrize("n_folds", [1, 0, -2, 15])
def test_bad_n_folds(n_folds: int) -> None:
    with pytest.raises(ConfigError, match=r"n_folds: must be between 2 and the number of cases \(14\)"):
        make_splits(IDS, n_folds=n_folds)


def test_duplicate_ids() -> None:
    with pytest.raises(InputDataError, match="unique"):
        make_splits(["a", "b", "a", "c"], n_folds=2)


# --- files ---------------------------------------------------------------------------------

def make_raw(d: Path, ids: list[str], ending: str = ".nii.gz") -> Path:
    (d / "labelsTr").mkdir(parents=True)
    for c in ids:
        (d / "labelsTr" / f"{c}{ending}").write_bytes(b"")
    (d / "labelsTr" / "notes.txt").write_text("ignored")
    (d / "dataset.json").write_text(json.dumps({"file_ending": ending}))
    return d


def test_raw_case_ids_and_write_splits(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "raw" / "Dataset001_T", list(reversed(IDS[:6])))
    assert raw_case_ids(raw) == IDS[:6]
    out = tmp_path / "splits" / "T.json"
    splits = write_splits(raw, out, n_folds=3, seed=2)
    assert json.loads(out.read_text()) == splits == make_splits(IDS[:6], n_folds=3, seed=2)
    assert [p.name for p in out.parent.iterdir()] == ["T.json"]  # no temporary file left


def test_raw_case_ids_other_file_ending(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "d", ["x", "y"], ending=".mha")
    assert raw_case_ids(raw) == ["x", "y"]


def test_raw_case_ids_errors(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"dataset\.json: file not found"):
        raw_case_ids(tmp_path / "missing")
    d = tmp_path / "nolabels"
    d.mkdir()
    (d / "dataset.json").write_text("{}")
    with pytest.raises(InputDataError, match=r"labelsTr: folder not found"):
        raw_case_ids(d)
    (d / "labelsTr").mkdir()
    with pytest.raises(InputDataError, match=r"labelsTr: no label files ending in \.nii\.gz"):
        raw_case_ids(d)
    (d / "dataset.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        raw_case_ids(d)


def test_fold_cases(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    splits = make_splits(IDS, n_folds=3, seed=0)
    f.write_text(json.dumps(splits))
    for k in range(3):
        assert fold_cases(f, k) == splits[k]["val"]
        assert fold_cases(f, k, "train") == splits[k]["train"]
    for bad in (3, -1):
        with pytest.raises(ConfigError, match=rf"fold {bad} does not exist in .*s\.json \(3 folds\)"):
            fold_cases(f, bad)
    with pytest.raises(InputDataError, match="file not found"):
        fold_cases(tmp_path / "none.json", 0)


def test_run_splits(tmp_path: Path) -> None:
    make_raw(tmp_path / "raw" / "Dataset123_Task", IDS[:9])
    out = tmp_path / "splits" / "Task.json"
    run_splits({"task": "Task", "dataset_id": 123, "n_folds": 3, "seed": 5}, tmp_path, out_json=out)
    assert json.loads(out.read_text()) == make_splits(IDS[:9], n_folds=3, seed=5)
    with pytest.raises(InputDataError, match="Dataset124_Task"):
        run_splits({"task": "Task", "dataset_id": 124, "n_folds": 3, "seed": 5}, tmp_path,
                   out_json=tmp_path / "splits" / "x.json")


# --- on the preprocessed phantom fixture ---------------------------------------------------

def test_fixture_splits_cover_the_raw_cases(preprocessed_phantom: dict[str, Path]) -> None:
    splits = json.loads(preprocessed_phantom["splits"].read_text())
    ids = raw_case_ids(preprocessed_phantom["raw_dir"])
    assert ids == raw_case_ids(preprocessed_phantom["reference_raw_dir"])
    check_partition(splits, ids, 3)
    assert splits == make_splits(ids, n_folds=3, seed=0)


def test_fixture_splits_final_identical_in_both_datasets(
        preprocessed_phantom: dict[str, Path]) -> None:
    task_file = preprocessed_phantom["splits"]
    assert task_file == preprocessed_phantom["results_dir"] / "splits" / "PhantomTest.json"
    expected = json.loads(task_file.read_text())
    a = preprocessed_phantom["preprocessed_dir"] / "splits_final.json"
    b = preprocessed_phantom["reference_preprocessed_dir"] / "splits_final.json"
    assert a.read_bytes() == b.read_bytes()
    assert json.loads(a.read_text()) == expected

