"""Tests of atomic outputs and checked image input (nnrobustloss.fileio)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import (
    array_to_image,
    atomic_dir,
    atomic_path,
    geometry_mismatch,
    nifti_problem,
    read_image,
    read_json,
    write_image,
    write_json,
    write_text,
)


def listing(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def image(arr: np.ndarray | None = None, spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, 0.0),
          direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8) if arr is None else arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


# --- atomic outputs ------------------------------------------------------------------------

def test_atomic_path_success_renames(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith("out.nii.gz")
        assert tmp != target and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert listing(tmp_path) == ["sub", "sub/out.nii.gz"]


def test_atomic_path_error_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["out.csv"]


def test_atomic_path_error_before_writing_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError), atomic_path(tmp_path / "x.json"):
        raise KeyError("x")
    assert listing(tmp_path) == []


def test_atomic_dir_success_replaces_old_folder(tmp_path: Path) -> None:
    final = tmp_path / "raw" / "Dataset001_T"
    final.mkdir(parents=True)
    (final / "stale.txt").write_text("stale")
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "labelsTr").mkdir()
        (tmp / "labelsTr" / "a.nii.gz").write_text("a")
        assert (final / "stale.txt").exists()  # the old folder stays until the end
    assert listing(tmp_path / "raw") == ["Dataset001_T", "Dataset001_T/labelsTr",
                                         "Dataset001_T/labelsTr/a.nii.gz"]


def test_atomic_dir_error_keeps_old_folder(tmp_path: Path) -> None:
    final = tmp_path / "Dataset001_T"
    final.mkdir()
    (final / "good.txt").write_text("good")
    with pytest.raises(ValueError), atomic_dir(final) as tmp:
        (tmp / "half.txt").write_text("half")
        (tmp / "sub").mkdir()
        raise ValueError("bad case")
    assert listing(tmp_path) == ["Dataset001_T", "Dataset001_T/good.txt"]
    assert (final / "good.txt").read_text() == "good"


def test_atomic_dir_error_without_old_folder_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_dir(tmp_path / "out" / "D") as tmp:
        (tmp / "x").write_text("x")
        raise ValueError
    assert listing(tmp_path / "out") == []


def test_nested_atomic_dirs_all_or_nothing(tmp_path: Path) -> None:
    # As write_raw_datasets nests them: an error in the body removes every temporary folder.
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "a") as a, atomic_dir(tmp_path / "b") as b:
        (a / "1").write_text("1")
        (b / "2").write_text("2")
        raise RuntimeError
    assert listing(tmp_path) == []


def test_write_text_json_and_read_json(tmp_path: Path) -> None:
    write_text(tmp_path / "a" / "t.txt", "héllo\n")
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    obj = {"b": [1, 2.5, None], "a": "x"}
    write_json(tmp_path / "o.json", obj)
    assert read_json(tmp_path / "o.json") == obj
    assert list(json.loads((tmp_path / "o.json").read_text())) == ["b", "a"]  # order kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "o.json"]


def test_write_json_unserialisable_keeps_old_file(tmp_path: Path) -> None:
    f = tmp_path / "o.json"
    write_json(f, {"a": 1})
    with pytest.raises(TypeError):
        write_json(f, {"a": object()})
    assert read_json(f) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["o.json"]


def test_read_json_errors(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"none\.json: file not found"):
        read_json(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{1: 2")
    with pytest.raises(InputDataError, match=r"bad\.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


# --- images --------------------------------------------------------------------------------

def test_write_image_round_trip_and_compression(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = image(arr, spacing=(0.5, 0.7, 2.0), origin=(1.0, -2.0, 3.5),
                direction=(0, 1.0, 0, -1.0, 0, 0, 0, 0, 1.0))
    f = tmp_path / "x.nii.gz"
    write_image(img, f)
    with f.open("rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"  # gzip-compressed
    back = read_image(f)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), arr)
    assert geometry_mismatch(img, back) is None
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_array_to_image() -> None:
    arr = np.zeros((2, 3, 4), np.float32)
    img = array_to_image(arr, spacing_zyx=(3.0, 2.0, 1.0))
    assert img.GetSize() == (4, 3, 2) and img.GetSpacing() == (1.0, 2.0, 3.0)
    like = image(np.zeros((2, 3, 4), np.uint8), origin=(5.0, 6.0, 7.0))
    img2 = array_to_image(arr, like=like)
    assert geometry_mismatch(img2, like) is None


def test_read_image_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match=r"nope\.nii\.gz: file not found"):
        read_image(tmp_path / "nope.nii.gz")
    for name, content in (("garbage.nii.gz", b"\x00\x01garbage" * 50), ("empty.nrrd", b""),
                          ("text.nii", b"hello")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputDataError) as info:
            read_image(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(str(tmp_path / name)) and "cannot be read as an image" in msg
        assert "\n" not in msg
    (tmp_path / "folder.nii.gz").mkdir()
    with pytest.raises(InputDataError, match="file not found"):
        read_image(tmp_path / "folder.nii.gz")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_image_truncated_nifti(tmp_path: Path, suffix: str) -> None:
    f = tmp_path / f"t{suffix}"
    sitk.WriteImage(image(np.random.default_rng(0).normal(size=(8, 9, 10)).astype(np.float32)),
                    str(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 200])
    # SimpleITK alone reads it without complaint (zeros for the missing voxels).
    assert sitk.ReadImage(str(f)).GetSize() == (10, 9, 8)
    with pytest.raises(InputDataError, match=rf"t{suffix}: .*truncated") as info:
        read_image(f)
    assert "complete copy" in str(info.value)


def test_read_image_accepts_multi_member_gzip(tmp_path: Path) -> None:
    # Valid but unusual: two concatenated gzip members (the trailer size is the last member's).
    plain = tmp_path / "plain" / "m.nii"  # not beside m.nii.gz: SimpleITK would read it instead
    plain.parent.mkdir()
    arr = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10)
    sitk.WriteImage(image(arr), str(plain))
    raw = plain.read_bytes()
    f = tmp_path / "m.nii.gz"
    f.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(f)), arr)
    assert nifti_problem(f) is None


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_image_non_finite_nifti(tmp_path: Path, suffix: str) -> None:
    arr = np.ones((4, 5, 6), np.float32)
    arr[0, 0, 0], arr[1, 1, 1], arr[2, 2, 2] = np.nan, np.inf, -np.inf
    f = tmp_path / f"n{suffix}"
    sitk.WriteImage(image(arr), str(f))
    # SimpleITK's NIfTI reader turns them into zeros without a word.
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(f)))).all()
    with pytest.raises(InputDataError, match=rf"n{suffix}: 3 NaN or infinite values"):
        read_image(f)


def test_read_image_keeps_non_finite_in_other_formats(tmp_path: Path) -> None:
    # NRRD/MHA keep NaN, so the converter's validation sees them (tested in test_validation).
    arr = np.ones((4, 5, 6), np.float32)
    arr[0, 0, 0] = np.nan
    f = tmp_path / "n.mha"
    sitk.WriteImage(image(arr), str(f))
    assert np.isnan(sitk.GetArrayFromImage(read_image(f))).sum() == 1


def test_nifti_problem_sound_files(tmp_path: Path) -> None:
    for dtype in (np.uint8, np.int16, np.float32, np.float64):
        for suffix in (".nii.gz", ".nii"):
            f = tmp_path / f"ok_{np.dtype(dtype).name}{suffix}"
            sitk.WriteImage(image(np.ones((4, 5, 6), dtype)), str(f))
            assert nifti_problem(f) is None, f


# --- geometry ------------------------------------------------------------------------------

def test_geometry_mismatch_messages() -> None:
    a = image()
    assert geometry_mismatch(a, image()) is None
    b = image(np.zeros((4, 5, 7), np.uint8))
    assert geometry_mismatch(a, b) == "size (6, 5, 4) vs (7, 5, 4)"
    msg = geometry_mismatch(a, image(spacing=(1.0, 2.0, 3.5)))
    assert msg is not None and msg.startswith("spacing (1.0, 2.0, 3.0) vs (1.0, 2.0, 3.5)")
    msg = geometry_mismatch(a, image(origin=(0.0, 0.0, 0.5)))
    assert msg is not None and msg.startswith("origin")
    msg = geometry_mismatch(a, image(direction=(0, 1.0, 0, 1.0, 0, 0, 0, 0, 1.0)))
    assert msg is not None and msg.startswith("direction")


def test_geometry_mismatch_size_is_reported_first() -> None:
    b = image(np.zeros((3, 5, 6), np.uint8), spacing=(9.0, 9.0, 9.0), origin=(5.0, 5.0, 5.0))
    assert geometry_mismatch(image(), b).startswith("size")  # type: ignore[union-attr]


def test_geometry_mismatch_tolerances() -> None:
    a = image(origin=(10.0, 20.0, 30.0))
    # Rounding below the tolerances is not a mismatch ...
    assert geometry_mismatch(a, image(spacing=(1.00001, 2.0, 3.0), origin=(10.0005, 20.0, 30.0))) is None
    # ... but differences above them are.
    assert geometry_mismatch(a, image(spacing=(1.001, 2.0, 3.0), origin=(10.0, 20.0, 30.0)))
    assert geometry_mismatch(a, image(origin=(10.002, 20.0, 30.0)))
    assert geometry_mismatch(image(), image(), tol=0.0) is None


def test_waiting_stage_lock_waits_for_the_holder(tmp_path, capsys) -> None:
    """wait=True: a second holder prints one line naming the first and gets the lock when the
    first lets go (the first's block ran completely before the second's)."""
    import threading
    import time

    from nnrobustloss.fileio import stage_lock

    lock = tmp_path / ".fold0.lock"
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with stage_lock(lock, "training of T/M/fold0"):
            held.set()
            time.sleep(1.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    with stage_lock(lock, "training of T/M/fold0", wait=True):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    err = capsys.readouterr().err
    assert err.count("is already running") == 1 and "waiting for it to finish" in err
    assert str(lock) in err and not lock.exists()
